//! Decoding strategies: which positions of the current block to fill each step, and, for
//! decoders that edit, which already decoded tokens to replace.
//!
//! One trait, one file per strategy, and a serde-tagged enum so a CLI flag, an HTTP body
//! or a config file can pick one:
//! - `threshold`: the LLaDA2.0 reference rule (everything above a threshold, else the
//!   scheduled most confident);
//! - `joint`: LLaDA2.1's mask-to-token plus token-to-token editing, as diffusers'
//!   `BlockRefinementScheduler` does it;
//! - `credit`: dInfer's threshold decoder with a decaying per-position credit on the tokens
//!   that kept coming out on top;
//! - `hierarchy`: dInfer's decoder that fills the best position of each run of masks;
//! - `joint-sglang`: SGLang's LLaDA2.1 `JointThreshold` (what the official server runs);
//! - `indel`: SGLang's LLaDA2.2 `JointThresholdInDel` (Levenshtein editing: DELETE, SPLIT).
//!
//! The first four choose fills and edits among a step's candidates ([`Decoder::select`]);
//! the SGLang ones rewrite the whole block and say when it is done ([`Decoder::rewrite`]).

mod credit;
mod hierarchy;
mod indel;
mod joint;
mod joint_sglang;
mod rewrite;
mod threshold;

pub use credit::Credit;
pub use hierarchy::Hierarchy;
pub use indel::{EditTokens, Indel};
pub use joint::Joint;
pub use joint_sglang::JointSglang;
pub use rewrite::{argmax_excluding, BlockStep, EditCounts, Verdict};
pub use threshold::Threshold;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A position of the current block with this step's proposal for it: a masked position
/// (`current` is `None`), or, for decoders that edit, a decoded non-prompt position
/// (`current` holds its token).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// Offset of the position inside the current block.
    pub offset: usize,
    pub token: u32,
    /// Probability of `token` under the (filtered) distribution it was drawn from.
    pub confidence: f32,
    /// The token there now, if the position is decoded.
    pub current: Option<u32>,
}

impl Candidate {
    pub fn is_masked(&self) -> bool {
        self.current.is_none()
    }
}

/// Where the block loop stands when it asks a decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepInfo {
    /// Mask-filling steps taken in this block before this one.
    pub step: usize,
    /// Tokens the step schedule asks this step to fill at least (`block / steps`, the
    /// remainder spread over the first steps); 0 once no mask is left.
    pub scheduled: usize,
    /// 0 while masks remain; then 1, 2, ... for the refinement steps after the last mask.
    pub post_step: usize,
}

/// What a decoder does with a step's candidates (indices into them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// Masked positions to fill with their proposed token.
    pub fill: Vec<usize>,
    /// Decoded positions to replace with their proposed (different) token.
    pub edit: Vec<usize>,
}

/// A strategy that fills (and possibly edits) positions of the current block.
pub trait Decoder {
    /// Whether this decoder edits decoded tokens. The block loop then proposes tokens for
    /// the decoded non-prompt positions too, keeps a block open after its last mask while
    /// [`Decoder::keep_refining`] says so, and streams a block only once it is closed.
    fn edits(&self) -> bool {
        false
    }

    /// A new block begins (decoders with per-block state reset it).
    fn begin_block(&mut self) {}

    /// A step begins (before any [`Decoder::adjust_logits`] of it).
    fn begin_step(&mut self) {}

    /// May change a candidate row's logits before its token is picked (credit fusion,
    /// keeping the mask token from being proposed).
    fn adjust_logits(&mut self, _offset: usize, _masked: bool, _logits: &mut [f32]) {}

    /// Whether [`Decoder::adjust_logits`] does anything: if not, a greedy step needs only
    /// each row's argmax and probability, not its logits.
    fn adjusts_logits(&self) -> bool {
        false
    }

    /// Chooses the step's fills and edits.
    fn select(&mut self, info: StepInfo, candidates: &[Candidate]) -> Selection;

    /// After refinement step `post_step` (1, 2, ...) of a block with no mask left:
    /// whether to run another.
    fn keep_refining(&self, _post_step: usize, _edited: bool) -> bool {
        false
    }

    /// Whether this decoder rewrites whole blocks ([`Decoder::rewrite`], SGLang's loop)
    /// instead of choosing among candidates. Such a decoder gets every non-prompt
    /// position's logits each step and decides itself when the block ends.
    fn rewrites_blocks(&self) -> bool {
        false
    }

    /// One step of a block-rewriting decoder: rewrite `step.tokens` and say whether the
    /// block goes on.
    fn rewrite(&mut self, _step: &mut BlockStep<'_>) -> Verdict {
        Verdict::Done
    }
}

/// Decoder selection for configs and requests.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case")]
pub enum DecoderConfig {
    /// The reference rule: everything above `threshold`, else the scheduled top-k.
    Threshold { threshold: f32 },
    /// LLaDA2.1 joint decoding: the reference rule for masks, and decoded tokens replaced
    /// when another token's probability exceeds `editing_threshold` (<= 0: no editing);
    /// after the last mask, at most `max_post_steps` more steps while edits happen.
    Joint {
        threshold: f32,
        editing_threshold: f32,
        max_post_steps: usize,
    },
    /// dInfer's credit decoder: logits + alpha * ln(1 + credit), where each step adds
    /// p_top1^gamma to the credit of a masked position's top token and decays all credit
    /// by beta; then everything at or above min(threshold, best - 1e-5).
    Credit {
        threshold: f32,
        alpha: f32,
        gamma: f32,
        beta: f32,
    },
    /// dInfer's hierarchy decoder: the best position of each run of masks if above
    /// `low_threshold`, everything above `threshold`, and the block's best position.
    Hierarchy { threshold: f32, low_threshold: f32 },
    /// SGLang's LLaDA2.1 `JointThreshold`: masks above `threshold` (else the most
    /// confident one), decoded tokens rewritten above `editing_threshold`, at most
    /// `max_post_steps` editing rounds after the last mask; `penalty_lambda` lowers the
    /// previous position's token.
    #[serde(rename = "joint-sglang")]
    JointSglang {
        threshold: f32,
        editing_threshold: f32,
        max_post_steps: usize,
        penalty_lambda: f32,
    },
    /// SGLang's LLaDA2.2 `JointThresholdInDel`: joint decoding plus DELETE and SPLIT edits
    /// (the model's `delete_token_id`/`split_token_id`).
    Indel {
        threshold: f32,
        editing_threshold: f32,
        max_post_steps: usize,
    },
}

impl Default for DecoderConfig {
    /// The reference rule at the reference threshold.
    fn default() -> Self {
        DecoderConfig::Threshold {
            threshold: DecoderDefaults::THRESHOLD,
        }
    }
}

/// The decoders by name, as flags and request fields spell them.
pub const DECODER_NAMES: &[&str] = &[
    "threshold",
    "joint",
    "credit",
    "hierarchy",
    "joint-sglang",
    "indel",
];

/// Each decoder's settings when none are given: the reference's, diffusers' (joint) and
/// dInfer's (credit, hierarchy).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecoderDefaults;

impl DecoderDefaults {
    pub const THRESHOLD: f32 = 0.95;
    pub const JOINT_THRESHOLD: f32 = 0.7;
    pub const EDITING_THRESHOLD: f32 = 0.5;
    pub const MAX_POST_STEPS: usize = 16;
    pub const CREDIT_THRESHOLD: f32 = 0.9;
    pub const CREDIT_ALPHA: f32 = 0.7;
    pub const CREDIT_GAMMA: f32 = 0.2;
    pub const CREDIT_BETA: f32 = 0.8;
    pub const HIERARCHY_THRESHOLD: f32 = 0.9;
    pub const LOW_THRESHOLD: f32 = 0.4;
    /// SGLang's `JointThreshold`/`JointThresholdInDel` defaults.
    pub const SGLANG_THRESHOLD: f32 = 0.5;
    pub const SGLANG_EDIT_THRESHOLD: f32 = 0.0;
    pub const SGLANG_MAX_POST_STEPS: usize = 16;
    pub const PENALTY_LAMBDA: f32 = 0.0;
}

impl DecoderConfig {
    /// One line for people: the decoder and its settings.
    pub fn describe(&self) -> String {
        match *self {
            DecoderConfig::Threshold { threshold } => format!("threshold (threshold {threshold})"),
            DecoderConfig::Joint {
                threshold,
                editing_threshold,
                max_post_steps,
            } => format!(
                "joint (threshold {threshold}, editing threshold {editing_threshold}, max post steps {max_post_steps})"
            ),
            DecoderConfig::Credit {
                threshold,
                alpha,
                gamma,
                beta,
            } => format!(
                "credit (threshold {threshold}, alpha {alpha}, gamma {gamma}, beta {beta})"
            ),
            DecoderConfig::Hierarchy {
                threshold,
                low_threshold,
            } => format!("hierarchy (threshold {threshold}, low threshold {low_threshold})"),
            DecoderConfig::JointSglang {
                threshold,
                editing_threshold,
                max_post_steps,
                penalty_lambda,
            } => format!(
                "joint-sglang (threshold {threshold}, editing threshold {editing_threshold}, max post steps {max_post_steps}, penalty lambda {penalty_lambda})"
            ),
            DecoderConfig::Indel {
                threshold,
                editing_threshold,
                max_post_steps,
            } => format!(
                "indel (threshold {threshold}, editing threshold {editing_threshold}, max post steps {max_post_steps})"
            ),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            DecoderConfig::Threshold { .. } => "threshold",
            DecoderConfig::Joint { .. } => "joint",
            DecoderConfig::Credit { .. } => "credit",
            DecoderConfig::Hierarchy { .. } => "hierarchy",
            DecoderConfig::JointSglang { .. } => "joint-sglang",
            DecoderConfig::Indel { .. } => "indel",
        }
    }

    /// The main confidence threshold.
    pub fn threshold(&self) -> f32 {
        match *self {
            DecoderConfig::Threshold { threshold }
            | DecoderConfig::Joint { threshold, .. }
            | DecoderConfig::Credit { threshold, .. }
            | DecoderConfig::Hierarchy { threshold, .. }
            | DecoderConfig::JointSglang { threshold, .. }
            | DecoderConfig::Indel { threshold, .. } => threshold,
        }
    }

    /// Checks the decoder's settings (errors name the setting).
    pub fn validate(&self) -> Result<()> {
        let unit = |param: &'static str, v: f32| -> Result<()> {
            if !(0.0..=1.0).contains(&v) {
                return Err(Error::param(
                    param,
                    format!("must be a number in [0, 1], got {v}"),
                ));
            }
            Ok(())
        };
        unit("threshold", self.threshold())?;
        match *self {
            DecoderConfig::Threshold { .. } => {}
            DecoderConfig::JointSglang {
                editing_threshold,
                max_post_steps,
                penalty_lambda,
                ..
            } => {
                edit_settings(editing_threshold, max_post_steps)?;
                if !(penalty_lambda.is_finite() && penalty_lambda >= 0.0) {
                    return Err(Error::param(
                        "penalty_lambda",
                        format!("must be a finite number >= 0, got {penalty_lambda}"),
                    ));
                }
            }
            DecoderConfig::Joint {
                editing_threshold,
                max_post_steps,
                ..
            }
            | DecoderConfig::Indel {
                editing_threshold,
                max_post_steps,
                ..
            } => edit_settings(editing_threshold, max_post_steps)?,
            DecoderConfig::Credit {
                alpha, gamma, beta, ..
            } => {
                for (param, v) in [("credit_alpha", alpha), ("credit_gamma", gamma)] {
                    if !(v.is_finite() && v >= 0.0) {
                        return Err(Error::param(
                            param,
                            format!("must be a finite number >= 0, got {v}"),
                        ));
                    }
                }
                unit("credit_beta", beta)?;
            }
            DecoderConfig::Hierarchy { low_threshold, .. } => unit("low_threshold", low_threshold)?,
        }
        Ok(())
    }

    /// The decoder, for a model with these special tokens (`delete`/`split`: its
    /// Levenshtein editing tokens, if it has them; `indel` needs them).
    pub fn build(
        self,
        mask_id: u32,
        edit_ids: Option<(u32, u32)>,
    ) -> Result<Box<dyn Decoder + Send>> {
        Ok(match self {
            DecoderConfig::Threshold { threshold } => Box::new(Threshold::new(threshold)),
            DecoderConfig::Joint {
                threshold,
                editing_threshold,
                max_post_steps,
            } => Box::new(Joint::new(threshold, editing_threshold, max_post_steps)),
            DecoderConfig::Credit {
                threshold,
                alpha,
                gamma,
                beta,
            } => Box::new(Credit::new(threshold, alpha, gamma, beta, mask_id)),
            DecoderConfig::Hierarchy {
                threshold,
                low_threshold,
            } => Box::new(Hierarchy::new(threshold, low_threshold, mask_id)),
            DecoderConfig::JointSglang {
                threshold,
                editing_threshold,
                max_post_steps,
                penalty_lambda,
            } => Box::new(JointSglang::new(
                threshold,
                editing_threshold,
                max_post_steps,
                penalty_lambda,
                mask_id,
            )),
            DecoderConfig::Indel {
                threshold,
                editing_threshold,
                max_post_steps,
            } => {
                let Some((delete, split)) = edit_ids else {
                    return Err(Error::param(
                        "decoder",
                        "indel needs the model's DELETE and SPLIT tokens (delete_token_id and split_token_id in config.json, as LLaDA2.2 has them); this model has none",
                    ));
                };
                let ids = EditTokens {
                    mask: mask_id,
                    delete,
                    split,
                };
                Box::new(Indel::new(
                    threshold,
                    editing_threshold,
                    max_post_steps,
                    ids,
                ))
            }
        })
    }
}

/// The editing settings shared by the joint decoders.
fn edit_settings(editing_threshold: f32, max_post_steps: usize) -> Result<()> {
    // joint: <= 0 turns editing off, as in diffusers; the SGLang rules edit whenever
    // the probability exceeds it.
    if editing_threshold.is_nan() || editing_threshold > 1.0 {
        return Err(Error::param(
            "editing_threshold",
            format!("must be a number at most 1, got {editing_threshold}"),
        ));
    }
    if max_post_steps > 1024 {
        return Err(Error::param(
            "max_post_steps",
            format!("must be at most 1024, got {max_post_steps}"),
        ));
    }
    Ok(())
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

/// The reference rule over the masked candidates: every one above `threshold`; if fewer
/// than the step's scheduled count, the scheduled count of the most confident instead
/// (ties: the lower offset first). Shared by the threshold and joint decoders.
pub(crate) fn reference_fill(
    threshold: f32,
    scheduled: usize,
    candidates: &[Candidate],
) -> Vec<usize> {
    let masked: Vec<usize> = (0..candidates.len())
        .filter(|&i| candidates[i].is_masked())
        .collect();
    let confident: Vec<usize> = masked
        .iter()
        .copied()
        .filter(|&i| candidates[i].confidence > threshold)
        .collect();
    if confident.len() >= scheduled {
        return confident;
    }
    let mut order = masked;
    order.sort_by(|&a, &b| {
        candidates[b]
            .confidence
            .total_cmp(&candidates[a].confidence)
            .then(a.cmp(&b))
    });
    order.truncate(scheduled);
    order
}

/// dInfer's threshold with progress over the masked candidates whose token is not the
/// mask: every one at or above min(threshold, best - 1e-5), so the best always is.
pub(crate) fn progress_fill(threshold: f32, candidates: &[Candidate], mask_id: u32) -> Vec<usize> {
    let eligible = |c: &Candidate| c.is_masked() && c.token != mask_id;
    let best = candidates
        .iter()
        .filter(|c| eligible(c))
        .map(|c| c.confidence)
        .fold(f32::NEG_INFINITY, f32::max);
    let bar = threshold.min(best - 1e-5);
    (0..candidates.len())
        .filter(|&i| eligible(&candidates[i]) && candidates[i].confidence >= bar)
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Masked candidates with these confidences (offset i, token i + 100).
    pub fn masked(conf: &[f32]) -> Vec<Candidate> {
        conf.iter()
            .enumerate()
            .map(|(i, &c)| Candidate {
                offset: i,
                token: i as u32 + 100,
                confidence: c,
                current: None,
            })
            .collect()
    }

    #[test]
    fn schedule_spreads_the_remainder_over_the_first_steps() {
        assert_eq!(transfer_schedule(8, 3), vec![3, 3, 2]);
        assert_eq!(transfer_schedule(32, 32), vec![1; 32]);
        assert_eq!(transfer_schedule(4, 8), vec![1, 1, 1, 1, 0, 0, 0, 0]);
        assert!(transfer_schedule(4, 0).is_empty());
    }

    #[test]
    fn progress_fill_always_takes_the_best_non_mask_token() {
        let mut c = masked(&[0.3, 0.6, 0.2]);
        assert_eq!(progress_fill(0.9, &c, 7), vec![1]);
        assert_eq!(progress_fill(0.25, &c, 7), vec![0, 1]);
        c[1].token = 7; // the mask token is never filled in
        assert_eq!(progress_fill(0.9, &c, 7), vec![0]);
    }
}
