//! Decoding strategies: which masked positions of the current block to fill each step.
//!
//! One trait, one file per strategy, and a serde-tagged enum so a CLI flag, an HTTP body
//! or a config file can pick one.

mod threshold;

pub use threshold::Threshold;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A masked position's proposal from this step's forward pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// Offset of the position inside the current block.
    pub offset: usize,
    pub token: u32,
    /// Probability of `token` under the (filtered) distribution it was drawn from.
    pub confidence: f32,
}

/// Where the block loop stands when it asks a decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepInfo {
    /// Step index inside the block, from 0.
    pub step: usize,
    /// Tokens the step schedule asks this step to fill at least (`block / steps`, the
    /// remainder spread over the first steps).
    pub scheduled: usize,
}

/// A strategy that accepts some of the step's candidates. Accepted tokens are final.
pub trait Decoder {
    /// Indices into `candidates` to accept this step.
    fn select(&mut self, info: StepInfo, candidates: &[Candidate]) -> Vec<usize>;
}

/// Decoder selection for configs and requests.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case")]
pub enum DecoderConfig {
    /// The reference rule: everything above `threshold`, else the scheduled top-k.
    Threshold { threshold: f32 },
}

impl DecoderConfig {
    /// Checks the decoder's settings (errors name the setting).
    pub fn validate(&self) -> Result<()> {
        match *self {
            DecoderConfig::Threshold { threshold } => {
                if !(0.0..=1.0).contains(&threshold) {
                    return Err(Error::param(
                        "threshold",
                        format!("must be a number in [0, 1], got {threshold}"),
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn build(self) -> Box<dyn Decoder + Send> {
        match self {
            DecoderConfig::Threshold { threshold } => Box::new(Threshold::new(threshold)),
        }
    }
}

/// Tokens to fill at each of `steps` steps of a block of `block_length` positions.
pub fn transfer_schedule(block_length: usize, steps: usize) -> Vec<usize> {
    if steps == 0 {
        return Vec::new();
    }
    let base = block_length / steps;
    let remainder = block_length % steps;
    (0..steps)
        .map(|i| base + usize::from(i < remainder))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_spreads_the_remainder_over_the_first_steps() {
        assert_eq!(transfer_schedule(8, 3), vec![3, 3, 2]);
        assert_eq!(transfer_schedule(32, 32), vec![1; 32]);
        assert_eq!(transfer_schedule(4, 8), vec![1, 1, 1, 1, 0, 0, 0, 0]);
        assert!(transfer_schedule(4, 0).is_empty());
    }
}
