//! The block loop of LLaDA2 `generate`: blocks of masks filled left to right, each over
//! several denoising steps, with finished blocks served from the KV cache.

use std::time::Instant;

use serde::Serialize;

use crate::cache::KvCache;
use crate::decode::{
    transfer_schedule, BlockStep, Candidate, Decoder, EditCounts, StepInfo, Verdict,
};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::params::{BlockCache, GenerateParams};
use crate::sampling::Sampler;
use crate::step::{SeqStep, StepOutput, Wanted};

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
    /// Tokens written at masks.
    pub fills: usize,
    /// Decoded tokens replaced by an editing decoder (the `indel` decoder's DELETE and
    /// SPLIT writes included).
    pub edits: usize,
    /// DELETE and SPLIT tokens written (the `indel` decoder).
    pub deletes: usize,
    pub splits: usize,
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

    /// `, N edits` (with `(D deletes, S splits)` when there were any) for a stats line;
    /// empty without edits.
    pub fn edit_summary(&self) -> String {
        let mut text = String::new();
        if self.edits > 0 {
            text = format!(", {} edits", self.edits);
        }
        if self.deletes + self.splits > 0 {
            text += &format!(" ({} deletes, {} splits)", self.deletes, self.splits);
        }
        text
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
    /// Offsets inside the block whose token this step replaced (editing decoders).
    pub edited: &'a [usize],
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
    model: &Model,
    prompt: &[u32],
    params: &GenerateParams,
    on_commit: &mut dyn FnMut(&[u32]),
) -> Result<GenerateOutput> {
    generate_observed(model, prompt, params, &mut Commits(on_commit))
}

/// [`generate`] with an [`Observer`] that also sees every step.
pub fn generate_observed(
    model: &Model,
    prompt: &[u32],
    params: &GenerateParams,
    observer: &mut dyn Observer,
) -> Result<GenerateOutput> {
    let _span = tracing::debug_span!("generate", prompt = prompt.len()).entered();
    let mut generation = Generation::new(model, prompt, params.clone())?;
    while generation.step(model, observer)? {}
    Ok(generation.finish())
}

/// The KV cache of a generation over `positions`, refused before it is allocated when the
/// machine's available memory cannot hold it (a CPU cache; a GPU's lives on the device).
pub(crate) fn new_cache(model: &Model, positions: usize, dtype: crate::KvDtype) -> Result<KvCache> {
    let needed = model.config().kv_cache_bytes(positions, dtype);
    if matches!(model, Model::Cpu(_)) {
        if let Some(available) = crate::cache::available_memory() {
            if needed > available {
                return Err(Error::CacheTooLarge {
                    positions,
                    kv: dtype.name(),
                    needed,
                    available,
                });
            }
        }
    }
    tracing::debug!(positions, bytes = needed, kv = dtype.name(), "KV cache");
    model.new_cache_as(positions, dtype)
}

/// One answer being decoded, advanced one forward pass at a time, so that a caller can
/// drive several of them through shared (batched) forward passes.
pub struct Generation {
    params: GenerateParams,
    /// Prompt, then the answer's blocks of masks as they are filled.
    tokens: Vec<u32>,
    prompt_len: usize,
    /// `prompt_len + gen_length`: the answer never reaches past it.
    answer_end: usize,
    cursor: BlockCursor,
    output: Output,
    dual: DualCache,
    decoder: Box<dyn Decoder + Send>,
    sampler: Sampler,
    cache: KvCache,
    stats: GenerateStats,
    /// What block-rewriting decoders wrote, by kind.
    edit_counts: EditCounts,
    started: Instant,
}

/// Where decoding stands: the block being decoded and the steps taken in it.
struct BlockCursor {
    block: usize,
    blocks: usize,
    /// Mask-filling steps taken in the current block.
    step: usize,
    /// Refinement steps taken after the block's last mask (editing decoders).
    post_step: usize,
    /// Whether the last step replaced a decoded token.
    last_edited: bool,
    /// Tokens each mask-filling step of a block fills at least.
    schedule: Vec<usize>,
    /// Where a block-rewriting decoder ([`Decoder::rewrite`]) left the block.
    rewrite: Rewrite,
}

/// A block-rewriting decoder's block: open, closing after one more forward that stores
/// its final tokens, or closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rewrite {
    Open,
    StoreFinal,
    Closed,
}

/// What of the answer is decided and reported.
struct Output {
    /// Answer tokens before this position are final and reported.
    committed: usize,
    /// A stop token has been reported: nothing after it will be.
    stopped: bool,
    /// Set once the answer is decided.
    result: Option<Vec<u32>>,
}

/// Approximate block caching ([`BlockCache::Dual`]): what the cache holds for the
/// current block.
struct DualCache {
    /// The block's tokens as its keys/values were last computed (empty before its first
    /// pass).
    computed: Vec<u32>,
    /// Partial passes since the last full one.
    partial_passes: usize,
}

/// What one pending forward pass of a [`Generation`] reads and writes.
struct PendingPass {
    /// Only commits prompt blocks to the cache (a chunk of a long prefill).
    prefill: bool,
    start: usize,
    end: usize,
    commit: usize,
    /// Positions of the current block the decoder gets proposals for (absolute): the
    /// masked ones, and the decoded non-prompt ones for editing decoders.
    positions: Vec<usize>,
    /// The same, relative to `start` (the rows whose logits are needed).
    rows: Vec<usize>,
    /// Approximate block caching: the rows (relative to `start`) this pass computes.
    compute: Option<Vec<usize>>,
}

impl Generation {
    /// Validates the request and lays out prompt + masks; no forward pass yet.
    pub fn new(model: &Model, prompt: &[u32], params: GenerateParams) -> Result<Self> {
        let cfg = model.config();
        params.validate(cfg.vocab_size)?;
        if prompt.is_empty() {
            return Err(Error::param("prompt", "the prompt is empty"));
        }
        if let Some(&id) = prompt.iter().find(|&&id| id as usize >= cfg.vocab_size) {
            return Err(Error::TokenOutOfRange {
                id,
                vocab: cfg.vocab_size,
            });
        }
        // A mask in the prompt would be decoded over, changing the prompt.
        if let Some(at) = prompt.iter().position(|&t| t == params.mask_id) {
            return Err(Error::param(
                "prompt",
                format!(
                    "the prompt contains the mask token (id {}) at token {at}",
                    params.mask_id
                ),
            ));
        }
        cfg.check_block_length(params.block_length)?;
        let b = params.block_length;
        let p = prompt.len();
        let total = params.positions_needed(p);
        if total > cfg.max_position_embeddings {
            return Err(Error::ContextOverflow {
                prompt: p,
                gen: params.gen_length,
                needed: total,
                context: cfg.max_position_embeddings,
            });
        }
        let cache = new_cache(model, total, params.kv_cache)?;
        let schedule = transfer_schedule(b, params.steps.min(params.gen_length));
        let mut tokens = prompt.to_vec();
        tokens.resize(total, params.mask_id);
        let mut decoder = params
            .decoder
            .build(params.mask_id, params.delete_id.zip(params.split_id))?;
        decoder.begin_block();
        Ok(Self {
            decoder,
            sampler: Sampler::new(params.sampling, params.seed),
            answer_end: p + params.gen_length,
            cursor: BlockCursor {
                block: p / b,
                blocks: total / b,
                step: 0,
                post_step: 0,
                last_edited: false,
                schedule,
                rewrite: Rewrite::Open,
            },
            output: Output {
                committed: p,
                stopped: false,
                result: None,
            },
            dual: DualCache {
                computed: Vec::new(),
                partial_passes: 0,
            },
            cache,
            stats: GenerateStats {
                prompt_tokens: p,
                ..Default::default()
            },
            edit_counts: EditCounts::default(),
            started: Instant::now(),
            prompt_len: p,
            tokens,
            params,
        })
    }

    pub fn is_finished(&self) -> bool {
        self.output.result.is_some()
    }

    /// Whether the answer can no longer change: finished, or its stop token is final
    /// with everything before it (the reference may still fill the rest of the block,
    /// which changes nothing in the answer).
    pub fn answer_is_final(&self) -> bool {
        self.output.result.is_some() || self.output.stopped
    }

    pub fn params(&self) -> &GenerateParams {
        &self.params
    }

    /// Statistics so far (final once [`Generation::is_finished`]).
    pub fn stats(&self) -> GenerateStats {
        let mut stats = self.stats;
        stats.tokens = match &self.output.result {
            Some(ids) => ids.len(),
            None => self.output.committed - self.prompt_len,
        };
        stats.seconds = self.started.elapsed().as_secs_f64();
        stats
    }

    /// Runs one forward pass of this sequence alone; false once the answer is finished.
    pub fn step(&mut self, model: &Model, observer: &mut dyn Observer) -> Result<bool> {
        let Some(plan) = self.plan(observer) else {
            return Ok(false);
        };
        let mut seq = [self.seq_step(&plan)];
        let logits = model.forward(&mut seq)?.pop().flatten();
        self.stats.forwards += 1;
        self.apply_logits(&plan, logits, observer)?;
        Ok(!self.is_finished())
    }

    /// The answer and its statistics (the answer so far if called before the end).
    pub fn finish(mut self) -> GenerateOutput {
        let stats = self.stats();
        let ids = self
            .output
            .result
            .take()
            .unwrap_or_else(|| self.answer_so_far());
        GenerateOutput { ids, stats }
    }

    fn answer_so_far(&self) -> Vec<u32> {
        let mut answer = self.tokens[self.prompt_len..self.answer_end].to_vec();
        if let Some(eos) = answer.iter().position(|&t| self.params.is_stop(t)) {
            answer.truncate(eos + 1);
        }
        answer
    }

    /// The next forward pass, moving on to the next block when this one is done; `None`
    /// (and the result set) when the answer is finished. A closing block's tokens are
    /// reported to `observer` (for editing decoders that is when they become final).
    fn plan(&mut self, observer: &mut dyn Observer) -> Option<PendingPass> {
        if self.output.result.is_some() {
            return None;
        }
        let b = self.params.block_length;
        let mask = self.params.mask_id;
        loop {
            if self.cursor.block >= self.cursor.blocks {
                self.output.result = Some(self.answer_so_far());
                return None;
            }
            let (block_start, block_end) = (self.cursor.block * b, (self.cursor.block + 1) * b);
            let masked = self.tokens[block_start..block_end].contains(&mask);
            let rewriting = self.decoder.rewrites_blocks();
            let open = if rewriting {
                self.cursor.rewrite != Rewrite::Closed
            } else if masked {
                self.cursor.step < self.cursor.schedule.len()
            } else if !self.decoder.edits() {
                false
            } else if self.cursor.post_step == 0 {
                // The masks ran out before the schedule did: refinement steps follow (as
                // in diffusers; a block filled by its last scheduled step closes).
                self.cursor.step < self.cursor.schedule.len()
            } else {
                self.decoder
                    .keep_refining(self.cursor.post_step, self.cursor.last_edited)
            };
            if !open {
                self.report_commits(block_end, observer);
                if self.tokens[self.prompt_len..block_end]
                    .iter()
                    .any(|&t| self.params.is_stop(t))
                {
                    self.output.result = Some(self.answer_so_far());
                    return None;
                }
                self.cursor.block += 1;
                self.cursor.step = 0;
                self.cursor.post_step = 0;
                self.cursor.last_edited = false;
                self.cursor.rewrite = Rewrite::Open;
                self.decoder.begin_block();
                self.dual.computed.clear();
                continue;
            }
            if self.params.use_cache {
                let pending = block_start - self.cache.len();
                // A long prompt's blocks are committed in chunks of whole blocks before
                // decoding starts: its prefill takes memory for a chunk, not the prompt.
                let chunk = self.params.prefill_chunk_tokens();
                if pending > chunk {
                    let start = self.cache.len();
                    return Some(PendingPass {
                        prefill: true,
                        start,
                        end: start + chunk,
                        commit: chunk,
                        positions: Vec::new(),
                        rows: Vec::new(),
                        compute: None,
                    });
                }
            }
            if !masked && !rewriting {
                self.cursor.post_step += 1;
            }
            let store_final = self.cursor.rewrite == Rewrite::StoreFinal;
            // With the cache, the first step of a block also commits what the cache
            // lacks (the previous block, or the prompt's full blocks): one pass, not two.
            // Without it, the whole prefix is recomputed, exactly as the reference does.
            // A block's keys/values are committed only once it is closed, after its last
            // edit.
            let start = if self.params.use_cache {
                self.cache.len()
            } else {
                self.cache.clear();
                0
            };
            // The pass that stores a rewritten block's final tokens commits it too.
            let commit = match (self.params.use_cache, store_final) {
                (false, _) => 0,
                (true, false) => block_start - start,
                (true, true) => block_end - start,
            };
            let edits = self.decoder.edits();
            let positions: Vec<usize> = if store_final {
                Vec::new()
            } else if rewriting {
                (block_start.max(self.prompt_len)..block_end).collect()
            } else {
                (block_start..block_end)
                    .filter(|&i| self.tokens[i] == mask || (edits && i >= self.prompt_len))
                    .collect()
            };
            let rows: Vec<usize> = positions.iter().map(|&i| i - start).collect();
            let compute = self.rows_to_compute(start, block_end, commit, &rows);
            // The keys/values this pass leaves for the block's positions.
            match &compute {
                Some(computed) => {
                    for &r in computed {
                        self.dual.computed[start + r - block_start] = self.tokens[start + r];
                    }
                    self.dual.partial_passes += 1;
                }
                None => {
                    self.dual.computed = self.tokens[block_start..block_end].to_vec();
                    self.dual.partial_passes = 0;
                }
            }
            return Some(PendingPass {
                prefill: false,
                start,
                end: block_end,
                commit,
                positions,
                rows,
                compute,
            });
        }
    }

    /// Approximate block caching: the rows of the coming pass that must be computed, or
    /// `None` for a full pass.
    fn rows_to_compute(
        &self,
        start: usize,
        end: usize,
        commit: usize,
        logit_rows: &[usize],
    ) -> Option<Vec<usize>> {
        let BlockCache::Dual { refresh } = self.params.block_cache else {
            return None;
        };
        let block_start = self.cursor.block * self.params.block_length;
        let refresh_due = refresh > 0 && self.dual.partial_passes + 1 >= refresh;
        if !self.params.use_cache
            || commit > 0
            || start != block_start
            || self.dual.computed.len() != end - block_start
            || self.cursor.last_edited
            || refresh_due
        {
            return None;
        }
        let mask = self.params.mask_id;
        let rows: Vec<usize> = (0..end - start)
            .filter(|&r| {
                let token = self.tokens[start + r];
                token == mask
                    || token != self.dual.computed[r]
                    || logit_rows.binary_search(&r).is_ok()
            })
            .collect();
        (!rows.is_empty() && rows.len() < end - start).then_some(rows)
    }

    fn seq_step<'a>(&'a mut self, plan: &'a PendingPass) -> SeqStep<'a> {
        SeqStep {
            tokens: &self.tokens[plan.start..plan.end],
            start: plan.start,
            block_length: self.params.block_length,
            commit: plan.commit,
            logit_rows: &plan.rows,
            compute: plan.compute.as_deref(),
            wanted: self.wanted(),
            cache: &mut self.cache,
        }
    }

    /// Greedy picks instead of logits when neither the decoder nor the sampler needs
    /// more: the picks are what the sampler would compute from the logits.
    fn wanted(&self) -> Wanted {
        if self.sampler.is_plain_greedy()
            && !self.decoder.adjusts_logits()
            && !self.decoder.rewrites_blocks()
        {
            Wanted::Greedy
        } else {
            Wanted::Logits
        }
    }

    /// Takes this step's logits: picks candidates, lets the decoder fill and edit, reports
    /// what became final.
    fn apply_logits(
        &mut self,
        plan: &PendingPass,
        logits: Option<StepOutput>,
        observer: &mut dyn Observer,
    ) -> Result<()> {
        if plan.prefill {
            return Ok(());
        }
        if self.decoder.rewrites_blocks() {
            return self.apply_rewrite(plan, logits, observer);
        }
        let output = logits.ok_or_else(|| Error::InvalidRequest("no logits requested".into()))?;
        self.stats.denoising_steps += 1;
        let b = self.params.block_length;
        let mask = self.params.mask_id;
        let (block_start, block_end) = (self.cursor.block * b, plan.end);
        self.decoder.begin_step();
        let mut candidates = Vec::with_capacity(plan.positions.len());
        let mut candidate = |pos: usize, token: u32, confidence: f32, tokens: &[u32]| {
            let masked = tokens[pos] == mask;
            candidates.push(Candidate {
                offset: pos - block_start,
                token,
                confidence,
                current: (!masked).then_some(tokens[pos]),
            });
        };
        match output {
            StepOutput::Greedy(picks) => {
                for (&pos, pick) in plan.positions.iter().zip(picks) {
                    candidate(pos, pick.token, pick.confidence, &self.tokens);
                }
            }
            StepOutput::Logits(logits) => {
                let mut logits = logits.flatten_all()?.to_vec1::<f32>()?;
                let vocab = logits.len() / plan.positions.len();
                for (&pos, row) in plan.positions.iter().zip(logits.chunks_exact_mut(vocab)) {
                    let masked = self.tokens[pos] == mask;
                    self.decoder.adjust_logits(pos - block_start, masked, row);
                    let (token, confidence) = self.sampler.pick(row);
                    candidate(pos, token, confidence, &self.tokens);
                }
            }
        }
        let info = StepInfo {
            step: self.cursor.step,
            scheduled: if self.cursor.post_step == 0 {
                self.cursor.schedule[self.cursor.step]
            } else {
                0
            },
            post_step: self.cursor.post_step,
        };
        let selection = self.decoder.select(info, &candidates);
        if self.cursor.post_step == 0 {
            self.cursor.step += 1;
        }
        let mut placed_eos = false;
        let mut filled = Vec::with_capacity(selection.fill.len());
        let mut edited = Vec::with_capacity(selection.edit.len());
        // A decoder's choice is applied only where it makes sense: fills on masks with a
        // real token, edits on decoded positions with another token.
        for &i in &selection.fill {
            let Some(c) = candidates.get(i) else { continue };
            if c.is_masked() && c.token != mask {
                self.tokens[block_start + c.offset] = c.token;
                placed_eos |= self.params.is_stop(c.token);
                filled.push(c.offset);
            }
        }
        for &i in &selection.edit {
            let Some(c) = candidates.get(i) else { continue };
            if c.current.is_some_and(|t| t != c.token) && c.token != mask {
                self.tokens[block_start + c.offset] = c.token;
                placed_eos |= self.params.is_stop(c.token);
                edited.push(c.offset);
            }
        }
        self.stats.fills += filled.len();
        self.stats.edits += edited.len();
        self.cursor.last_edited = !edited.is_empty();
        observer.on_step(&BlockView {
            index: self.cursor.block,
            step: info.step + info.post_step,
            tokens: &self.tokens[block_start..block_end],
            filled: &filled,
            edited: &edited,
            mask_id: mask,
        });
        // An editing decoder may still change this block: only what precedes it is final.
        let window = if self.decoder.edits() {
            block_start
        } else {
            block_end
        };
        self.report_commits(window, observer);
        // The reference searches for the EOS from position 0 and up to the end of the
        // block; we search the answer only (an EOS inside the prompt would make it
        // return a piece of the prompt) and never past `gen_length` (it would return
        // more tokens than asked for). Within those bounds the rule is the reference's.
        if self.params.eos_early_stop && placed_eos {
            let p = self.prompt_len;
            if let Some(eos) =
                (p..block_end.min(self.answer_end)).find(|&i| self.params.is_stop(self.tokens[i]))
            {
                if self.tokens[p..eos].iter().all(|&t| t != mask) {
                    self.output.result = Some(self.tokens[p..=eos].to_vec());
                    // The answer is decided: report it even inside an editing block.
                    self.report_commits(eos + 1, observer);
                }
            }
        }
        Ok(())
    }

    /// A block-rewriting decoder's step: it rewrites the block from the logits of its
    /// non-prompt positions and says whether the block goes on. The block's tokens are
    /// final only once it closes.
    fn apply_rewrite(
        &mut self,
        plan: &PendingPass,
        logits: Option<StepOutput>,
        observer: &mut dyn Observer,
    ) -> Result<()> {
        self.stats.denoising_steps += 1;
        if self.cursor.rewrite == Rewrite::StoreFinal {
            self.cursor.rewrite = Rewrite::Closed;
            return Ok(());
        }
        let output = logits.ok_or_else(|| Error::InvalidRequest("no logits requested".into()))?;
        let mut rows = output.into_logits()?.flatten_all()?.to_vec1::<f32>()?;
        let b = self.params.block_length;
        let mask = self.params.mask_id;
        let (block_start, block_end) = (self.cursor.block * b, plan.end);
        let prompt = self.prompt_len.saturating_sub(block_start).min(b);
        let vocab = rows.len() / (block_end - block_start - prompt).max(1);
        let before = self.tokens[block_start..block_end].to_vec();
        let sampler = &mut self.sampler;
        let mut pick = |row: &[f32]| sampler.pick(row);
        let verdict = self.decoder.rewrite(&mut BlockStep {
            tokens: &mut self.tokens[block_start..block_end],
            prompt,
            logits: &mut rows,
            vocab,
            pick: &mut pick,
            counts: &mut self.edit_counts,
        });
        self.cursor.rewrite = match verdict {
            Verdict::Continue => Rewrite::Open,
            Verdict::Done => Rewrite::Closed,
            Verdict::DoneAfterForward => Rewrite::StoreFinal,
        };
        let c = self.edit_counts;
        self.stats.fills = c.fills;
        self.stats.edits = c.substitutions + c.deletes + c.splits;
        self.stats.deletes = c.deletes;
        self.stats.splits = c.splits;
        let after = &self.tokens[block_start..block_end];
        let filled: Vec<usize> = (0..b)
            .filter(|&i| before[i] == mask && after[i] != mask)
            .collect();
        let edited: Vec<usize> = (0..b)
            .filter(|&i| before[i] != mask && after[i] != before[i])
            .collect();
        self.cursor.last_edited = !edited.is_empty();
        observer.on_step(&BlockView {
            index: self.cursor.block,
            step: self.cursor.step,
            tokens: after,
            filled: &filled,
            edited: &edited,
            mask_id: mask,
        });
        self.cursor.step += 1;
        self.report_commits(block_start, observer);
        Ok(())
    }

    /// Reports the answer's final, left-contiguous prefix as it grows.
    fn report_commits(&mut self, window_end: usize, observer: &mut dyn Observer) {
        if self.output.stopped {
            return;
        }
        let from = self.output.committed;
        let limit = window_end.min(self.answer_end);
        while self.output.committed < limit
            && self.tokens[self.output.committed] != self.params.mask_id
        {
            self.output.committed += 1;
            if self.params.is_stop(self.tokens[self.output.committed - 1]) {
                self.output.stopped = true;
                break;
            }
        }
        if self.output.committed > from {
            observer.on_commit(&self.tokens[from..self.output.committed]);
        }
    }
}

/// Advances every unfinished generation of `batch` by one step in a single forward pass
/// (linear and expert layers see all their tokens together; attention stays per
/// sequence). `on_commit(i, ids)` receives `batch[i]`'s newly final answer tokens.
/// Returns how many sequences took part.
pub fn step_batch(
    model: &Model,
    batch: &mut [&mut Generation],
    on_commit: &mut dyn FnMut(usize, &[u32]),
) -> Result<usize> {
    let plans: Vec<Option<PendingPass>> = batch
        .iter_mut()
        .enumerate()
        .map(|(i, g)| g.plan(&mut BatchMember(i, on_commit)))
        .collect();
    let mut steps: Vec<SeqStep<'_>> = Vec::with_capacity(batch.len());
    let mut members = Vec::with_capacity(batch.len());
    for (i, (g, plan)) in batch.iter_mut().zip(&plans).enumerate() {
        if let Some(plan) = plan {
            steps.push(g.seq_step(plan));
            members.push(i);
        }
    }
    if steps.is_empty() {
        return Ok(0);
    }
    let logits = model.forward(&mut steps)?;
    drop(steps);
    for (&i, logits) in members.iter().zip(logits) {
        let plan = plans[i].as_ref().expect("planned member");
        batch[i].stats.forwards += 1;
        let mut report = BatchMember(i, on_commit);
        batch[i].apply_logits(plan, logits, &mut report)?;
    }
    Ok(members.len())
}

/// Decodes every generation of `gens` to its end, the unfinished ones sharing one
/// batched forward pass per step ([`step_batch`]). Returns the number of passes.
pub fn run_batch(
    model: &Model,
    gens: &mut [Generation],
    on_commit: &mut dyn FnMut(usize, &[u32]),
) -> Result<usize> {
    let mut passes = 0;
    loop {
        // Indices into `gens` of this pass's members, to report commits by them.
        let (index, mut batch): (Vec<usize>, Vec<&mut Generation>) = gens
            .iter_mut()
            .enumerate()
            .filter(|(_, g)| !g.is_finished())
            .unzip();
        let ran = step_batch(model, &mut batch, &mut |i, ids| on_commit(index[i], ids))?;
        if ran == 0 {
            return Ok(passes);
        }
        passes += 1;
    }
}

/// Forwards commits to a callback together with the sequence's index in its batch.
struct BatchMember<'a>(usize, &'a mut dyn FnMut(usize, &[u32]));

impl Observer for BatchMember<'_> {
    fn on_commit(&mut self, ids: &[u32]) {
        (self.1)(self.0, ids)
    }
}
