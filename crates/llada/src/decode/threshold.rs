//! The reference rule of LLaDA2.0's `generate`: accept every candidate whose confidence
//! exceeds the threshold; if fewer than the step's scheduled count do, accept the most
//! confident ones up to that count instead.

use super::{Candidate, Decoder, StepInfo};

#[derive(Debug, Clone, Copy)]
pub struct Threshold {
    threshold: f32,
}

impl Threshold {
    pub fn new(threshold: f32) -> Self {
        Self { threshold }
    }
}

impl Decoder for Threshold {
    fn select(&mut self, info: StepInfo, candidates: &[Candidate]) -> Vec<usize> {
        let confident: Vec<usize> = (0..candidates.len())
            .filter(|&i| candidates[i].confidence > self.threshold)
            .collect();
        if confident.len() >= info.scheduled {
            return confident;
        }
        let mut order: Vec<usize> = (0..candidates.len()).collect();
        order.sort_by(|&a, &b| {
            candidates[b]
                .confidence
                .total_cmp(&candidates[a].confidence)
                .then(a.cmp(&b))
        });
        order.truncate(info.scheduled);
        order
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cands(conf: &[f32]) -> Vec<Candidate> {
        conf.iter()
            .enumerate()
            .map(|(i, &c)| Candidate {
                offset: i,
                token: i as u32,
                confidence: c,
            })
            .collect()
    }

    #[test]
    fn accepts_all_confident_positions_when_enough() {
        let mut d = Threshold::new(0.9);
        let info = StepInfo {
            step: 0,
            scheduled: 1,
        };
        assert_eq!(d.select(info, &cands(&[0.95, 0.2, 0.99])), vec![0, 2]);
    }

    #[test]
    fn falls_back_to_the_scheduled_top_k() {
        let mut d = Threshold::new(0.9);
        let info = StepInfo {
            step: 0,
            scheduled: 2,
        };
        assert_eq!(d.select(info, &cands(&[0.5, 0.95, 0.7])), vec![1, 2]);
    }

    #[test]
    fn threshold_is_strict() {
        let mut d = Threshold::new(0.5);
        let info = StepInfo {
            step: 0,
            scheduled: 0,
        };
        assert!(d.select(info, &cands(&[0.5])).is_empty());
    }
}
