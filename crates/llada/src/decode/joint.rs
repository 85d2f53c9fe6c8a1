//! LLaDA2.1 joint decoding (mask-to-token plus token-to-token editing), with the
//! semantics of diffusers' `BlockRefinementScheduler` + `LLaDA2Pipeline`: masked
//! positions are filled by the reference rule; every decoded, non-prompt position of the
//! current block whose proposed token differs from its token with probability above
//! `editing_threshold` is replaced, also while masks remain. After the last mask the block
//! stays open for refinement steps while they edit, at most `max_post_steps + 1` of them
//! (diffusers counts the step before comparing). `editing_threshold <= 0` turns editing
//! off, and the decoder is the reference rule at its own threshold.

use super::{reference_fill, Candidate, Decoder, Selection, StepInfo};

#[derive(Debug, Clone, Copy)]
pub struct Joint {
    threshold: f32,
    editing_threshold: f32,
    max_post_steps: usize,
}

impl Joint {
    pub fn new(threshold: f32, editing_threshold: f32, max_post_steps: usize) -> Self {
        Self {
            threshold,
            editing_threshold,
            max_post_steps,
        }
    }
}

impl Decoder for Joint {
    fn edits(&self) -> bool {
        self.editing_threshold > 0.0
    }

    fn select(&mut self, info: StepInfo, candidates: &[Candidate]) -> Selection {
        let fill = if info.post_step == 0 {
            reference_fill(self.threshold, info.scheduled, candidates)
        } else {
            Vec::new()
        };
        let edit = if self.edits() {
            (0..candidates.len())
                .filter(|&i| {
                    let c = &candidates[i];
                    c.current.is_some_and(|t| t != c.token) && c.confidence > self.editing_threshold
                })
                .collect()
        } else {
            Vec::new()
        };
        Selection { fill, edit }
    }

    fn keep_refining(&self, post_step: usize, edited: bool) -> bool {
        self.edits() && edited && post_step <= self.max_post_steps
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::masked;
    use super::*;

    fn decoded(token: u32, proposed: u32, confidence: f32, offset: usize) -> Candidate {
        Candidate {
            offset,
            token: proposed,
            confidence,
            current: Some(token),
        }
    }

    #[test]
    fn fills_by_the_reference_rule_and_edits_confident_changes() {
        let mut d = Joint::new(0.7, 0.5, 16);
        let mut c = masked(&[0.8, 0.1]);
        c.push(decoded(5, 6, 0.6, 2)); // different and confident: edited
        c.push(decoded(5, 5, 0.99, 3)); // the same token: nothing to do
        c.push(decoded(5, 7, 0.4, 4)); // not confident enough
        let info = StepInfo {
            step: 0,
            scheduled: 1,
            post_step: 0,
        };
        let s = d.select(info, &c);
        assert_eq!(s.fill, vec![0]);
        assert_eq!(s.edit, vec![2]);
    }

    #[test]
    fn refinement_goes_on_while_it_edits_and_post_steps_remain() {
        let d = Joint::new(0.7, 0.5, 2);
        assert!(d.keep_refining(1, true));
        assert!(d.keep_refining(2, true));
        assert!(!d.keep_refining(3, true));
        assert!(!d.keep_refining(1, false));
        let off = Joint::new(0.7, 0.0, 16);
        assert!(!off.edits() && !off.keep_refining(1, true));
        let mut off = off;
        let c = vec![decoded(5, 6, 0.99, 0)];
        let info = StepInfo {
            step: 0,
            scheduled: 0,
            post_step: 0,
        };
        assert!(off.select(info, &c).edit.is_empty());
    }
}
