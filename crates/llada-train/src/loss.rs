//! Training losses on the shared LLaDA2 model.

use crate::forward::{forward_batch, TrainModel, TrainRow};
use candle_core::{DType, Device, Tensor, D};

use crate::noise::{block_diffusion_mask, Noised};
use crate::Result;

/// How the masked cross-entropy of one example is normalised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Weighting {
    /// Sum over masked tokens / (t · L): the ELBO weighting of the paper.
    InverseT,
    /// Mean over masked tokens (the SFT code).
    MaskedMean,
}

/// Per-example loss terms.
pub struct LossOutput {
    /// The loss to minimise (scalar).
    pub loss: Tensor,
    /// Mean cross-entropy over the masked tokens (for reporting), nats.
    pub masked_ce: f32,
    pub masked_tokens: usize,
}

/// One row of a training step, ready for the batched forward ([`losses`]): the model's
/// input and what the row's loss reads from its logits.
pub struct LossRow {
    tokens: Vec<u32>,
    positions: Vec<u32>,
    mask: Tensor,
    noise: Option<Tensor>,
    target: Target,
}

enum Target {
    /// The clean tokens at the noisy half's supervised positions (no shift).
    Masked {
        clean: Vec<u32>,
        rows: Vec<u32>,
        t: f32,
        weighting: Weighting,
        cap_weight: f64,
    },
    /// Each position predicts the next token (causal attention).
    NextToken,
}

impl LossRow {
    /// Block-diffusion row: input `[noised | clean]` with positions `0..L` twice;
    /// cross-entropy of the clean tokens at the supervised positions of the noisy half
    /// (position i predicts token i, no shift). `cap_weight > 0` adds the CAP term: the
    /// mean entropy at supervised positions the model already predicts correctly.
    /// `embed_noise = Some((std, seed))` adds Gaussian noise to the masked tokens'
    /// embeddings (an AR model's mask embedding is untrained; the noise keeps early
    /// conversion stable).
    #[allow(clippy::too_many_arguments)]
    pub fn block_diffusion(
        model: &TrainModel,
        clean: &[u32],
        noised: &Noised,
        block: usize,
        doc_ids: Option<&[u32]>,
        weighting: Weighting,
        cap_weight: f64,
        embed_noise: Option<(f32, u64)>,
    ) -> Result<LossRow> {
        let len = clean.len();
        if block == 0 || len == 0 || noised.tokens.len() != len {
            return Err(crate::TrainError::Invalid(format!(
                "block-diffusion loss needs a block of at least 1 and a noised copy of the {len} tokens (block {block}, {} noised)",
                noised.tokens.len()
            )));
        }
        let device = &Device::Cpu;
        let mut tokens = noised.tokens.clone();
        tokens.extend_from_slice(clean);
        let positions: Vec<u32> = (0..2 * len as u32).map(|i| i % len as u32).collect();
        let mask = Tensor::from_vec(
            block_diffusion_mask(len, block, doc_ids),
            (2 * len, 2 * len),
            device,
        )?;
        let noise = if let Some((std, seed)) = embed_noise.filter(|(std, _)| *std > 0.0) {
            let hidden = model.config().hidden_size;
            let gauss = llada::synthetic::gaussian(2 * len * hidden, std, seed);
            let gauss = Tensor::from_vec(gauss, (2 * len, hidden), device)?;
            let keep: Vec<f32> = (0..2 * len)
                .map(|i| f32::from(u8::from(i < len && noised.masked[i])))
                .collect();
            let keep = Tensor::from_vec(keep, (2 * len, 1), device)?;
            Some(gauss.broadcast_mul(&keep)?)
        } else {
            None
        };
        let rows = (0..len as u32)
            .filter(|&i| noised.masked[i as usize])
            .collect();
        Ok(LossRow {
            tokens,
            positions,
            mask,
            noise,
            target: Target::Masked {
                clean: clean.to_vec(),
                rows,
                t: noised.t,
                weighting,
                cap_weight,
            },
        })
    }

    /// Autoregressive row (the `ar` stage): causal attention (within each document when
    /// `doc_ids` is given), position i predicts token i + 1.
    pub fn autoregressive(tokens: &[u32], doc_ids: Option<&[u32]>) -> Result<LossRow> {
        let len = tokens.len();
        if len < 2 {
            return Err(crate::TrainError::Invalid(format!(
                "next-token loss needs at least 2 tokens, got {len}"
            )));
        }
        let mask: Vec<f32> = (0..len * len)
            .map(|i| {
                let (q, k) = (i / len, i % len);
                let same_doc = doc_ids.is_none_or(|d| d[q] == d[k]);
                if k <= q && same_doc {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
            .collect();
        Ok(LossRow {
            tokens: tokens.to_vec(),
            positions: (0..len as u32).collect(),
            mask: Tensor::from_vec(mask, (len, len), &Device::Cpu)?,
            noise: None,
            target: Target::NextToken,
        })
    }
}

/// The loss of every row, from one forward pass of all of them together. Logits are
/// computed only at supervised positions (a masked row's masked ones, all but the last
/// of a next-token row), their cross-entropies in one op, and each row's weighted sum
/// comes out of one product with a `[rows, positions]` weight matrix: no per-row slices
/// of the logits, whose backward would pad each row's gradient to the whole batch.
pub fn losses(model: &TrainModel, rows: &[LossRow]) -> Result<Vec<LossOutput>> {
    let all_but_last: Vec<Vec<u32>> = rows
        .iter()
        .map(|r| match r.target {
            Target::NextToken => (0..r.tokens.len() as u32 - 1).collect(),
            Target::Masked { .. } => Vec::new(),
        })
        .collect();
    let mut targets = Vec::new();
    // Each row's supervised positions: (first index in `targets`, count, weight).
    let mut spans = Vec::with_capacity(rows.len());
    let inputs: Vec<TrainRow<'_>> = rows
        .iter()
        .zip(&all_but_last)
        .map(|(r, next)| {
            let (outputs, weight) = match &r.target {
                Target::Masked {
                    clean,
                    rows,
                    t,
                    weighting,
                    ..
                } => {
                    targets.extend(rows.iter().map(|&i| clean[i as usize]));
                    let weight = match weighting {
                        Weighting::InverseT => 1.0 / (*t as f64 * clean.len() as f64),
                        Weighting::MaskedMean => 1.0 / rows.len().max(1) as f64,
                    };
                    (rows.as_slice(), weight)
                }
                Target::NextToken => {
                    targets.extend_from_slice(&r.tokens[1..]);
                    (next.as_slice(), 1.0 / next.len() as f64)
                }
            };
            spans.push((targets.len() - outputs.len(), outputs.len(), weight));
            TrainRow {
                tokens: &r.tokens,
                positions: &r.positions,
                mask: &r.mask,
                embed_noise: r.noise.as_ref(),
                outputs: Some(outputs),
            }
        })
        .collect();
    let logits = forward_batch(model, &inputs)?;
    let device = &Device::Cpu;
    let total = targets.len();
    let (row_losses, nll) = if total == 0 {
        (Tensor::zeros(rows.len(), DType::F32, device)?, Vec::new())
    } else {
        let nll = crate::fused::cross_entropy(&logits, &targets)?;
        let mut weights = vec![0f32; rows.len() * total];
        for (i, &(start, n, w)) in spans.iter().enumerate() {
            weights[i * total + start..i * total + start + n].fill(w as f32);
        }
        let weights = Tensor::from_vec(weights, (rows.len(), total), device)?;
        let values = nll.to_vec1::<f32>()?;
        (weights.matmul(&nll.unsqueeze(1)?)?.squeeze(1)?, values)
    };
    let mut out = Vec::with_capacity(rows.len());
    for (i, (row, &(start, n, _))) in rows.iter().zip(&spans).enumerate() {
        let mut loss = row_losses.get(i)?;
        if let Target::Masked { cap_weight, .. } = row.target {
            if cap_weight > 0.0 && n > 0 {
                let picked = logits.narrow(0, start, n)?;
                loss =
                    (loss + cap_term(&picked, &targets[start..start + n], device)? * cap_weight)?;
            }
        }
        out.push(LossOutput {
            loss,
            masked_ce: nll[start..start + n].iter().sum::<f32>() / n.max(1) as f32,
            masked_tokens: n,
        });
    }
    Ok(out)
}

/// The loss of one row alone.
pub fn loss_of(model: &TrainModel, row: LossRow) -> Result<LossOutput> {
    Ok(losses(model, &[row])?.pop().expect("one row, one loss"))
}

/// CAP's term: the mean entropy of the predictions at the positions whose argmax is
/// already the target (`picked`: the logits of the row's supervised positions); zero
/// when none is right yet.
fn cap_term(picked: &Tensor, targets: &[u32], device: &Device) -> Result<Tensor> {
    let argmax = picked.argmax(D::Minus1)?.to_vec1::<u32>()?;
    let correct: Vec<u32> = (0..targets.len() as u32)
        .filter(|&i| argmax[i as usize] == targets[i as usize])
        .collect();
    if correct.is_empty() {
        return Ok(Tensor::zeros((), DType::F32, device)?);
    }
    let idx = Tensor::new(correct.as_slice(), device)?;
    let lp = candle_nn::ops::log_softmax(&picked.index_select(&idx, 0)?, D::Minus1)?;
    Ok((lp.exp()? * &lp)?.sum(D::Minus1)?.neg()?.mean_all()?)
}
