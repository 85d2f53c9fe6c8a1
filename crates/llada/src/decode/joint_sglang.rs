//! SGLang's LLaDA2.1 `JointThreshold`, the rule users of the official server get: every
//! mask above `threshold` is filled, else the single most confident one (no step
//! schedule); in the same step, every decoded non-prompt position whose proposal differs
//! with probability above `edit_threshold` is rewritten (the proposal may be the mask).
//! Once no mask is left, each step counts as a post-edit step and the block ends after
//! `max_post_edit_steps` of them, or at the first step that selects nothing. A block gets
//! at most `block_length + max_post_edit_steps + 1` steps; one that uses them all gets
//! one more forward and is emitted as it stands. `penalty_lambda` lowers, at each
//! position, the logit of the token before it (repeat penalty).

use super::rewrite::{most_confident, BlockStep, Verdict};
use super::{Candidate, Decoder, Selection, StepInfo};

#[derive(Debug, Clone)]
pub struct JointSglang {
    threshold: f32,
    edit_threshold: f32,
    max_post_steps: usize,
    penalty_lambda: f32,
    mask_id: u32,
    /// Steps taken in the current block, and post-edit steps among them.
    steps: usize,
    post_steps: usize,
}

impl JointSglang {
    pub fn new(
        threshold: f32,
        edit_threshold: f32,
        max_post_steps: usize,
        penalty_lambda: f32,
        mask_id: u32,
    ) -> Self {
        Self {
            threshold,
            edit_threshold,
            max_post_steps,
            penalty_lambda,
            mask_id,
            steps: 0,
            post_steps: 0,
        }
    }
}

impl Decoder for JointSglang {
    fn edits(&self) -> bool {
        true
    }

    fn rewrites_blocks(&self) -> bool {
        true
    }

    fn begin_block(&mut self) {
        self.steps = 0;
        self.post_steps = 0;
    }

    /// Not asked: the block loop calls [`Decoder::rewrite`] for this decoder.
    fn select(&mut self, _info: StepInfo, _candidates: &[Candidate]) -> Selection {
        Selection::default()
    }

    fn rewrite(&mut self, s: &mut BlockStep<'_>) -> Verdict {
        let len = s.tokens.len();
        self.steps += 1;
        if self.penalty_lambda > 0.0 {
            for j in s.prompt.max(1)..len {
                let before = s.tokens[j - 1] as usize;
                s.row_mut(j)[before] -= self.penalty_lambda;
            }
        }
        let proposals = s.proposals();
        let mask = self.mask_id;
        let masked: Vec<(usize, f32)> = proposals
            .iter()
            .filter(|&&(i, _, _)| s.tokens[i] == mask)
            .map(|&(i, _, p)| (i, p))
            .collect();
        let mut fill: Vec<usize> = Vec::new();
        if masked.is_empty() {
            self.post_steps += 1;
            if self.post_steps > self.max_post_steps {
                return Verdict::Done;
            }
        } else {
            fill = masked
                .iter()
                .filter(|&&(_, p)| p > self.threshold)
                .map(|&(i, _)| i)
                .collect();
            if fill.is_empty() {
                fill.extend(most_confident(&masked));
            }
        }
        let edit: Vec<usize> = proposals
            .iter()
            .filter(|&&(i, x, p)| {
                s.tokens[i] != mask && p > self.edit_threshold && x != s.tokens[i]
            })
            .map(|&(i, _, _)| i)
            .collect();
        if fill.is_empty() && edit.is_empty() {
            return Verdict::Done;
        }
        let token_at = |i: usize| proposals[i - s.prompt].1;
        s.counts.fills += fill.len();
        s.counts.substitutions += edit.len();
        for &i in fill.iter().chain(&edit) {
            s.tokens[i] = token_at(i);
        }
        let max_steps = len + self.max_post_steps + 1;
        if self.steps >= max_steps {
            return Verdict::DoneAfterForward;
        }
        Verdict::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::super::rewrite::EditCounts;
    use super::*;

    const MASK: u32 = 9;

    /// Runs one step on `tokens` (prompt positions first) with logits that give each
    /// position after the prompt the `(token, logit)` peaks listed for it.
    fn step(
        d: &mut JointSglang,
        tokens: &mut [u32],
        prompt: usize,
        peaks: &[&[(u32, f32)]],
    ) -> (Verdict, EditCounts) {
        let vocab = 10;
        let mut logits = vec![0.0f32; (tokens.len() - prompt) * vocab];
        for (r, row) in peaks.iter().enumerate() {
            for &(t, l) in *row {
                logits[r * vocab + t as usize] = l;
            }
        }
        let mut counts = EditCounts::default();
        let mut pick = |row: &[f32]| {
            let g = crate::step::GreedyPick::of(row);
            (g.token, g.confidence)
        };
        let mut s = BlockStep {
            tokens,
            prompt,
            logits: &mut logits,
            vocab,
            pick: &mut pick,
            counts: &mut counts,
        };
        let v = d.rewrite(&mut s);
        (v, counts)
    }

    #[test]
    fn fills_above_the_threshold_or_the_single_best_and_edits_alongside() {
        let mut d = JointSglang::new(0.5, 0.0, 16, 0.0, MASK);
        let mut tokens = [1, MASK, MASK, 4];
        // Position 1: weak; position 2: weaker; position 3 proposes 5 over its 4.
        let (v, c) = step(
            &mut d,
            &mut tokens,
            1,
            &[&[(2, 1.0)], &[(3, 0.5)], &[(5, 8.0)]],
        );
        assert_eq!(v, Verdict::Continue);
        assert_eq!(
            tokens,
            [1, 2, MASK, 5],
            "top-1 fallback, edit in the same step"
        );
        assert_eq!((c.fills, c.substitutions), (1, 1));
    }

    #[test]
    fn post_edit_steps_end_the_block_and_a_quiet_step_ends_it_at_once() {
        let mut d = JointSglang::new(0.5, 0.9, 1, 0.0, MASK);
        let mut tokens = [1, 2];
        // No mask: post step 1 edits (p ~ 1 > 0.9), post step 2 exceeds the budget.
        let (v, _) = step(&mut d, &mut tokens, 0, &[&[(3, 20.0)], &[(2, 20.0)]]);
        assert_eq!((v, tokens), (Verdict::Continue, [3, 2]));
        let (v, _) = step(&mut d, &mut tokens, 0, &[&[(4, 20.0)], &[(2, 20.0)]]);
        assert_eq!((v, tokens), (Verdict::Done, [3, 2]));
        d.begin_block();
        let (v, _) = step(&mut d, &mut tokens, 0, &[&[(3, 20.0)], &[(2, 20.0)]]);
        assert_eq!(v, Verdict::Done, "nothing selected");
    }

    #[test]
    fn the_penalty_lowers_the_previous_token_and_the_cap_adds_a_forward() {
        let mut d = JointSglang::new(0.0, 1.0, 0, 5.0, MASK);
        let mut tokens = [7, MASK];
        // Without the penalty position 1 would repeat 7.
        let (v, _) = step(&mut d, &mut tokens, 1, &[&[(7, 3.0), (6, 2.0)]]);
        assert_eq!(tokens, [7, 6]);
        assert_eq!(v, Verdict::Continue);
        let mut d = JointSglang::new(0.99, 1.0, 0, 0.0, MASK);
        let mut tokens = [MASK];
        // The mask keeps proposing the mask: the step budget (1 + 0 + 1) runs out.
        let (v, _) = step(&mut d, &mut tokens, 0, &[&[(MASK, 1.0)]]);
        assert_eq!(v, Verdict::Continue);
        let (v, _) = step(&mut d, &mut tokens, 0, &[&[(MASK, 1.0)]]);
        assert_eq!(v, Verdict::DoneAfterForward);
    }
}
