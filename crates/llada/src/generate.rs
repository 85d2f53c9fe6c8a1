//! The block loop of LLaDA2 `generate`: blocks of masks filled left to right, each over
//! several denoising steps, with finished blocks served from the KV cache.

use std::time::Instant;

use serde::Serialize;

use crate::decode::{transfer_schedule, Candidate, DecoderConfig, StepInfo};
use crate::error::{Error, Result};
use crate::model::{Llada2Model, SeqStep};
use crate::sampling::{Sampler, SamplingParams};

#[derive(Debug, Clone, PartialEq)]
pub struct GenerateParams {
    /// Most tokens to generate after the prompt.
    pub gen_length: usize,
    pub block_length: usize,
    /// Denoising steps per block (capped at `gen_length`, as the reference does).
    pub steps: usize,
    pub decoder: DecoderConfig,
    pub sampling: SamplingParams,
    pub seed: u64,
    pub mask_id: u32,
    pub eos_id: u32,
    /// More tokens that end the answer as EOS does (e.g. `<|role_end|>` in chat).
    pub extra_stop_ids: Vec<u32>,
    /// Stop inside a block as soon as an EOS is placed with no mask before it.
    pub eos_early_stop: bool,
    /// Serve finished blocks from the KV cache (false: recompute the whole prefix each
    /// step, exactly as the reference does).
    pub use_cache: bool,
}

impl GenerateParams {
    /// The reference defaults (block 32, 32 steps, threshold 0.95, greedy).
    pub fn new(mask_id: u32, eos_id: u32) -> Self {
        Self {
            gen_length: 128,
            block_length: 32,
            steps: 32,
            decoder: DecoderConfig::Threshold { threshold: 0.95 },
            sampling: SamplingParams::default(),
            seed: 0,
            mask_id,
            eos_id,
            extra_stop_ids: Vec::new(),
            eos_early_stop: false,
            use_cache: true,
        }
    }

    /// Whether `token` ends the answer.
    pub fn is_stop(&self, token: u32) -> bool {
        token == self.eos_id || self.extra_stop_ids.contains(&token)
    }

    fn validate(&self, vocab: usize) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidRequest(m));
        if self.gen_length == 0 {
            return bad("gen_length must be at least 1".into());
        }
        if self.block_length == 0 {
            return bad("block_length must be at least 1".into());
        }
        if self.steps == 0 {
            return bad("steps must be at least 1".into());
        }
        let ids = [("mask id", self.mask_id), ("eos id", self.eos_id)];
        let extra = self.extra_stop_ids.iter().map(|&id| ("stop id", id));
        for (name, id) in ids.into_iter().chain(extra) {
            if id as usize >= vocab {
                return bad(format!(
                    "{name} {id} is outside the vocabulary (size {vocab})"
                ));
            }
        }
        self.sampling.validate()
    }
}

/// What one generation cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct GenerateStats {
    pub prompt_tokens: usize,
    /// Tokens returned (the answer, EOS included).
    pub tokens: usize,
    /// Every model call, cache commits included.
    pub forwards: usize,
    /// Forward passes that denoised a block (the reference's count).
    pub denoising_steps: usize,
    pub seconds: f64,
}

impl GenerateStats {
    pub fn tokens_per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.tokens as f64 / self.seconds
        } else {
            0.0
        }
    }

    pub fn tokens_per_forward(&self) -> f64 {
        if self.forwards > 0 {
            self.tokens as f64 / self.forwards as f64
        } else {
            0.0
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOutput {
    /// The answer as the reference returns it: after the prompt, cut after the first EOS.
    pub ids: Vec<u32>,
    pub stats: GenerateStats,
}

/// The current block after a denoising step.
#[derive(Debug, Clone, Copy)]
pub struct BlockView<'a> {
    /// Block index (position / block length).
    pub index: usize,
    /// Step inside the block, from 0.
    pub step: usize,
    /// The block's tokens, masks included.
    pub tokens: &'a [u32],
    /// Offsets inside the block that this step filled.
    pub filled: &'a [usize],
    pub mask_id: u32,
}

/// What the block loop reports while it runs.
pub trait Observer {
    /// Answer tokens that just became final, with everything to their left final too
    /// (never a token that may still change).
    fn on_commit(&mut self, _ids: &[u32]) {}
    /// The current block after each step (for visualising the unmasking).
    fn on_step(&mut self, _block: &BlockView<'_>) {}
}

/// An observer that only forwards commits to a callback.
struct Commits<'a>(&'a mut dyn FnMut(&[u32]));

impl Observer for Commits<'_> {
    fn on_commit(&mut self, ids: &[u32]) {
        (self.0)(ids)
    }
}

/// Generates an answer to `prompt`. `on_commit` receives answer tokens as soon as they
/// are final and everything to their left is too.
pub fn generate(
    model: &Llada2Model,
    prompt: &[u32],
    params: &GenerateParams,
    on_commit: &mut dyn FnMut(&[u32]),
) -> Result<GenerateOutput> {
    generate_observed(model, prompt, params, &mut Commits(on_commit))
}

/// [`generate`] with an [`Observer`] that also sees every step.
pub fn generate_observed(
    model: &Llada2Model,
    prompt: &[u32],
    params: &GenerateParams,
    observer: &mut dyn Observer,
) -> Result<GenerateOutput> {
    let _span = tracing::debug_span!("generate", prompt = prompt.len()).entered();
    let cfg = model.config();
    params.validate(cfg.vocab_size)?;
    if prompt.is_empty() {
        return Err(Error::InvalidRequest("the prompt is empty".into()));
    }
    if let Some(&id) = prompt.iter().find(|&&id| id as usize >= cfg.vocab_size) {
        return Err(Error::TokenOutOfRange {
            id,
            vocab: cfg.vocab_size,
        });
    }
    let started = Instant::now();
    let b = params.block_length;
    let p = prompt.len();
    let num_blocks = (p + params.gen_length).div_ceil(b);
    let total = num_blocks * b;
    if total > cfg.max_position_embeddings {
        return Err(Error::ContextOverflow {
            prompt: p,
            gen: params.gen_length,
            needed: total,
            context: cfg.max_position_embeddings,
        });
    }
    let steps = params.steps.min(params.gen_length);
    let schedule = transfer_schedule(b, steps);
    let mut decoder = params.decoder.build();
    let mut sampler = Sampler::new(params.sampling, params.seed);

    let mut x = prompt.to_vec();
    x.resize(total, params.mask_id);
    let answer_end = p + params.gen_length;
    let mut stats = GenerateStats {
        prompt_tokens: p,
        ..Default::default()
    };
    let mut stream = Stream::new(p, answer_end, params);
    let mut cache = model.new_cache_for(total);

    for block in p / b..num_blocks {
        let (bs, be) = (block * b, (block + 1) * b);
        for (step, &scheduled) in schedule.iter().enumerate() {
            let masked: Vec<usize> = (bs..be).filter(|&i| x[i] == params.mask_id).collect();
            if masked.is_empty() {
                break;
            }
            let logits = if params.use_cache {
                // The first step of a block also commits what the cache lacks (the
                // previous block, or the prompt's full blocks): one pass, not two.
                let start = cache.len();
                let rows: Vec<usize> = masked.iter().map(|&i| i - start).collect();
                run(
                    model,
                    &x[start..be],
                    start,
                    b,
                    bs - start,
                    &rows,
                    &mut cache,
                )?
            } else {
                let mut scratch = model.new_cache_for(be);
                run(model, &x[..be], 0, b, 0, &masked, &mut scratch)?
            };
            stats.forwards += 1;
            stats.denoising_steps += 1;

            let vocab = cfg.vocab_size;
            let candidates: Vec<Candidate> = masked
                .iter()
                .enumerate()
                .map(|(row, &pos)| {
                    let (token, confidence) = sampler.pick(&logits[row * vocab..(row + 1) * vocab]);
                    Candidate {
                        offset: pos - bs,
                        token,
                        confidence,
                    }
                })
                .collect();
            let accepted = decoder.select(StepInfo { step, scheduled }, &candidates);
            let mut placed_eos = false;
            let mut filled = Vec::with_capacity(accepted.len());
            for &i in &accepted {
                let c = candidates[i];
                x[bs + c.offset] = c.token;
                placed_eos |= params.is_stop(c.token);
                filled.push(c.offset);
            }
            observer.on_step(&BlockView {
                index: block,
                step,
                tokens: &x[bs..be],
                filled: &filled,
                mask_id: params.mask_id,
            });
            stream.advance(&x, be, observer);
            // The reference searches for the EOS from position 0 and up to the end of the
            // block; we search the answer only (an EOS inside the prompt would make it
            // return a piece of the prompt) and never past `gen_length` (it would return
            // more tokens than asked for). Within those bounds the rule is the reference's.
            if params.eos_early_stop && placed_eos {
                if let Some(eos) = (p..be.min(answer_end)).find(|&i| params.is_stop(x[i])) {
                    if x[p..eos].iter().all(|&t| t != params.mask_id) {
                        return Ok(finish(x[p..=eos].to_vec(), stats, started));
                    }
                }
            }
        }
        if x[p..be].iter().any(|&t| params.is_stop(t)) {
            break;
        }
    }
    let mut answer = x[p..answer_end].to_vec();
    if let Some(eos) = answer.iter().position(|&t| params.is_stop(t)) {
        answer.truncate(eos + 1);
    }
    Ok(finish(answer, stats, started))
}

fn finish(ids: Vec<u32>, mut stats: GenerateStats, started: Instant) -> GenerateOutput {
    stats.tokens = ids.len();
    stats.seconds = started.elapsed().as_secs_f64();
    GenerateOutput { ids, stats }
}

/// One forward pass of one sequence; the requested rows' logits, flattened.
fn run(
    model: &Llada2Model,
    tokens: &[u32],
    start: usize,
    block_length: usize,
    commit: usize,
    rows: &[usize],
    cache: &mut crate::cache::KvCache,
) -> Result<Vec<f32>> {
    let mut step = [SeqStep {
        tokens,
        start,
        block_length,
        commit,
        logit_rows: rows,
        cache,
    }];
    let logits = model.forward(&mut step)?.pop().flatten();
    let logits = logits.ok_or_else(|| Error::InvalidRequest("no logits requested".into()))?;
    Ok(logits.flatten_all()?.to_vec1::<f32>()?)
}

/// Emits the answer's final, left-contiguous prefix as it grows.
struct Stream<'a> {
    next: usize,
    end: usize,
    params: &'a GenerateParams,
    done: bool,
}

impl<'a> Stream<'a> {
    fn new(prompt_len: usize, answer_end: usize, params: &'a GenerateParams) -> Self {
        Self {
            next: prompt_len,
            end: answer_end,
            params,
            done: false,
        }
    }

    fn advance(&mut self, x: &[u32], window_end: usize, observer: &mut dyn Observer) {
        if self.done {
            return;
        }
        let from = self.next;
        let limit = window_end.min(self.end);
        while self.next < limit && x[self.next] != self.params.mask_id {
            self.next += 1;
            if self.params.is_stop(x[self.next - 1]) {
                self.done = true;
                break;
            }
        }
        if self.next > from {
            observer.on_commit(&x[from..self.next]);
        }
    }
}
