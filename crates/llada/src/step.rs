//! One sequence's share of an inference forward pass, and the checks and block-causal
//! mask every backend applies to it.

use crate::cache::KvCache;
use crate::error::{Error, Result};

/// What a step wants back for each of its logit rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Wanted {
    /// The logits `[rows, vocab]`.
    #[default]
    Logits,
    /// Only each row's argmax and its softmax probability (greedy decoding by a decoder
    /// that does not change logits): a device backend computes them where the logits
    /// are and sends back two numbers per row.
    Greedy,
}

/// The greedy choice of one logit row: the argmax (the first, on ties) and its softmax
/// probability.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GreedyPick {
    pub token: u32,
    pub confidence: f32,
}

impl GreedyPick {
    /// The pick of one row of logits, on the host.
    pub fn of(row: &[f32]) -> Self {
        let mut best = 0;
        for (i, &v) in row.iter().enumerate() {
            if v > row[best] {
                best = i;
            }
        }
        Self {
            token: best as u32,
            confidence: 1.0 / crate::kernels::exp_sum(row, row[best]),
        }
    }
}

/// What a forward pass gives one sequence for its logit rows.
#[derive(Debug, Clone)]
pub enum StepOutput {
    Logits(candle_core::Tensor),
    Greedy(Vec<GreedyPick>),
}

impl StepOutput {
    /// The logits; an error for greedy picks (the step asked for them).
    pub fn into_logits(self) -> Result<candle_core::Tensor> {
        match self {
            StepOutput::Logits(t) => Ok(t),
            StepOutput::Greedy(_) => Err(Error::InvalidRequest(
                "the step asked for greedy picks, not logits".into(),
            )),
        }
    }
}

/// The rows of a pass as every backend lays them out: each sequence's computed tokens,
/// one sequence after another.
#[derive(Debug, Clone, Default)]
pub struct PassRows {
    /// Token and absolute position of each row.
    pub tokens: Vec<u32>,
    pub positions: Vec<usize>,
    /// Each sequence's first row.
    pub offsets: Vec<usize>,
    /// The rows that go through the head, sequence after sequence, and how many of them
    /// belong to each sequence.
    pub outputs: Vec<u32>,
    pub outputs_per_seq: Vec<usize>,
    /// What each sequence wants of its head rows.
    pub wanted: Vec<Wanted>,
}

impl PassRows {
    pub fn of(batch: &[SeqStep<'_>]) -> Self {
        let mut rows = PassRows::default();
        for step in batch {
            let offset = rows.tokens.len();
            rows.offsets.push(offset);
            for (token, position) in step.computed() {
                rows.tokens.push(token);
                rows.positions.push(position);
            }
            let wanted = step.logit_rows_computed();
            rows.outputs
                .extend(wanted.iter().map(|&r| (offset + r) as u32));
            rows.outputs_per_seq.push(wanted.len());
            rows.wanted.push(step.wanted);
        }
        rows
    }
}

/// One sequence's share of a forward pass.
pub struct SeqStep<'a> {
    /// Tokens at positions `start..start + tokens.len()`.
    pub tokens: &'a [u32],
    /// Absolute position of `tokens[0]`; must equal `cache.len()`.
    pub start: usize,
    /// Block length of the block-causal mask among `tokens`.
    pub block_length: usize,
    /// The first `commit` tokens are final: their keys/values are appended to `cache`.
    pub commit: usize,
    /// Indices into `tokens` whose logits are wanted (may be empty).
    pub logit_rows: &'a [usize],
    /// Approximate block caching: only these rows of `tokens` (increasing, all in one
    /// block, a superset of `logit_rows`, with `commit == 0`) run through the model; the
    /// others keep the keys/values an earlier pass of this block wrote at their positions.
    /// `None`: every row (exact).
    pub compute: Option<&'a [usize]>,
    /// Logits, or only the greedy picks, of the logit rows.
    pub wanted: Wanted,
    pub cache: &'a mut KvCache,
}

impl SeqStep<'_> {
    /// The rows of `tokens` this step computes.
    pub(crate) fn computed_rows(&self) -> usize {
        self.compute.map_or(self.tokens.len(), <[usize]>::len)
    }

    /// The tokens this step computes with their positions, in order.
    pub(crate) fn computed(&self) -> Vec<(u32, usize)> {
        match self.compute {
            Some(rows) => rows
                .iter()
                .map(|&r| (self.tokens[r], self.start + r))
                .collect(),
            None => self
                .tokens
                .iter()
                .enumerate()
                .map(|(r, &t)| (t, self.start + r))
                .collect(),
        }
    }

    /// Where each logit row lies among the computed rows.
    pub(crate) fn logit_rows_computed(&self) -> Vec<usize> {
        match self.compute {
            Some(rows) => self
                .logit_rows
                .iter()
                .map(|r| rows.binary_search(r).unwrap_or(0))
                .collect(),
            None => self.logit_rows.to_vec(),
        }
    }

    /// Refuses a step the model cannot run: tokens outside the vocabulary, positions past
    /// the context, a start that is not where the cache ends, an inconsistent partial
    /// pass.
    pub(crate) fn check(&self, vocab: usize, max_positions: usize) -> Result<()> {
        if let Some(&id) = self.tokens.iter().find(|&&id| id as usize >= vocab) {
            return Err(Error::TokenOutOfRange { id, vocab });
        }
        let bad = |msg: String| Err(Error::InvalidRequest(msg));
        if self.tokens.is_empty() {
            return bad("a forward step needs at least one token".into());
        }
        if self.block_length == 0 {
            return bad("block length must be positive".into());
        }
        if self.start != self.cache.len() {
            return bad(format!(
                "step starts at position {} but the cache holds {} positions",
                self.start,
                self.cache.len()
            ));
        }
        if self.commit > self.tokens.len() {
            return bad("cannot commit more tokens than the step has".into());
        }
        if self.logit_rows.iter().any(|&r| r >= self.tokens.len()) {
            return bad("logit row outside the step".into());
        }
        if let Some(rows) = self.compute {
            if rows.is_empty()
                || rows.windows(2).any(|w| w[0] >= w[1])
                || rows.last().is_some_and(|&r| r >= self.tokens.len())
            {
                return bad("a partial pass needs increasing rows inside the step".into());
            }
            if self.commit > 0 || !self.in_one_block() {
                return bad("a partial pass covers one block and commits nothing".into());
            }
            if self
                .logit_rows
                .iter()
                .any(|r| rows.binary_search(r).is_err())
            {
                return bad("a partial pass gives logits of computed rows only".into());
            }
        }
        let end = self.start + self.tokens.len();
        if end > max_positions {
            return bad(format!(
                "positions up to {end} exceed max_position_embeddings {max_positions}"
            ));
        }
        Ok(())
    }

    fn in_one_block(&self) -> bool {
        let b = self.block_length;
        self.start / b == (self.start + self.tokens.len() - 1) / b
    }

    /// The block-causal mask of this step (`None` when the tokens lie in one block:
    /// nothing to hide, the cache holds only earlier, fully visible blocks).
    pub(crate) fn block_mask(&self) -> Option<BlockMask> {
        (!self.in_one_block()).then(|| {
            BlockMask::new(
                self.start,
                self.block_length,
                self.cache.len(),
                self.tokens.len(),
            )
        })
    }
}

/// The additive block-causal mask of a step that spans blocks, built for the query rows
/// a piece of attention needs (a long prefill never holds all of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BlockMask {
    start: usize,
    block_length: usize,
    cached: usize,
    len: usize,
}

impl BlockMask {
    /// The mask of `len` tokens from position `start` over `cached` cached positions,
    /// blocks of `block_length`.
    pub(crate) fn new(start: usize, block_length: usize, cached: usize, len: usize) -> Self {
        Self {
            start,
            block_length,
            cached,
            len,
        }
    }

    /// Rows `from..from + n` of the mask `[tokens, cache + tokens]` (0 visible, -inf
    /// hidden), row-major.
    pub(crate) fn rows(&self, from: usize, n: usize) -> Vec<f32> {
        let b = self.block_length;
        let keys = self.cached + self.len;
        let mut mask = Vec::with_capacity(n * keys);
        for i in from..from + n {
            let query_block = (self.start + i) / b;
            mask.extend(std::iter::repeat_n(0.0, self.cached));
            mask.extend((0..self.len).map(|j| {
                if (self.start + j) / b <= query_block {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            }));
        }
        mask
    }

    pub(crate) fn keys(&self) -> usize {
        self.cached + self.len
    }
}
