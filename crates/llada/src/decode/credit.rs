//! dInfer's credit decoder (`CreditThresholdParallelDecoder`): each masked position keeps
//! a credit per token that came out on top there, p_top1^gamma added each step and all
//! credit decayed by beta per step; the logits a token is picked from are
//! logits + alpha * ln(1 + credit). Positions are then filled by dInfer's threshold with
//! progress: every one at or above min(threshold, best - 1e-5). The mask token is never
//! proposed. Credit lives for one block.

use std::collections::HashMap;

use super::{progress_fill, Candidate, Decoder, Selection, StepInfo};
use crate::kernels::exp_sum;

#[derive(Debug, Clone)]
pub struct Credit {
    threshold: f32,
    alpha: f32,
    gamma: f32,
    beta: f32,
    mask_id: u32,
    /// Per block offset: token -> credit.
    credit: HashMap<usize, HashMap<u32, f32>>,
    steps: usize,
}

impl Credit {
    pub fn new(threshold: f32, alpha: f32, gamma: f32, beta: f32, mask_id: u32) -> Self {
        Self {
            threshold,
            alpha,
            gamma,
            beta,
            mask_id,
            credit: HashMap::new(),
            steps: 0,
        }
    }
}

impl Decoder for Credit {
    fn begin_block(&mut self) {
        self.credit.clear();
        self.steps = 0;
    }

    fn begin_step(&mut self) {
        if self.steps > 0 {
            for tokens in self.credit.values_mut() {
                tokens.values_mut().for_each(|c| *c *= self.beta);
            }
        }
        self.steps += 1;
    }

    fn adjusts_logits(&self) -> bool {
        true
    }

    fn adjust_logits(&mut self, offset: usize, masked: bool, logits: &mut [f32]) {
        if masked {
            // The top token of the unfused logits earns credit.
            let (top, &max) =
                logits
                    .iter()
                    .enumerate()
                    .fold((0, &f32::NEG_INFINITY), |best, (i, v)| {
                        if v > best.1 {
                            (i, v)
                        } else {
                            best
                        }
                    });
            let p_top = 1.0 / exp_sum(logits, max);
            *self
                .credit
                .entry(offset)
                .or_default()
                .entry(top as u32)
                .or_default() += p_top.powf(self.gamma);
        }
        if let Some(tokens) = self.credit.get(&offset) {
            for (&token, &c) in tokens {
                logits[token as usize] += self.alpha * c.ln_1p();
            }
        }
        if let Some(l) = logits.get_mut(self.mask_id as usize) {
            *l = f32::NEG_INFINITY;
        }
    }

    fn select(&mut self, _info: StepInfo, candidates: &[Candidate]) -> Selection {
        Selection {
            fill: progress_fill(self.threshold, candidates, self.mask_id),
            edit: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credit_accumulates_on_the_top_token_and_decays() {
        let mut d = Credit::new(0.9, 0.7, 0.2, 0.8, 3);
        d.begin_block();
        d.begin_step();
        let mut row = vec![2.0, 0.0, 0.0, 5.0];
        d.adjust_logits(0, true, &mut row);
        // The mask token (3) is never proposed; token 3 was the top, so it got the credit.
        assert_eq!(row[3], f32::NEG_INFINITY);
        assert_eq!(row[0], 2.0);
        let credit = d.credit[&0][&3];
        let p_top = 5f32.exp() / (2f32.exp() + 2.0 + 5f32.exp());
        assert!((credit - p_top.powf(0.2)).abs() < 1e-5);
        d.begin_step();
        assert!((d.credit[&0][&3] - 0.8 * credit).abs() < 1e-6);
        // A second step on a row whose top is token 0 boosts token 0 by alpha ln(1 + c).
        let mut row = vec![1.0, 0.5, 0.0, -9.0];
        d.adjust_logits(0, true, &mut row);
        let c0 = d.credit[&0][&0];
        assert!((row[0] - (1.0 + 0.7 * c0.ln_1p())).abs() < 1e-6);
        d.begin_block();
        assert!(d.credit.is_empty());
    }
}
