//! What one training example contributes to a step's loss, by stage kind: the causal loss
//! of a text sequence (ar), the block-diffusion loss of a noised text sequence (wsd, and
//! the text rows mixed into sft), and the SFT loss of a chat example (prompt kept, answer
//! masked, optionally with the complementary mask as a second view). Each example becomes
//! one or two model rows ([`LossRow`]); a step runs all its rows in one forward pass and
//! [`combine`] folds each example's rows back into its loss.

use rand::{Rng, RngCore};
use rand_chacha::ChaCha8Rng;

use crate::data::{ChatExample, Packed};
use crate::loss::{LossOutput, LossRow, Weighting};
use crate::noise::{complement, corrupt_visible, mask_tokens, sample_t, sample_t_between};
use crate::params::TrainableModel;
use crate::recipe::{Stage, StageKind};
use crate::{Result, TrainError};

/// The fixed inputs of a stage's rows.
pub struct Objective<'a> {
    pub stage: &'a Stage,
    pub mask_id: u32,
    /// The EOS id that ends an answer and pads a chat row.
    pub eos: u32,
}

impl Objective<'_> {
    /// Next-token loss of a packed text sequence (same-document attention).
    pub fn causal(&self, seq: &Packed) -> Result<Vec<LossRow>> {
        Ok(vec![LossRow::autoregressive(
            &seq.tokens,
            Some(&seq.doc_ids),
        )?])
    }

    /// Block-diffusion loss of a packed text sequence at a random mask rate, 1/t
    /// weighted, with embedding noise in the stage's first steps (sft_ar: every token
    /// masked, so with block 1 each is predicted from the clean ones before it).
    pub fn text(
        &self,
        model: &TrainableModel,
        seq: &Packed,
        block: usize,
        step: usize,
        rng: &mut ChaCha8Rng,
    ) -> Result<Vec<LossRow>> {
        let stage = self.stage;
        let t = match stage.kind {
            StageKind::SftAr => 1.0,
            _ => sample_t(rng, stage.eps),
        };
        let noised = mask_tokens(&seq.tokens, t, self.mask_id, None, rng);
        let noise = (step < stage.embed_noise_steps)
            .then(|| (stage.embed_noise_std as f32, rng.next_u64()));
        Ok(vec![LossRow::block_diffusion(
            &model.model,
            &seq.tokens,
            &noised,
            block,
            Some(&seq.doc_ids),
            Weighting::InverseT,
            0.0,
            noise,
        )?])
    }

    /// SFT loss of a chat example: the answer masked at t ~ U(t_range), mean over
    /// masked tokens, plus CAP when asked; with `complementary`, the inverse mask is a
    /// second view and the two losses add; with `edit_rate`, each view's visible answer
    /// tokens are corrupted and supervised too. sft_ar masks the whole answer (one view).
    pub fn chat(
        &self,
        model: &TrainableModel,
        ex: &ChatExample,
        block: usize,
        rng: &mut ChaCha8Rng,
    ) -> Result<Vec<LossRow>> {
        let stage = self.stage;
        let autoregressive = stage.kind == StageKind::SftAr;
        let (lo, hi) = stage.t_range;
        let t = if autoregressive {
            1.0
        } else {
            sample_t_between(rng, lo, hi)
        };
        let protected = if stage.trim_padding {
            beyond_answer_block(ex, self.eos, block)
        } else {
            ex.prompt.clone()
        };
        let noised = mask_tokens(&ex.tokens, t, self.mask_id, Some(&protected), rng);
        let mut views = vec![noised.clone()];
        if stage.complementary && !autoregressive {
            views.push(complement(
                &ex.tokens,
                &noised,
                self.mask_id,
                Some(&protected),
            ));
        }
        if stage.edit_rate > 0.0 {
            for v in &mut views {
                corrupt_visible(v, &ex.tokens, &ex.prompt, stage.edit_rate, rng);
            }
        }
        let rows = views
            .iter()
            .filter(|v| v.masked.contains(&true))
            .map(|v| {
                LossRow::block_diffusion(
                    &model.model,
                    &ex.tokens,
                    v,
                    block,
                    None,
                    Weighting::MaskedMean,
                    stage.cap_weight,
                    None,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        if rows.is_empty() {
            return Err(TrainError::Invalid(
                "an SFT example has no answer tokens".into(),
            ));
        }
        Ok(rows)
    }
}

/// The positions an SFT view leaves clean and unsupervised with `trim_padding`: the
/// prompt and every position after the block holding the first EOS of the answer.
fn beyond_answer_block(ex: &ChatExample, eos: u32, block: usize) -> Vec<bool> {
    let answer_start = ex.prompt.iter().take_while(|&&p| p).count();
    let Some(eos_at) = (answer_start..ex.tokens.len()).find(|&i| ex.tokens[i] == eos) else {
        return ex.prompt.clone();
    };
    let block_end = (eos_at / block + 1) * block;
    (0..ex.tokens.len())
        .map(|i| ex.prompt[i] || i >= block_end)
        .collect()
}

/// How an example's rows make its loss: the views of an SFT example add (their
/// reported cross-entropy is the views' mean); a text row is its own loss.
pub fn combine(outputs: Vec<LossOutput>) -> Result<LossOutput> {
    let views = outputs.len() as f32;
    let mut iter = outputs.into_iter();
    let first = iter
        .next()
        .ok_or_else(|| TrainError::Invalid("an example made no rows".into()))?;
    iter.try_fold(
        LossOutput {
            masked_ce: first.masked_ce / views,
            ..first
        },
        |acc, o| {
            Ok(LossOutput {
                loss: (acc.loss + o.loss)?,
                masked_ce: acc.masked_ce + o.masked_ce / views,
                masked_tokens: acc.masked_tokens + o.masked_tokens,
            })
        },
    )
}

/// Whether an SFT row is replaced by a text row this time (drawn only when mixing is on,
/// so recipes without mixing keep their random streams).
pub fn draws_text_row(rng: &mut ChaCha8Rng, fraction: f64) -> bool {
    rng.random::<f64>() < fraction
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Prompt of 5, answer of 3 (the 3rd is EOS) in blocks of 4: the padding from the
    /// second block's end on is protected; the answer's block keeps its padding.
    #[test]
    fn trimmed_padding_starts_after_the_block_of_the_answers_eos() {
        let eos = 0;
        let mut tokens = vec![9, 9, 9, 9, 9, 4, 5, 0];
        tokens.resize(16, eos);
        let mut prompt = vec![true; 5];
        prompt.resize(16, false);
        let ex = ChatExample { tokens, prompt };
        let protected = beyond_answer_block(&ex, eos, 4);
        let want: Vec<bool> = (0..16).map(|i| !(5..8).contains(&i)).collect();
        assert_eq!(protected, want);
        // An EOS that is the last of its block: the next block is trimmed too.
        let protected = beyond_answer_block(&ex, eos, 8);
        let want: Vec<bool> = (0..16).map(|i| !(5..8).contains(&i)).collect();
        assert_eq!(protected, want);
        // Block 1 (autoregressive shape): only the EOS after the answer is kept.
        let protected = beyond_answer_block(&ex, eos, 1);
        assert!(!protected[7] && protected[8]);
    }
}
