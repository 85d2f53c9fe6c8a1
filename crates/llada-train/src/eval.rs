//! `llada eval`: how good a model is. The masked-diffusion NELBO in bits per token on
//! held-out text, and exact-match accuracy with tokens per forward on a task set.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use llada::{generate, GenerateParams, LoadedModel, Message};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::data::pack_text;
use crate::forward::Autograd;
use crate::loss::{loss_of, LossRow, Weighting};
use crate::noise::Noised;
use crate::{Result, TrainError};
use rand::seq::SliceRandom;
use rand::Rng;

/// NELBO of held-out text under block diffusion with block `block`.
#[derive(Debug, Clone, Serialize)]
pub struct NelboReport {
    pub sequences: usize,
    pub tokens: usize,
    pub bits_per_token: f64,
}

/// Monte-Carlo estimate of the masked-diffusion bound in the form LLaDA evaluates it:
/// the number of masked tokens l ~ U{1..L} (stratified over the `samples`), exactly l
/// positions masked, and -log p ≤ E_l[(L / l) · Σ_masked CE]; per token that is the
/// mean masked cross-entropy averaged over l. (Masking with rate t and weighting 1/t is
/// the same bound but has far higher variance at small t.)
pub fn nelbo(
    m: &LoadedModel,
    files: &[PathBuf],
    seq_len: usize,
    block: usize,
    samples: usize,
    max_sequences: usize,
) -> Result<NelboReport> {
    for (name, value) in [
        ("sequence length", seq_len),
        ("block", block),
        ("samples", samples),
        ("max sequences", max_sequences),
    ] {
        if value == 0 {
            return Err(TrainError::Invalid(format!(
                "NELBO: the {name} must be at least 1"
            )));
        }
    }
    let tok = m
        .tokenizer
        .as_ref()
        .ok_or_else(|| TrainError::Invalid("the model has no tokenizer".into()))?;
    let params = m.default_params();
    let seqs = pack_text(files, tok, params.eos_id, seq_len)?;
    // The loss needs the training forward (any attention mask); the weights are the same.
    let model = m.load_on(Autograd::default())?;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut total = 0f64;
    let mut count = 0usize;
    for seq in seqs.iter().take(max_sequences) {
        for s in 0..samples {
            // Stratified: sample s draws l from the s-th of `samples` equal slices.
            let lo = 1 + s * seq_len / samples;
            let hi = (1 + (s + 1) * seq_len / samples)
                .min(seq_len + 1)
                .max(lo + 1);
            let l = rng.random_range(lo..hi);
            let mut order: Vec<usize> = (0..seq_len).collect();
            order.shuffle(&mut rng);
            let mut masked = vec![false; seq_len];
            order[..l].iter().for_each(|&i| masked[i] = true);
            let tokens = seq
                .tokens
                .iter()
                .zip(&masked)
                .map(|(&t, &m)| if m { params.mask_id } else { t })
                .collect();
            let noised = Noised {
                tokens,
                masked,
                t: l as f32 / seq_len as f32,
            };
            let out = loss_of(
                &model,
                LossRow::block_diffusion(
                    &model,
                    &seq.tokens,
                    &noised,
                    block,
                    Some(&seq.doc_ids),
                    Weighting::MaskedMean,
                    0.0,
                    None,
                )?,
            )?;
            total += out.loss.to_scalar::<f32>()? as f64;
            count += 1;
        }
    }
    let used = seqs.len().min(max_sequences);
    Ok(NelboReport {
        sequences: used,
        tokens: used * seq_len,
        bits_per_token: total / count.max(1) as f64 / std::f64::consts::LN_2,
    })
}

#[derive(Deserialize)]
struct TaskLine {
    messages: Vec<Message>,
    #[serde(default)]
    kind: Option<String>,
}

/// Accuracy and decoding speed on a chat task set.
#[derive(Debug, Clone, Serialize)]
pub struct TaskReport {
    pub items: usize,
    pub correct: usize,
    pub accuracy: f64,
    pub by_kind: BTreeMap<String, (usize, usize)>,
    pub tokens: usize,
    pub forwards: usize,
    /// Decoded tokens replaced by an editing decoder, over all items.
    pub edits: usize,
    pub tokens_per_forward: f64,
    pub tokens_per_second: f64,
    /// The model's answer to each item, trimmed, in file order (to compare two decoding
    /// settings answer by answer).
    pub answers: Vec<String>,
}

/// Answers every item (the last message is the expected answer) with `params` and
/// counts exact matches of the trimmed text.
pub fn tasks(
    m: &LoadedModel,
    path: &Path,
    params: &GenerateParams,
    limit: usize,
) -> Result<TaskReport> {
    let tok = m
        .tokenizer
        .as_ref()
        .ok_or_else(|| TrainError::Invalid("the model has no tokenizer".into()))?;
    let text = std::fs::read_to_string(path).map_err(|source| TrainError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut report = TaskReport {
        items: 0,
        correct: 0,
        accuracy: 0.0,
        by_kind: BTreeMap::new(),
        tokens: 0,
        forwards: 0,
        edits: 0,
        tokens_per_forward: 0.0,
        tokens_per_second: 0.0,
        answers: Vec::new(),
    };
    let mut seconds = 0f64;
    for (n, line) in text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .take(limit)
        .enumerate()
    {
        let item: TaskLine = serde_json::from_str(line)
            .map_err(|e| TrainError::Invalid(format!("{}:{}: {e}", path.display(), n + 1)))?;
        let Some((answer, prompt)) = item.messages.split_last() else {
            return Err(TrainError::Invalid(format!(
                "{}:{}: a task item needs messages",
                path.display(),
                n + 1
            )));
        };
        let ids = tok.encode_chat(prompt, true)?;
        let out = generate(&m.model, &ids, params, &mut |_| {})?;
        let got = tok.decode(&out.ids, true)?;
        let ok = got.trim() == answer.content.trim();
        report.items += 1;
        report.correct += usize::from(ok);
        let kind = report
            .by_kind
            .entry(item.kind.unwrap_or_default())
            .or_default();
        kind.0 += usize::from(ok);
        kind.1 += 1;
        report.tokens += out.stats.tokens;
        report.forwards += out.stats.forwards;
        report.edits += out.stats.edits;
        seconds += out.stats.seconds;
        report.answers.push(got.trim().to_string());
    }
    if report.items == 0 {
        return Err(TrainError::Invalid(format!(
            "{} has no task items to score{}",
            path.display(),
            if limit == 0 { " (--limit 0)" } else { "" }
        )));
    }
    report.accuracy = report.correct as f64 / report.items as f64;
    report.tokens_per_forward = report.tokens as f64 / report.forwards.max(1) as f64;
    report.tokens_per_second = report.tokens as f64 / seconds.max(1e-9);
    Ok(report)
}
