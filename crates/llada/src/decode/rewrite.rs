//! What SGLang-style decoders (`joint-sglang`, `indel`) work with: they see the whole
//! current block and its logits each step and rewrite the block themselves (Levenshtein
//! editing moves tokens), and they say when the block is done, following SGLang's loop:
//! forward; then up to a step budget {step; stop if done; forward}.

use crate::step::GreedyPick;

/// One step of a block-rewriting decoder.
pub struct BlockStep<'a> {
    /// The block's tokens, prompt positions first; rewritten in place (its length stays).
    pub tokens: &'a mut [u32],
    /// How many leading positions of the block hold the prompt (never written).
    pub prompt: usize,
    /// Logits of the positions after the prompt, `[tokens.len() - prompt, vocab]`, given
    /// everything before this step's writes. A decoder may change them (penalties).
    pub logits: &'a mut [f32],
    pub vocab: usize,
    /// The proposal of a row: its token and that token's probability (the sampler's
    /// pick; greedy: argmax and softmax probability).
    pub pick: &'a mut dyn FnMut(&[f32]) -> (u32, f32),
    /// What the step wrote, added up over the generation.
    pub counts: &'a mut EditCounts,
}

impl BlockStep<'_> {
    /// The logits row of block position `i` (at or after the prompt).
    pub fn row(&self, i: usize) -> &[f32] {
        let r = i - self.prompt;
        &self.logits[r * self.vocab..(r + 1) * self.vocab]
    }

    pub fn row_mut(&mut self, i: usize) -> &mut [f32] {
        let r = i - self.prompt;
        &mut self.logits[r * self.vocab..(r + 1) * self.vocab]
    }

    /// Every position's proposal after the prompt: `(position, token, probability)`.
    pub fn proposals(&mut self) -> Vec<(usize, u32, f32)> {
        (self.prompt..self.tokens.len())
            .map(|i| {
                let r = i - self.prompt;
                let row = &self.logits[r * self.vocab..(r + 1) * self.vocab];
                let (token, p) = (self.pick)(row);
                (i, token, p)
            })
            .collect()
    }
}

/// What a rewriting step says of its block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Another forward, then another step.
    Continue,
    /// The block is finished as it stands, without another forward.
    Done,
    /// The block is finished, after one more forward that only stores its final tokens'
    /// keys/values (SGLang runs it; it is counted).
    DoneAfterForward,
}

/// Tokens written by rewriting decoders, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct EditCounts {
    /// Ordinary tokens written at masks.
    pub fills: usize,
    /// Ordinary tokens written over a different decoded token.
    pub substitutions: usize,
    /// DELETE tokens written (the position is dropped).
    pub deletes: usize,
    /// SPLIT tokens written (the position becomes `[MASK, token]`).
    pub splits: usize,
}

/// The argmax of `row` among tokens not in `excluded` ("first" on ties) and its
/// probability under the whole row's softmax.
pub fn argmax_excluding(row: &[f32], excluded: &[u32]) -> (u32, f32) {
    let mut best: Option<usize> = None;
    for (i, &v) in row.iter().enumerate() {
        if excluded.contains(&(i as u32)) {
            continue;
        }
        if best.is_none_or(|b| v > row[b]) {
            best = Some(i);
        }
    }
    let best = best.unwrap_or(0);
    let max = GreedyPick::of(row);
    let top = row[max.token as usize];
    // p(best) = exp(l_best - top) / Σ exp(l - top) = exp(l_best - top) * p(top).
    (best as u32, (row[best] - top).exp() * max.confidence)
}

/// The position among `candidates` with the largest probability, the first on ties.
pub fn most_confident(candidates: &[(usize, f32)]) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for &(i, p) in candidates {
        if best.is_none_or(|(_, bp)| p > bp) {
            best = Some((i, p));
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_excluding_skips_tokens_and_keeps_the_whole_softmax() {
        let row = [1.0f32, 3.0, 2.0, 3.0];
        let (t, p) = argmax_excluding(&row, &[]);
        assert_eq!(t, 1);
        let z: f32 = row.iter().map(|l| l.exp()).sum();
        assert!((p - 3f32.exp() / z).abs() < 1e-6);
        let (t, p) = argmax_excluding(&row, &[1, 3]);
        assert_eq!(t, 2);
        assert!((p - 2f32.exp() / z).abs() < 1e-6);
    }

    #[test]
    fn most_confident_takes_the_first_on_ties() {
        assert_eq!(most_confident(&[(3, 0.5), (5, 0.7), (6, 0.7)]), Some(5));
        assert_eq!(most_confident(&[]), None);
    }
}
