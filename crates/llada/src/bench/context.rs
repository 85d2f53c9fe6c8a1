//! How a forward's cost grows with the context: for each prompt length, the prefill (in
//! chunks, as decoding does it) and then a block forward and an AR step over the cached
//! prompt, with the cache's size and the process's memory.

use std::time::Instant;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::model::Model;
use crate::params::GenerateParams;
use crate::step::{SeqStep, Wanted};

/// One prompt length's figures.
#[derive(Debug, Clone, Serialize)]
pub struct ContextRow {
    pub prompt_tokens: usize,
    pub prefill_seconds: f64,
    pub prefill_tokens_per_second: f64,
    /// One forward of a block after the prompt (logits of every row). Its tokens are
    /// varied, as in a block mid-decoding (a block of identical masks would route all its
    /// tokens alike and read fewer experts).
    pub block_forward_ms: f64,
    /// One forward of a single token after the prompt.
    pub ar_step_ms: f64,
    /// block_forward_ms / ar_step_ms: the tokens per forward at which block diffusion
    /// ties one-token steps here.
    pub break_even_tpf: f64,
    /// Routed experts' weight bytes a block forward and an AR step read (counted).
    pub block_expert_bytes: u64,
    pub ar_expert_bytes: u64,
    /// The KV cache's size for the prompt and one block, as estimated before allocation.
    pub kv_cache_bytes: u64,
    /// Resident memory after the row (Linux `VmRSS`) and the peak so far (`VmHWM`).
    pub rss_bytes: Option<u64>,
    pub peak_rss_bytes: Option<u64>,
}

/// Measures each of `lengths` (rounded down to whole blocks of `params.block_length`) in
/// turn with `params`' KV cache type and prefill chunk; block and AR forwards are the
/// mean of `runs`.
pub fn context_growth(
    model: &Model,
    lengths: &[usize],
    params: &GenerateParams,
    runs: usize,
) -> Result<Vec<ContextRow>> {
    let b = params.block_length;
    let mut rows = Vec::with_capacity(lengths.len());
    for &length in lengths {
        let len = length / b * b;
        if len == 0 {
            return Err(Error::param(
                "context",
                format!("{length} tokens is less than a block of {b}"),
            ));
        }
        let positions = len + b;
        if positions > model.config().max_position_embeddings {
            return Err(Error::ContextOverflow {
                prompt: len,
                gen: b,
                needed: positions,
                context: model.config().max_position_embeddings,
            });
        }
        let kv_cache_bytes = model.config().kv_cache_bytes(positions, params.kv_cache);
        let mut cache = crate::generate::new_cache(model, positions, params.kv_cache)?;
        let text = super::synthetic_prompt(len + b, model.config().vocab_size, params);
        let (prompt, block) = text.split_at(len);
        let chunk = params.prefill_chunk_tokens();
        let started = Instant::now();
        for from in (0..len).step_by(chunk) {
            let to = (from + chunk).min(len);
            model.forward(&mut [SeqStep {
                tokens: &prompt[from..to],
                start: from,
                block_length: b,
                commit: to - from,
                logit_rows: &[],
                compute: None,
                wanted: Wanted::Logits,
                cache: &mut cache,
            }])?;
        }
        let prefill_seconds = started.elapsed().as_secs_f64();
        let all_rows: Vec<usize> = (0..b).collect();
        // One untimed forward first (buffers, caches), then the mean of `runs`; with the
        // expert bytes of one forward. A single token is its own routing block.
        let runs = runs.max(1);
        let mut time =
            |tokens: &[u32], rows: &[usize], block_length: usize| -> Result<(f64, u64)> {
                let mut started = Instant::now();
                let mut experts = 0;
                for run in 0..=runs {
                    if run == 1 {
                        started = Instant::now();
                    }
                    let before = model.cost();
                    model.forward(&mut [SeqStep {
                        tokens,
                        start: len,
                        block_length,
                        commit: 0,
                        logit_rows: rows,
                        compute: None,
                        wanted: Wanted::Greedy,
                        cache: &mut cache,
                    }])?;
                    experts = (model.cost() - before).expert_bytes;
                }
                Ok((1e3 * started.elapsed().as_secs_f64() / runs as f64, experts))
            };
        let (block_forward_ms, block_expert_bytes) = time(block, &all_rows, b)?;
        let (ar_step_ms, ar_expert_bytes) = time(&block[..1], &[0], 1)?;
        rows.push(ContextRow {
            prompt_tokens: len,
            prefill_seconds,
            prefill_tokens_per_second: len as f64 / prefill_seconds,
            block_forward_ms,
            ar_step_ms,
            break_even_tpf: block_forward_ms / ar_step_ms,
            block_expert_bytes,
            ar_expert_bytes,
            kv_cache_bytes,
            rss_bytes: super::rss(),
            peak_rss_bytes: super::peak_rss(),
        });
    }
    Ok(rows)
}
