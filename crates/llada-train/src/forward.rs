//! The training forward: the engine's model ([`llada::Llada2`], whose file holds the one
//! definition of a layer's op order) run on [`Autograd`], a backend whose ops carry
//! gradients, over rows that each bring their own positions and attention mask.

use candle_core::{DType, Device, Tensor};
use llada::backend::{
    attend_by_sequence, grouped_attention, split_heads, AttentionOps, Backend, Cpu, MoeInput, Rope,
    Route,
};
use llada::{Heads, LinearWeight, Llada2};

use crate::fused;
use crate::{Result, TrainError};

/// A model whose ops carry gradients (its weights are candle `Var`s when built from a
/// [`crate::params::TrainableSource`]).
pub type TrainModel = Llada2<Autograd>;

/// The CPU backend with differentiable ops where inference runs kernels without
/// gradients (RMSNorm, SwiGLU, the masked softmax: llada's fused ops with a backward),
/// attention within each row and no cache, and routing weights recomputed from the
/// router's logits so that the router learns.
#[derive(Default)]
pub struct Autograd {
    cpu: Cpu,
}

/// One row of a training batch (see [`forward_batch`]).
#[derive(Clone, Copy)]
pub struct TrainRow<'a> {
    pub tokens: &'a [u32],
    pub positions: &'a [u32],
    /// Additive attention mask `[n, n]`: 0 visible, -inf hidden.
    pub mask: &'a Tensor,
    /// Added to the token embeddings, `[n, hidden]`.
    pub embed_noise: Option<&'a Tensor>,
    /// The tokens whose logits are wanted, increasing (`None`: all). A block-diffusion
    /// loss reads only its masked positions, a quarter of the `[noisy | clean]` row on
    /// average; the final norm and `lm_head` (the largest product of the default model)
    /// then skip the rest.
    pub outputs: Option<&'a [u32]>,
}

/// A training pass: the rows' tokens one after another.
pub struct TrainPass {
    ids: Tensor,
    rope: Rope,
    /// Each row's first token, length and mask (repeated for a KV group's query heads).
    rows: Vec<(usize, usize, Tensor)>,
    noise: Option<Tensor>,
    outputs: Option<Tensor>,
}

impl Backend for Autograd {
    type Tensor = Tensor;
    type Linear = LinearWeight;
    type Pass<'p> = TrainPass;

    fn tensor(&self, t: Tensor) -> llada::Result<Tensor> {
        self.cpu.tensor(t)
    }

    fn linear_weight(&self, w: LinearWeight) -> llada::Result<LinearWeight> {
        self.cpu.linear_weight(w)
    }

    fn tensor_bytes(&self, t: &Tensor) -> usize {
        self.cpu.tensor_bytes(t)
    }

    fn linear_bytes(&self, w: &LinearWeight) -> usize {
        self.cpu.linear_bytes(w)
    }

    fn embed(&self, table: &Tensor, pass: &TrainPass) -> llada::Result<Tensor> {
        let h = table.index_select(&pass.ids, 0)?;
        // Training may perturb embeddings (noise on masked tokens early in conversion).
        Ok(match &pass.noise {
            Some(noise) => (h + noise)?,
            None => h,
        })
    }

    fn rms_norm(&self, x: &Tensor, weight: &Tensor, eps: f64) -> llada::Result<Tensor> {
        Ok(fused::rms_norm(x, weight, eps)?)
    }

    fn linear(&self, x: &Tensor, w: &LinearWeight) -> llada::Result<Tensor> {
        let LinearWeight::Dense { weight, bias } = w else {
            // A frozen (packed or quantized) weight: the engine's product, no gradient.
            return self.cpu.linear(x, w);
        };
        let y = fused::matmul(x, &weight.t()?)?;
        Ok(match bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }

    fn add(&self, a: &Tensor, b: &Tensor) -> llada::Result<Tensor> {
        Ok((a + b)?)
    }

    fn swiglu(&self, gate: &Tensor, up: &Tensor) -> llada::Result<Tensor> {
        Ok(fused::swiglu(gate, up)?)
    }

    fn split_heads(&self, qkv: &Tensor, heads: Heads) -> llada::Result<(Tensor, Tensor, Tensor)> {
        split_heads(qkv, heads)
    }

    fn rope(&self, x: &Tensor, pass: &TrainPass) -> llada::Result<Tensor> {
        pass.rope.apply(x)
    }

    fn scale(&self, x: &Tensor, factor: f64) -> llada::Result<Tensor> {
        self.cpu.scale(x, factor)
    }

    fn attend(
        &self,
        pass: &mut TrainPass,
        _layer: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
    ) -> llada::Result<Tensor> {
        let ops = AttentionOps {
            matmul: fused::matmul,
            softmax: fused::masked_softmax,
        };
        let spans: Vec<(usize, usize)> = pass.rows.iter().map(|&(o, n, _)| (o, n)).collect();
        attend_by_sequence(&spans, q, k, v, |i, q, k, v| {
            grouped_attention(q, k, v, Some(&pass.rows[i].2), &ops)
        })
    }

    fn router_logits(&self, x: &Tensor, weight: &Tensor) -> llada::Result<(Tensor, Vec<f32>)> {
        let logits = fused::matmul(&x.to_dtype(DType::F32)?, &weight.t()?)?;
        let host = logits.flatten_all()?.to_vec1::<f32>()?;
        Ok((logits, host))
    }

    fn experts(&self, x: &Tensor, moe: &MoeInput<'_, Self>) -> llada::Result<Tensor> {
        let weights = weights_with_grad(moe.routes, moe.router_logits, moe.scaling)?;
        Cpu::experts_by_expert(self, x, moe, &weights)
    }

    fn output_rows(&self, h: &Tensor, pass: &TrainPass) -> llada::Result<Option<Tensor>> {
        Ok(Some(match &pass.outputs {
            Some(rows) => h.index_select(rows, 0)?,
            None => h.clone(),
        }))
    }
}

/// The routing weights of `routes` as a tensor `[tokens * k]` that carries gradients to
/// the router: the chosen experts' sigmoid scores, renormalised when k > 1, times
/// `scaling` (the values the engine's routing computed; selection itself is discrete,
/// as in the reference).
fn weights_with_grad(
    routes: &[Route],
    logits: &Tensor,
    scaling: f32,
) -> candle_core::Result<Tensor> {
    let k = routes.first().map_or(0, |r| r.experts.len());
    let idx: Vec<u32> = routes
        .iter()
        .flat_map(|r| r.experts.iter().map(|&e| e as u32))
        .collect();
    let idx = Tensor::from_vec(idx, (routes.len(), k), logits.device())?;
    let chosen = candle_nn::ops::sigmoid(logits)?.gather(&idx, 1)?;
    let weights = if k > 1 {
        chosen.broadcast_div(&(chosen.sum_keepdim(1)? + 1e-20)?)?
    } else {
        chosen
    };
    (weights * scaling as f64)?.flatten_all()
}

/// Training forward of one sequence: [`forward_batch`] of one row.
pub fn forward(
    model: &TrainModel,
    tokens: &[u32],
    positions: &[u32],
    mask: &Tensor,
    embed_noise: Option<&Tensor>,
) -> Result<Tensor> {
    forward_batch(
        model,
        &[TrainRow {
            tokens,
            positions,
            mask,
            embed_noise,
            outputs: None,
        }],
    )
}

/// Training forward: differentiable ops only, no cache. Each row's tokens sit at its
/// `positions` (the 2L `[noisy | clean]` layout repeats positions) under its additive
/// `mask` (`[n, n]`, 0 visible / -inf hidden); `embed_noise` (`[n, hidden]`) is added to
/// its token embeddings. The rows share every linear and expert product (one matrix of
/// all their tokens, fewer and larger ops than row by row) and attend each within
/// itself. Returns the logits of each row's `outputs` (or every token), rows one after
/// another.
pub fn forward_batch(model: &TrainModel, rows: &[TrainRow<'_>]) -> Result<Tensor> {
    let cfg = model.config();
    let (vocab, hidden) = (cfg.vocab_size, cfg.hidden_size);
    let heads = cfg.heads();
    let group = heads.query / heads.kv;
    let device = &Device::Cpu;
    let mut ids = Vec::new();
    let mut positions = Vec::new();
    let mut spans = Vec::with_capacity(rows.len());
    for row in rows {
        let n = row.tokens.len();
        let noise_ok = row.embed_noise.is_none_or(|e| e.dims() == [n, hidden]);
        if n == 0 || row.positions.len() != n || row.mask.dims() != [n, n] || !noise_ok {
            return Err(TrainError::Invalid(format!(
                "training forward: {n} tokens need {n} positions, a [{n}, {n}] mask and [{n}, {hidden}] noise (got {}, {:?} and {:?})",
                row.positions.len(),
                row.mask.dims(),
                row.embed_noise.map(|e| e.dims().to_vec())
            )));
        }
        if let Some(&id) = row.tokens.iter().find(|&&id| id as usize >= vocab) {
            return Err(llada::Error::TokenOutOfRange { id, vocab }.into());
        }
        if let Some(outputs) = row.outputs {
            if outputs.windows(2).any(|w| w[0] >= w[1]) || outputs.last() >= Some(&(n as u32)) {
                return Err(TrainError::Invalid(format!(
                    "training forward: the logits wanted must be increasing tokens of the row's {n}"
                )));
            }
        }
        // Query heads of one KV group are stacked in attention: the mask repeats.
        let mask = if group == 1 {
            row.mask.clone()
        } else {
            Tensor::cat(&vec![row.mask; group], 0)?
        };
        spans.push((ids.len(), n, mask));
        ids.extend_from_slice(row.tokens);
        positions.extend(row.positions.iter().map(|&p| p as usize));
    }
    let noise = if rows.iter().any(|r| r.embed_noise.is_some()) {
        let parts = rows
            .iter()
            .map(|r| match r.embed_noise {
                Some(e) => Ok(e.clone()),
                None => Tensor::zeros((r.tokens.len(), hidden), DType::F32, device),
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Some(Tensor::cat(&parts, 0)?)
    } else {
        None
    };
    let outputs = if rows.iter().all(|r| r.outputs.is_none()) {
        None
    } else {
        let mut wanted = Vec::new();
        for (row, (offset, n, _)) in rows.iter().zip(&spans) {
            let offset = *offset as u32;
            match row.outputs {
                Some(outputs) => wanted.extend(outputs.iter().map(|&i| offset + i)),
                None => wanted.extend(offset..offset + *n as u32),
            }
        }
        Some(Tensor::new(wanted.as_slice(), device)?)
    };
    let offsets: Vec<usize> = spans.iter().map(|&(o, _, _)| o).collect();
    let blocks = model.routing_blocks(&offsets, &positions);
    let rope = Rope::new(model.rope_tables(positions.into_iter()), device)?;
    let mut pass = TrainPass {
        ids: Tensor::new(ids.as_slice(), device)?,
        rope,
        rows: spans,
        noise,
        outputs,
    };
    let logits = model.run(&mut pass, &blocks)?;
    Ok(logits.expect("a training pass wants logits"))
}
