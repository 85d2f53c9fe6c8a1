//! Incremental detokenization with the `tokenizers` crate's `DecodeStream`: text is
//! released only once it is complete, so a UTF-8 character split over several
//! byte-level tokens is never emitted in halves.

use tokenizers::{
    DecodeStream, DecoderWrapper, ModelWrapper, NormalizerWrapper, PostProcessorWrapper,
    PreTokenizerWrapper,
};

type Stream<'a> = DecodeStream<
    'a,
    ModelWrapper,
    NormalizerWrapper,
    PreTokenizerWrapper,
    PostProcessorWrapper,
    DecoderWrapper,
>;

/// One answer's token stream turned into text as it grows.
pub struct TextStream<'a> {
    inner: Stream<'a>,
    tokens: usize,
    last: Option<u32>,
}

impl<'a> TextStream<'a> {
    pub(super) fn new(tokenizer: &'a tokenizers::Tokenizer, skip_special_tokens: bool) -> Self {
        Self {
            inner: tokenizer.decode_stream(skip_special_tokens),
            tokens: 0,
            last: None,
        }
    }

    /// Adds final tokens; returns the text that became complete (possibly empty).
    pub fn push(&mut self, ids: &[u32]) -> crate::Result<String> {
        let mut text = String::new();
        for &id in ids {
            let piece = self.inner.step(id).map_err(|e| {
                crate::Error::InvalidRequest(format!("cannot detokenize token {id}: {e}"))
            })?;
            text.extend(piece);
            self.tokens += 1;
            self.last = Some(id);
        }
        Ok(text)
    }

    /// Tokens pushed so far.
    pub fn token_count(&self) -> usize {
        self.tokens
    }

    /// The last token pushed.
    pub fn last_token(&self) -> Option<u32> {
        self.last
    }
}
