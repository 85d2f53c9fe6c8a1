//! Schedules of a training run: the Warmup-Stable-Decay *block size* schedule that
//! converts an autoregressive model into a block-diffusion one, and learning rates.

use serde::{Deserialize, Serialize};

/// Block size over training steps (LLaDA2.0's conversion): warmup through increasing
/// block sizes (e.g. 1 → 4 → 32 → 64 → seq_len), stable at the sequence length (plain
/// masked diffusion), then decay back down to the target block (e.g. 32).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WsdBlockSchedule {
    /// Block sizes of the warmup phases, in order, each held `warmup_steps_each` steps.
    pub warmup: Vec<usize>,
    pub warmup_steps_each: usize,
    /// The sequence length: the stable phase's block size.
    pub seq_len: usize,
    pub stable_steps: usize,
    /// Block sizes of the decay phases (ending at the target block).
    pub decay: Vec<usize>,
    pub decay_steps_each: usize,
}

impl WsdBlockSchedule {
    /// The reference shape for a sequence length and target block:
    /// warmup 1, 4, 32, 64 (those below `seq_len`), stable at `seq_len`, then halving
    /// down to `target`.
    pub fn standard(
        seq_len: usize,
        target: usize,
        warmup_each: usize,
        stable: usize,
        decay_each: usize,
    ) -> Self {
        let warmup = [1, 4, 32, 64]
            .into_iter()
            .filter(|&b| b < seq_len)
            .collect();
        let mut decay = Vec::new();
        let mut b = seq_len;
        while b / 2 > target {
            b /= 2;
            decay.push(b);
        }
        if target < seq_len {
            decay.push(target);
        }
        Self {
            warmup,
            warmup_steps_each: warmup_each,
            seq_len,
            stable_steps: stable,
            decay,
            decay_steps_each: decay_each,
        }
    }

    /// Checks that every phase has a block size in [1, seq_len] and the phases have
    /// steps; the error says what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.seq_len == 0 {
            return Err("block_schedule.seq_len must be at least 1".into());
        }
        for (phase, blocks) in [("warmup", &self.warmup), ("decay", &self.decay)] {
            if let Some(b) = blocks.iter().find(|&&b| b == 0 || b > self.seq_len) {
                return Err(format!(
                    "block_schedule.{phase} has block size {b}, outside [1, {}]",
                    self.seq_len
                ));
            }
        }
        if !self.warmup.is_empty() && self.warmup_steps_each == 0 {
            return Err("block_schedule.warmup_steps_each must be at least 1".into());
        }
        if !self.decay.is_empty() && self.decay_steps_each == 0 {
            return Err("block_schedule.decay_steps_each must be at least 1".into());
        }
        Ok(())
    }

    pub fn total_steps(&self) -> usize {
        self.warmup.len() * self.warmup_steps_each
            + self.stable_steps
            + self.decay.len() * self.decay_steps_each
    }

    /// Block size at `step` (past the end: the last decay block).
    pub fn block_at(&self, step: usize) -> usize {
        let warm = self.warmup.len() * self.warmup_steps_each;
        if step < warm {
            return self.warmup[step / self.warmup_steps_each.max(1)];
        }
        let step = step - warm;
        if step < self.stable_steps {
            return self.seq_len;
        }
        let step = step - self.stable_steps;
        match self.decay.len() {
            0 => self.seq_len,
            n => self.decay[(step / self.decay_steps_each.max(1)).min(n - 1)],
        }
    }
}

/// Learning rate over steps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LrSchedule {
    /// Linear warmup, then cosine decay to `min_lr` at `total` steps.
    Cosine {
        peak: f64,
        min_lr: f64,
        warmup: usize,
        total: usize,
    },
    /// Linear warmup, constant, then linear decay to `min_lr` over the last `decay` steps.
    Wsd {
        peak: f64,
        min_lr: f64,
        warmup: usize,
        total: usize,
        decay: usize,
    },
}

impl LrSchedule {
    /// (peak, min_lr, warmup, total, decay): decay is 0 for the cosine schedule.
    fn parts(&self) -> (f64, f64, usize, usize, usize) {
        match *self {
            LrSchedule::Cosine {
                peak,
                min_lr,
                warmup,
                total,
            } => (peak, min_lr, warmup, total, 0),
            LrSchedule::Wsd {
                peak,
                min_lr,
                warmup,
                total,
                decay,
            } => (peak, min_lr, warmup, total, decay),
        }
    }

    /// Checks the rates and step counts; the error says what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        let (peak, min_lr, warmup, total, decay) = self.parts();
        if !(peak.is_finite() && peak > 0.0) {
            return Err(format!(
                "lr.peak must be a finite number above 0, got {peak}"
            ));
        }
        if !(min_lr.is_finite() && (0.0..=peak).contains(&min_lr)) {
            return Err(format!(
                "lr.min_lr must be in [0, peak = {peak}], got {min_lr}"
            ));
        }
        if total == 0 || warmup > total || decay > total {
            return Err(format!(
                "lr: total ({total}) must be at least 1 and at least warmup ({warmup}) and decay ({decay})"
            ));
        }
        Ok(())
    }

    pub fn at(&self, step: usize) -> f64 {
        let (peak, min_lr, warmup, total, decay) = self.parts();
        if step < warmup {
            return peak * (step + 1) as f64 / warmup as f64;
        }
        match self {
            LrSchedule::Cosine { .. } => {
                let span = total.saturating_sub(warmup).max(1);
                let progress = ((step - warmup) as f64 / span as f64).min(1.0);
                min_lr + 0.5 * (peak - min_lr) * (1.0 + (std::f64::consts::PI * progress).cos())
            }
            LrSchedule::Wsd { .. } => {
                let decay_start = total.saturating_sub(decay);
                if step < decay_start {
                    return peak;
                }
                let progress = ((step - decay_start) as f64 / decay.max(1) as f64).min(1.0);
                peak + (min_lr - peak) * progress
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wsd_blocks_warm_up_hold_and_decay_to_the_target() {
        let s = WsdBlockSchedule::standard(256, 32, 10, 20, 5);
        assert_eq!(s.warmup, vec![1, 4, 32, 64]);
        assert_eq!(s.decay, vec![128, 64, 32]);
        assert_eq!(s.total_steps(), 40 + 20 + 15);
        let blocks: Vec<usize> = [0, 9, 10, 25, 39, 40, 59, 60, 65, 70, 74, 1000]
            .iter()
            .map(|&t| s.block_at(t))
            .collect();
        assert_eq!(blocks, [1, 1, 4, 32, 64, 256, 256, 128, 64, 32, 32, 32]);
    }

    #[test]
    fn short_sequences_skip_larger_warmup_blocks() {
        let s = WsdBlockSchedule::standard(32, 8, 1, 1, 1);
        assert_eq!(s.warmup, vec![1, 4]);
        assert_eq!(s.decay, vec![16, 8]);
    }

    #[test]
    fn learning_rates_warm_up_and_decay() {
        let c = LrSchedule::Cosine {
            peak: 1e-3,
            min_lr: 1e-5,
            warmup: 10,
            total: 110,
        };
        assert!((c.at(9) - 1e-3).abs() < 1e-12);
        assert!((c.at(60) - (1e-5 + 0.5 * (1e-3 - 1e-5))).abs() < 1e-9);
        assert!((c.at(110) - 1e-5).abs() < 1e-12);
        let w = LrSchedule::Wsd {
            peak: 1e-3,
            min_lr: 0.0,
            warmup: 10,
            total: 100,
            decay: 20,
        };
        assert_eq!(w.at(50), 1e-3);
        assert!((w.at(90) - 5e-4).abs() < 1e-12);
        assert_eq!(w.at(100), 0.0);
    }
}
