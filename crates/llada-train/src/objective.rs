//! What one training row contributes to a step's loss, by stage kind: the causal loss of
//! a text sequence (ar), the block-diffusion loss of a noised text sequence (wsd, and the
//! text rows mixed into sft), and the SFT loss of a chat example (prompt kept, answer
//! masked, optionally with the complementary mask as a second view).

use candle_core::Tensor;
use rand::{Rng, RngCore};
use rand_chacha::ChaCha8Rng;

use crate::data::{ChatExample, Packed};
use crate::loss::{autoregressive_loss, block_diffusion_loss, LossOutput, Weighting};
use crate::noise::{complement, mask_tokens, sample_t, sample_t_between};
use crate::params::TrainableModel;
use crate::recipe::Stage;
use crate::{Result, TrainError};

/// The fixed inputs of a stage's rows.
pub struct Objective<'a> {
    pub stage: &'a Stage,
    pub mask_id: u32,
}

impl Objective<'_> {
    /// Next-token loss of a packed text sequence (same-document attention).
    pub fn causal(&self, model: &TrainableModel, seq: &Packed) -> Result<LossOutput> {
        autoregressive_loss(&model.model, &seq.tokens, Some(&seq.doc_ids))
    }

    /// Block-diffusion loss of a packed text sequence at a random mask rate, 1/t
    /// weighted, with embedding noise in the stage's first steps.
    pub fn text(
        &self,
        model: &TrainableModel,
        seq: &Packed,
        block: usize,
        step: usize,
        rng: &mut ChaCha8Rng,
    ) -> Result<LossOutput> {
        let stage = self.stage;
        let t = sample_t(rng, stage.eps);
        let noised = mask_tokens(&seq.tokens, t, self.mask_id, None, rng);
        let noise = (step < stage.embed_noise_steps)
            .then(|| (stage.embed_noise_std as f32, rng.next_u64()));
        block_diffusion_loss(
            &model.model,
            &seq.tokens,
            &noised,
            block,
            Some(&seq.doc_ids),
            Weighting::InverseT,
            0.0,
            noise,
        )
    }

    /// SFT loss of a chat example: the answer masked at t ~ U(t_range), mean over
    /// masked tokens, plus CAP when asked; with `complementary`, the inverse mask is a
    /// second view and the two losses add.
    pub fn chat(
        &self,
        model: &TrainableModel,
        ex: &ChatExample,
        block: usize,
        rng: &mut ChaCha8Rng,
    ) -> Result<LossOutput> {
        let stage = self.stage;
        let (lo, hi) = stage.t_range;
        let t = sample_t_between(rng, lo, hi);
        let noised = mask_tokens(&ex.tokens, t, self.mask_id, Some(&ex.prompt), rng);
        let mut views = vec![noised.clone()];
        if stage.complementary {
            views.push(complement(
                &ex.tokens,
                &noised,
                self.mask_id,
                Some(&ex.prompt),
            ));
        }
        let mut total: Option<LossOutput> = None;
        for v in views.iter().filter(|v| v.masked.contains(&true)) {
            let o = block_diffusion_loss(
                &model.model,
                &ex.tokens,
                v,
                block,
                None,
                Weighting::MaskedMean,
                stage.cap_weight,
                None,
            )?;
            total = Some(match total {
                None => o,
                Some(prev) => LossOutput {
                    loss: (prev.loss + o.loss)?,
                    masked_ce: (prev.masked_ce + o.masked_ce) / 2.0,
                    masked_tokens: prev.masked_tokens + o.masked_tokens,
                },
            });
        }
        total.ok_or_else(|| TrainError::Invalid("an SFT example has no answer tokens".into()))
    }
}

/// Whether an SFT row is replaced by a text row this time (drawn only when mixing is on,
/// so recipes without mixing keep their random streams).
pub fn draws_text_row(rng: &mut ChaCha8Rng, fraction: f64) -> bool {
    rng.random::<f64>() < fraction
}

/// The mean of per-row losses: the step's loss.
pub fn mean_loss(losses: &[Tensor]) -> Result<Tensor> {
    let n = losses.len() as f64;
    Ok((Tensor::stack(losses, 0)?.sum_all()? / n)?)
}
