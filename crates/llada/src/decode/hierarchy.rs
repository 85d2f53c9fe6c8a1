//! dInfer's hierarchy decoder (`HierarchyDecoder`): in each contiguous run of masked
//! positions, the most confident one is filled if its confidence exceeds
//! `low_threshold`; every position above `threshold` is filled; and the block's most
//! confident masked position always is, so every step makes progress. The mask token is
//! never proposed.

use super::{Candidate, Decoder, Selection, StepInfo};

#[derive(Debug, Clone, Copy)]
pub struct Hierarchy {
    threshold: f32,
    low_threshold: f32,
    mask_id: u32,
}

impl Hierarchy {
    pub fn new(threshold: f32, low_threshold: f32, mask_id: u32) -> Self {
        Self {
            threshold,
            low_threshold,
            mask_id,
        }
    }
}

impl Decoder for Hierarchy {
    fn adjusts_logits(&self) -> bool {
        true
    }

    fn adjust_logits(&mut self, _offset: usize, _masked: bool, logits: &mut [f32]) {
        if let Some(l) = logits.get_mut(self.mask_id as usize) {
            *l = f32::NEG_INFINITY;
        }
    }

    fn select(&mut self, _info: StepInfo, candidates: &[Candidate]) -> Selection {
        // Candidates are in block order; a run is a stretch of adjacent masked offsets.
        let masked: Vec<usize> = (0..candidates.len())
            .filter(|&i| candidates[i].is_masked())
            .collect();
        let mut fill = vec![false; candidates.len()];
        let mut run: Vec<usize> = Vec::new();
        let close_run = |run: &mut Vec<usize>, fill: &mut Vec<bool>| {
            let best = run.iter().copied().max_by(|&a, &b| {
                candidates[a]
                    .confidence
                    .total_cmp(&candidates[b].confidence)
                    .then(b.cmp(&a))
            });
            if let Some(b) = best {
                if candidates[b].confidence > self.low_threshold {
                    fill[b] = true;
                }
            }
            run.clear();
        };
        for &i in &masked {
            if let Some(&last) = run.last() {
                if candidates[i].offset != candidates[last].offset + 1 {
                    close_run(&mut run, &mut fill);
                }
            }
            run.push(i);
        }
        close_run(&mut run, &mut fill);
        for &i in &masked {
            if candidates[i].confidence > self.threshold {
                fill[i] = true;
            }
        }
        if let Some(top) = masked.iter().copied().max_by(|&a, &b| {
            candidates[a]
                .confidence
                .total_cmp(&candidates[b].confidence)
                .then(b.cmp(&a))
        }) {
            fill[top] = true;
        }
        Selection {
            fill: (0..candidates.len())
                .filter(|&i| fill[i] && candidates[i].token != self.mask_id)
                .collect(),
            edit: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::masked;
    use super::*;

    #[test]
    fn fills_the_best_of_each_run_above_the_low_threshold() {
        let mut c = masked(&[0.5, 0.6, 0.1, 0.3, 0.35, 0.95]);
        // Runs: offsets 0-1, then 3-5 (offset 2 is decoded).
        c[2].current = Some(9);
        let mut d = Hierarchy::new(0.9, 0.4, 7);
        let info = StepInfo {
            step: 0,
            scheduled: 0,
            post_step: 0,
        };
        // Run 0-1: best 0.6 > 0.4; run 3-5: best 0.95 (also above 0.9; the global top).
        assert_eq!(d.select(info, &c).fill, vec![1, 5]);
        // Nothing above the low threshold: the global top alone.
        let c = masked(&[0.1, 0.2, 0.15]);
        assert_eq!(d.select(info, &c).fill, vec![1]);
    }
}
