//! Training data: plain text packed into fixed-length sequences (with the document of
//! every token, for same-document attention), and JSONL chat examples
//! (`{"messages": [...]}`) whose prompt is never masked.

use std::path::{Path, PathBuf};

use llada::{Message, Tokenizer};
use serde::Deserialize;

use crate::{Result, TrainError};

/// One packed pre-training sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Packed {
    pub tokens: Vec<u32>,
    /// Document index of each token (EOS belongs to the document it ends).
    pub doc_ids: Vec<u32>,
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| TrainError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Files as given, with folders replaced by their `*.txt` files (sorted).
fn expand(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let entries = std::fs::read_dir(p).map_err(|source| TrainError::Read {
                path: p.clone(),
                source,
            })?;
            let mut txt: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "txt"))
                .collect();
            txt.sort();
            out.extend(txt);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// Tokenizes each file (folders: their `*.txt` files; documents are separated by two
/// blank lines), ends every document with EOS, concatenates and cuts
/// into sequences of `seq_len` (the remainder is dropped).
pub fn pack_text(
    files: &[PathBuf],
    tok: &Tokenizer,
    eos: u32,
    seq_len: usize,
) -> Result<Vec<Packed>> {
    if seq_len == 0 {
        return Err(TrainError::Invalid(
            "the sequence length must be at least 1".into(),
        ));
    }
    let mut stream: Vec<(u32, u32)> = Vec::new();
    let mut doc = 0u32;
    for file in &expand(files)? {
        let text = read(file)?;
        for part in text.split("\n\n\n").filter(|p| !p.trim().is_empty()) {
            for id in tok.encode(part)? {
                stream.push((id, doc));
            }
            stream.push((eos, doc));
            doc += 1;
        }
    }
    if stream.len() < seq_len {
        return Err(TrainError::Invalid(format!(
            "the corpus has {} tokens, fewer than one sequence of {seq_len}",
            stream.len()
        )));
    }
    Ok(stream
        .chunks_exact(seq_len)
        .map(|c| Packed {
            tokens: c.iter().map(|p| p.0).collect(),
            doc_ids: c.iter().map(|p| p.1).collect(),
        })
        .collect())
}

/// One supervised chat example, padded to the sequence length.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatExample {
    pub tokens: Vec<u32>,
    /// True on prompt positions (never masked, no loss).
    pub prompt: Vec<bool>,
}

#[derive(Deserialize)]
struct ChatLine {
    messages: Vec<Message>,
}

/// Reads `{"messages": [...]}` lines; the last message must be the assistant's answer.
/// The prompt is the chat template up to the answer; the answer is followed by
/// `<|role_end|>` (when the tokenizer has it) and EOS padding up to `seq_len` (the
/// padding is supervised, so the model learns to stop). Too-long examples are skipped.
pub fn load_chat(
    path: &Path,
    tok: &Tokenizer,
    eos: u32,
    seq_len: usize,
) -> Result<Vec<ChatExample>> {
    let text = read(path)?;
    let mut out = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let bad = |m: String| TrainError::Invalid(format!("{}:{}: {m}", path.display(), n + 1));
        let parsed: ChatLine = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        let Some((answer, history)) = parsed.messages.split_last() else {
            return Err(bad("no messages".into()));
        };
        if answer.role != "assistant" {
            return Err(bad("the last message must be the assistant's".into()));
        }
        let prompt = tok.encode_chat(history, true)?;
        let mut tokens = prompt.clone();
        tokens.extend(tok.encode(&answer.content)?);
        if let Some(end) = tok.role_end_id() {
            tokens.push(end);
        }
        tokens.push(eos);
        if tokens.len() > seq_len {
            continue;
        }
        let mut is_prompt = vec![false; seq_len];
        is_prompt[..prompt.len()].iter_mut().for_each(|p| *p = true);
        tokens.resize(seq_len, eos);
        out.push(ChatExample {
            tokens,
            prompt: is_prompt,
        });
    }
    if out.is_empty() {
        return Err(TrainError::Invalid(format!(
            "{} has no example that fits {seq_len} tokens",
            path.display()
        )));
    }
    Ok(out)
}
