//! The reference rule of LLaDA2.0's `generate`: accept every masked position whose
//! confidence exceeds the threshold; if fewer than the step's scheduled count do, accept
//! the most confident ones up to that count instead.

use super::{reference_fill, Candidate, Decoder, Selection, StepInfo};

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
    fn select(&mut self, info: StepInfo, candidates: &[Candidate]) -> Selection {
        Selection {
            fill: reference_fill(self.threshold, info.scheduled, candidates),
            edit: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::masked;
    use super::*;

    fn info(scheduled: usize) -> StepInfo {
        StepInfo {
            step: 0,
            scheduled,
            post_step: 0,
        }
    }

    #[test]
    fn accepts_all_confident_positions_when_enough() {
        let mut d = Threshold::new(0.9);
        let s = d.select(info(1), &masked(&[0.95, 0.2, 0.99]));
        assert_eq!(s.fill, vec![0, 2]);
        assert!(s.edit.is_empty());
    }

    #[test]
    fn falls_back_to_the_scheduled_top_k() {
        let mut d = Threshold::new(0.9);
        assert_eq!(
            d.select(info(2), &masked(&[0.5, 0.95, 0.7])).fill,
            vec![1, 2]
        );
    }

    #[test]
    fn threshold_is_strict() {
        let mut d = Threshold::new(0.5);
        assert!(d.select(info(0), &masked(&[0.5])).fill.is_empty());
    }
}
