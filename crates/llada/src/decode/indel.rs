//! SGLang's LLaDA2.2 `JointThresholdInDel`: joint decoding with Levenshtein edits. Besides
//! filling masks and replacing tokens, a position may be given DELETE (it is dropped) or
//! SPLIT (it becomes `[MASK, its token]`); the block is then rebuilt, truncated or padded
//! with new masks back to its length. Masks present when the block began ("original")
//! and masks made by edits ("new") are told apart: while original masks remain a step
//! fills at least one more than the new masks (so the block makes progress); a final
//! cleanup round fills every mask with an ordinary token; a step that would repeat an
//! earlier state of the block changes its least confident choice to a token not yet
//! written there (anti-loop). The rules are numbered as in `fixtures/golden/README.md`.
//! Only the active block is edited: committed blocks never change.

use std::collections::{HashMap, HashSet};

use super::rewrite::{argmax_excluding, BlockStep, Verdict};
use super::{Candidate, Decoder, Selection, StepInfo};

/// The special tokens of Levenshtein editing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EditTokens {
    pub mask: u32,
    pub delete: u32,
    pub split: u32,
}

#[derive(Debug, Clone)]
pub struct Indel {
    threshold: f32,
    edit_threshold: f32,
    max_post_steps: usize,
    ids: EditTokens,
    block: BlockState,
}

/// Per-block state.
#[derive(Debug, Clone, Default)]
struct BlockState {
    /// Whether each position holds an original mask's place (set at the first step).
    original: Vec<bool>,
    /// Steps taken, post-edit steps (no original mask left), and updates (rule 2).
    steps: usize,
    post: usize,
    updates: usize,
    /// The block's states before each step (anti-loop), and the tokens written at each
    /// position.
    seen: HashSet<Vec<u32>>,
    history: HashMap<usize, Vec<u32>>,
}

impl Indel {
    pub fn new(
        threshold: f32,
        edit_threshold: f32,
        max_post_steps: usize,
        ids: EditTokens,
    ) -> Self {
        Self {
            threshold,
            edit_threshold,
            max_post_steps,
            ids,
            block: BlockState::default(),
        }
    }

    fn is_special(&self, token: u32) -> bool {
        let ids = self.ids;
        token == ids.mask || token == ids.delete || token == ids.split
    }

    /// Rule 11's rebuild after a DELETE or SPLIT was written: `old` is the block before
    /// this step's writes.
    fn rebuild(&mut self, tokens: &mut [u32], prompt: usize, old: &[u32]) {
        let ids = self.ids;
        let mut out: Vec<u32> = tokens[..prompt].to_vec();
        let mut bits: Vec<bool> = self.block.original[..prompt].to_vec();
        for i in prompt..tokens.len() {
            let bit = self.block.original[i];
            match tokens[i] {
                t if t == ids.delete => {}
                t if t == ids.split => {
                    out.extend([ids.mask, old[i]]);
                    bits.extend([false, bit]);
                }
                t => {
                    out.push(t);
                    bits.push(bit);
                }
            }
        }
        out.resize(tokens.len(), ids.mask);
        bits.resize(tokens.len(), false);
        tokens.copy_from_slice(&out);
        self.block.original = bits;
    }
}

impl Decoder for Indel {
    fn edits(&self) -> bool {
        true
    }

    fn rewrites_blocks(&self) -> bool {
        true
    }

    fn begin_block(&mut self) {
        self.block = BlockState::default();
    }

    /// Not asked: the block loop calls [`Decoder::rewrite`] for this decoder.
    fn select(&mut self, _info: StepInfo, _candidates: &[Candidate]) -> Selection {
        Selection::default()
    }

    fn rewrite(&mut self, s: &mut BlockStep<'_>) -> Verdict {
        let (len, prompt, mask) = (s.tokens.len(), s.prompt, self.ids.mask);
        let max_post = self.max_post_steps;
        if self.block.original.is_empty() {
            self.block.original = (0..len)
                .map(|i| i >= prompt && s.tokens[i] == mask)
                .collect();
        }
        let b = &mut self.block;
        b.steps += 1;
        // Rule 2.
        b.updates += 1;
        let is_original = |i: usize, tokens: &[u32]| tokens[i] == mask && b.original[i];
        let originals = (prompt..len).filter(|&i| is_original(i, s.tokens)).count();
        if originals == 0 {
            b.post += 1;
        }
        // Rule 3.
        let mut cleanup = (max_post > 0 && b.post >= max_post)
            || (max_post == 0 && originals == 0)
            || b.updates > len + max_post;
        let mut proposals: Vec<(u32, f32)> =
            s.proposals().into_iter().map(|(_, x, p)| (x, p)).collect();
        let at = |i: usize| i - prompt;
        // Rule 4: an original mask may not stay a mask.
        if !cleanup {
            for i in prompt..len {
                if is_original(i, s.tokens) && proposals[at(i)].0 == mask {
                    proposals[at(i)] = argmax_excluding(s.row(i), &[mask]);
                }
            }
        }
        // Rule 5: which masks to fill.
        let masks: Vec<usize> = (prompt..len).filter(|&i| s.tokens[i] == mask).collect();
        let mut fill: Vec<usize> = if masks.is_empty() {
            Vec::new()
        } else if cleanup || originals == 0 {
            masks.clone()
        } else {
            let need = 1 + (masks.len() - originals);
            let confident: Vec<usize> = masks
                .iter()
                .copied()
                .filter(|&i| proposals[at(i)].1 > self.threshold)
                .collect();
            if confident.len() >= need {
                confident
            } else {
                let mut order = masks.clone();
                order.sort_by(|&x, &y| proposals[at(y)].1.total_cmp(&proposals[at(x)].1));
                order.truncate(need.min(masks.len()));
                order.sort_unstable();
                order
            }
        };
        // Rule 6.
        if max_post == 0 && originals > 0 && fill.len() == masks.len() {
            cleanup = true;
            fill = masks.clone();
        }
        // Rule 7: edits of decoded positions (to DELETE or SPLIT too).
        let edit = (prompt..len).filter(|&i| {
            let (x, p) = proposals[at(i)];
            s.tokens[i] != mask && p > self.edit_threshold && x != s.tokens[i]
        });
        let mut selected: Vec<usize> = fill.into_iter().chain(edit).collect();
        selected.sort_unstable();
        // Rule 8.
        if selected.is_empty() {
            return Verdict::Done;
        }
        if cleanup {
            // Rule 9: the last round writes ordinary tokens only.
            let specials = [mask, self.ids.delete, self.ids.split];
            for &i in &selected {
                if self.is_special(proposals[at(i)].0) {
                    proposals[at(i)] = argmax_excluding(s.row(i), &specials);
                }
            }
        } else {
            // Rule 10: a state seen before would loop; change the least confident change.
            let b = &mut self.block;
            let state = s.tokens.to_vec();
            if b.seen.contains(&state) {
                let mut least: Option<usize> = None;
                for &i in &selected {
                    let (x, p) = proposals[at(i)];
                    if x != s.tokens[i] && least.is_none_or(|l| p < proposals[at(l)].1) {
                        least = Some(i);
                    }
                }
                if let Some(i) = least {
                    let mut excluded = b.history.get(&i).cloned().unwrap_or_default();
                    if s.tokens[i] == mask && b.original[i] {
                        excluded.push(mask);
                    }
                    proposals[at(i)] = argmax_excluding(s.row(i), &excluded);
                }
            }
            b.seen.insert(state);
        }
        // Rule 11: write, count, rebuild after DELETE/SPLIT.
        let old = s.tokens.to_vec();
        let mut changed = false;
        let mut moves = false;
        for &i in &selected {
            let x = proposals[at(i)].0;
            self.block.history.entry(i).or_default().push(x);
            changed |= x != old[i];
            if x == self.ids.delete {
                s.counts.deletes += 1;
                moves = true;
            } else if x == self.ids.split {
                s.counts.splits += 1;
                moves = true;
            } else if x != mask && old[i] == mask {
                s.counts.fills += 1;
            } else if x != mask && x != old[i] {
                s.counts.substitutions += 1;
            }
            s.tokens[i] = x;
        }
        if moves {
            self.rebuild(s.tokens, prompt, &old);
        }
        // Rule 12.
        if cleanup {
            return if changed {
                Verdict::DoneAfterForward
            } else {
                Verdict::Done
            };
        }
        if self.block.steps >= len + max_post + 2 {
            return Verdict::DoneAfterForward;
        }
        Verdict::Continue
    }
}
