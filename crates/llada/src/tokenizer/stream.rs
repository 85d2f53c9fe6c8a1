//! Incremental detokenization: text is released only once it is complete, so a UTF-8
//! character split over several byte-level tokens is never emitted in halves.

use super::Tokenizer;

pub struct StreamDecoder<'a> {
    tokenizer: &'a Tokenizer,
    skip_special_tokens: bool,
    ids: Vec<u32>,
    /// Start of the window decoded for context (keeps word-boundary spaces right).
    prefix_offset: usize,
    /// Ids before this are already emitted.
    read_offset: usize,
}

impl<'a> StreamDecoder<'a> {
    pub(super) fn new(tokenizer: &'a Tokenizer, skip_special_tokens: bool) -> Self {
        Self {
            tokenizer,
            skip_special_tokens,
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
        }
    }

    /// Adds final tokens; returns the text that became complete (possibly empty).
    pub fn push(&mut self, ids: &[u32]) -> crate::Result<String> {
        self.ids.extend_from_slice(ids);
        let skip = self.skip_special_tokens;
        let before = self
            .tokenizer
            .decode(&self.ids[self.prefix_offset..self.read_offset], skip)?;
        let now = self
            .tokenizer
            .decode(&self.ids[self.prefix_offset..], skip)?;
        if now.ends_with('\u{FFFD}') {
            return Ok(String::new());
        }
        match now.strip_prefix(before.as_str()) {
            Some(new) if !new.is_empty() => {
                let new = new.to_string();
                self.prefix_offset = self.read_offset;
                self.read_offset = self.ids.len();
                Ok(new)
            }
            _ => Ok(String::new()),
        }
    }

    /// All ids pushed so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }
}
