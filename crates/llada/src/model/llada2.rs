//! LLaDA2 MoE (`LLaDA2MoeModelLM`): the forward pass of the official PyTorch modeling
//! file, with a block-causal mask and a cache of finished blocks.
//!
//! Weight paths read exactly like the HF tensor names (`model.layers.{i}.attention...`).

use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{Embedding, Module};
use rayon::prelude::*;

use crate::cache::KvCache;
use crate::config::{Llada2Config, MoeShape};
use crate::error::{Error, Result};
use crate::kernels::fused;
use crate::quant::{LinearWeight, Quant};
use crate::weights::WeightSource;

/// One row of a training batch (see [`Llada2Model::forward_train_batch`]).
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

/// One sequence's share of a forward pass.
pub struct SeqStep<'a> {
    /// Tokens at positions `start..start + tokens.len()`.
    pub tokens: &'a [u32],
    /// Absolute position of `tokens[0]`; must equal `cache.len()`.
    pub start: usize,
    /// Block length of the block-causal mask among `tokens`.
    pub block_length: usize,
    /// The first `commit` tokens are final: their keys/values are appended to `cache`.
    pub commit: usize,
    /// Indices into `tokens` whose logits are wanted (may be empty).
    pub logit_rows: &'a [usize],
    /// Approximate block caching: only these rows of `tokens` (increasing, all in one
    /// block, a superset of `logit_rows`, with `commit == 0`) run through the model; the
    /// others keep the keys/values an earlier pass of this block wrote at their positions.
    /// `None`: every row (exact).
    pub compute: Option<&'a [usize]>,
    pub cache: &'a mut KvCache,
}

impl SeqStep<'_> {
    /// The rows of `tokens` this step computes.
    fn computed_rows(&self) -> usize {
        self.compute.map_or(self.tokens.len(), <[usize]>::len)
    }
}

/// The work forward passes did: multiply-accumulates of their matrix products and
/// attention, and bytes of weights read (each matrix once per pass, an expert only when
/// a token was routed to it). Cumulative; take differences around the passes measured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ForwardCost {
    pub macs: u64,
    pub weight_bytes: u64,
}

#[derive(Default)]
struct CostMeter {
    macs: AtomicU64,
    weight_bytes: AtomicU64,
}

impl CostMeter {
    fn add(&self, macs: usize, weight_bytes: usize) {
        self.macs.fetch_add(macs as u64, Ordering::Relaxed);
        self.weight_bytes
            .fetch_add(weight_bytes as u64, Ordering::Relaxed);
    }

    /// `rows` rows through `w`: the matrix is read once, each row costs in * out MACs.
    fn linear(&self, w: &LinearWeight, rows: usize) {
        let (out, inp) = w.dims();
        self.add(rows * out * inp, w.memory_bytes());
    }

    fn total(&self) -> ForwardCost {
        ForwardCost {
            macs: self.macs.load(Ordering::Relaxed),
            weight_bytes: self.weight_bytes.load(Ordering::Relaxed),
        }
    }
}

/// RMSNorm: candle's fused kernel for inference; llada's, which has gradients, when
/// training.
fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64, train: bool) -> candle_core::Result<Tensor> {
    if train {
        return fused::rms_norm(x, weight, eps);
    }
    candle_nn::ops::rms_norm(&x.contiguous()?, weight, eps as f32)
}

/// Rotary tables for a run of positions: `[len, rope_dim / 2]` each.
struct RopeSlice {
    cos: Tensor,
    sin: Tensor,
}

struct Rotary {
    inv_freq: Vec<f32>,
    rope_dim: usize,
}

impl Rotary {
    fn new(cfg: &Llada2Config) -> Self {
        let rope_dim = cfg.rope_dim();
        // Computed in f32 as the reference's default RoPE init does.
        let base = cfg.rope_theta as f32;
        let inv_freq = (0..rope_dim / 2)
            .map(|i| 1.0 / base.powf((2 * i) as f32 / rope_dim as f32))
            .collect();
        Self { inv_freq, rope_dim }
    }

    fn at(
        &self,
        positions: impl ExactSizeIterator<Item = usize>,
        device: &Device,
    ) -> Result<RopeSlice> {
        let half = self.rope_dim / 2;
        let len = positions.len();
        let mut cos = Vec::with_capacity(len * half);
        let mut sin = Vec::with_capacity(len * half);
        for pos in positions {
            for &f in &self.inv_freq {
                let angle = pos as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        Ok(RopeSlice {
            cos: Tensor::from_vec(cos, (len, half), device)?,
            sin: Tensor::from_vec(sin, (len, half), device)?,
        })
    }

    /// Rotate-half RoPE on the first `rope_dim` dims of `x: [heads, len, head_dim]`.
    fn apply(&self, x: &Tensor, rope: &RopeSlice) -> candle_core::Result<Tensor> {
        if self.rope_dim == 0 {
            return Ok(x.clone());
        }
        let head_dim = x.dim(D::Minus1)?;
        let half = self.rope_dim / 2;
        let x1 = x.narrow(D::Minus1, 0, half)?;
        let x2 = x.narrow(D::Minus1, half, half)?;
        let rot1 = (x1.broadcast_mul(&rope.cos)? - x2.broadcast_mul(&rope.sin)?)?;
        let rot2 = (x2.broadcast_mul(&rope.cos)? + x1.broadcast_mul(&rope.sin)?)?;
        if self.rope_dim == head_dim {
            Tensor::cat(&[rot1, rot2], D::Minus1)
        } else {
            let pass = x.narrow(D::Minus1, self.rope_dim, head_dim - self.rope_dim)?;
            Tensor::cat(&[rot1, rot2, pass], D::Minus1)
        }
    }
}

/// Whether `name` is a matrix the model applies as a linear layer (and so may be
/// quantized): attention, MLP/expert projections and lm_head, not the router.
pub fn is_linear_weight(name: &str) -> bool {
    name == "lm_head.weight"
        || [
            ".attention.query_key_value.weight",
            ".attention.dense.weight",
            "_proj.weight",
        ]
        .iter()
        .any(|suffix| name.ends_with(suffix))
}

/// Which matrices are quantized: every linear layer but the router.
#[derive(Clone, Copy)]
struct Load<'a> {
    src: &'a dyn WeightSource,
    quant: Option<Quant>,
}

impl Load<'_> {
    fn linear(&self, name: &str, out: usize, inp: usize, bias: bool) -> Result<LinearWeight> {
        let weight = self
            .src
            .get_linear(&format!("{name}.weight"), [out, inp], self.quant)?;
        if !bias {
            return Ok(weight);
        }
        let b = self.src.get(&format!("{name}.bias"), &[out])?;
        Ok(weight.with_bias(b))
    }
}

/// SwiGLU MLP (dense layers, experts, shared experts).
struct Mlp {
    gate_proj: LinearWeight,
    up_proj: LinearWeight,
    down_proj: LinearWeight,
}

impl Mlp {
    fn load(ld: Load<'_>, prefix: &str, hidden: usize, intermediate: usize) -> Result<Self> {
        Ok(Self {
            gate_proj: ld.linear(&format!("{prefix}.gate_proj"), intermediate, hidden, false)?,
            up_proj: ld.linear(&format!("{prefix}.up_proj"), intermediate, hidden, false)?,
            down_proj: ld.linear(&format!("{prefix}.down_proj"), hidden, intermediate, false)?,
        })
    }

    fn forward(&self, x: &Tensor, train: bool, meter: &CostMeter) -> candle_core::Result<Tensor> {
        let rows = x.dim(0)?;
        for w in [&self.gate_proj, &self.up_proj, &self.down_proj] {
            meter.linear(w, rows);
        }
        let (gate, up) = (self.gate_proj.forward(x)?, self.up_proj.forward(x)?);
        let hidden = if train {
            fused::swiglu(&gate, &up)?
        } else {
            (candle_nn::ops::silu(&gate)? * up)?
        };
        self.down_proj.forward(&hidden)
    }

    fn runs_in_place(&self) -> bool {
        [&self.gate_proj, &self.up_proj, &self.down_proj]
            .iter()
            .all(|w| w.runs_in_place())
    }

    /// The same MLP on `m` row-major f32 rows in the calling thread: no candle ops when
    /// its matrices run in place ([`Mlp::runs_in_place`]).
    fn forward_rows(&self, x: &[f32], m: usize) -> candle_core::Result<Vec<f32>> {
        let gate = self.gate_proj.apply_rows(x, m)?;
        let mut up = self.up_proj.apply_rows(x, m)?;
        // silu(gate) * up, with candle's silu formula.
        for (u, &g) in up.iter_mut().zip(&gate) {
            *u *= g / (1.0 + (-g).exp());
        }
        self.down_proj.apply_rows(&up, m)
    }

    fn memory_bytes(&self) -> usize {
        [&self.gate_proj, &self.up_proj, &self.down_proj]
            .iter()
            .map(|l| l.memory_bytes())
            .sum()
    }
}

/// Sigmoid router with group-limited top-k and `expert_bias` for selection only.
struct Router {
    weight: Tensor,
    expert_bias: Vec<f32>,
    shape: MoeShape,
    scaling: f32,
}

/// Expert choices of one token.
struct Route {
    experts: Vec<usize>,
    weights: Vec<f32>,
}

impl Router {
    /// Expert choices per token and the router logits `[tokens, experts]` (f32, as
    /// `router_dtype: fp32` asks).
    fn route(&self, x: &Tensor, meter: &CostMeter) -> Result<(Vec<Route>, Tensor)> {
        let (experts, hidden) = self.weight.dims2()?;
        meter.add(x.dim(0)? * experts * hidden, 4 * experts * hidden);
        let logits = x.to_dtype(DType::F32)?.matmul(&self.weight.t()?)?;
        let rows = logits.to_vec2::<f32>()?;
        Ok((
            rows.iter().map(|row| self.route_token(row)).collect(),
            logits,
        ))
    }

    /// The routing weights of `routes` as a tensor `[tokens * k]` that carries gradients
    /// to the router (selection itself is discrete, as in the reference).
    fn weights_with_grad(&self, routes: &[Route], logits: &Tensor) -> Result<Tensor> {
        let k = self.shape.experts_per_token;
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
        Ok((weights * self.scaling as f64)?.flatten_all()?)
    }

    fn route_token(&self, logits: &[f32]) -> Route {
        let s = &self.shape;
        let group_size = s.num_experts / s.n_group;
        let scores: Vec<f32> = logits.iter().map(|&l| 1.0 / (1.0 + (-l).exp())).collect();
        let biased: Vec<f32> = scores
            .iter()
            .zip(&self.expert_bias)
            .map(|(a, b)| a + b)
            .collect();
        // A group scores the sum of its two best biased scores.
        let group_scores: Vec<f32> = biased
            .chunks(group_size)
            .map(|g| top_indices(g, 2.min(g.len())).iter().map(|&i| g[i]).sum())
            .collect();
        let kept_groups = top_indices(&group_scores, s.topk_group);
        let mut candidates = vec![f32::NEG_INFINITY; s.num_experts];
        for g in kept_groups {
            let range = g * group_size..(g + 1) * group_size;
            candidates[range.clone()].copy_from_slice(&biased[range]);
        }
        let experts = top_indices(&candidates, s.experts_per_token);
        let chosen: Vec<f32> = experts.iter().map(|&e| scores[e]).collect();
        let weights = if s.experts_per_token > 1 {
            let sum: f32 = chosen.iter().sum::<f32>() + 1e-20;
            chosen.iter().map(|w| w / sum * self.scaling).collect()
        } else {
            chosen.iter().map(|w| w * self.scaling).collect()
        };
        Route { experts, weights }
    }
}

/// Indices of the `k` largest values, largest first (ties: lower index first).
fn top_indices(values: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// Up to this many tokens per forward, inference runs a MoE layer's experts side by side
/// on raw rows ([`SparseMoe::forward_side_by_side`]); longer inputs (prefill) keep
/// candle's multithreaded products per expert.
const EXPERTS_SIDE_BY_SIDE_MAX_TOKENS: usize = 64;

struct SparseMoe {
    router: Router,
    experts: Vec<Mlp>,
    shared: Option<Mlp>,
    /// Every expert's products run on llada's kernels (see [`Mlp::runs_in_place`]).
    runs_in_place: bool,
}

impl SparseMoe {
    fn load(ld: Load<'_>, prefix: &str, cfg: &Llada2Config, shape: MoeShape) -> Result<Self> {
        let store = ld.src;
        let h = cfg.hidden_size;
        let e = shape.num_experts;
        let weight = store.get(&format!("{prefix}.gate.weight"), &[e, h])?;
        let bias_name = format!("{prefix}.gate.expert_bias");
        // The reference registers expert_bias as a zero buffer; checkpoints trained with
        // the bias enabled must carry it.
        let expert_bias = match store.get_optional(&bias_name, &[e])? {
            Some(t) => t.to_dtype(DType::F32)?.to_vec1::<f32>()?,
            None if cfg.moe_router_enable_expert_bias => return Err(store.missing(&bias_name)),
            None => vec![0.0; e],
        };
        let experts = (0..e)
            .map(|i| Mlp::load(ld, &format!("{prefix}.experts.{i}"), h, shape.intermediate))
            .collect::<Result<Vec<_>>>()?;
        let shared = if shape.shared_intermediate > 0 {
            Some(Mlp::load(
                ld,
                &format!("{prefix}.shared_experts"),
                h,
                shape.shared_intermediate,
            )?)
        } else {
            None
        };
        let runs_in_place = experts.iter().chain(&shared).all(Mlp::runs_in_place);
        Ok(Self {
            runs_in_place,
            router: Router {
                weight: weight.to_dtype(DType::F32)?,
                expert_bias,
                shape,
                scaling: cfg.routed_scaling_factor as f32,
            },
            experts,
            shared,
        })
    }

    /// Tokens are grouped by expert so each expert runs once per step on all its tokens.
    fn forward(&self, x: &Tensor, train: bool, meter: &CostMeter) -> Result<Tensor> {
        let (routes, logits) = self.router.route(x, meter)?;
        if !train && x.dim(0)? <= EXPERTS_SIDE_BY_SIDE_MAX_TOKENS && self.runs_in_place {
            return self.forward_side_by_side(x, &routes, meter);
        }
        self.forward_tensors(x, &routes, &logits, train, meter)
    }

    /// Experts as candle ops (gradients, long inputs, candle's quantized products).
    fn forward_tensors(
        &self,
        x: &Tensor,
        routes: &[Route],
        logits: &Tensor,
        train: bool,
        meter: &CostMeter,
    ) -> Result<Tensor> {
        let k = self.router.shape.experts_per_token;
        let device = x.device();
        let weights = if train {
            self.router.weights_with_grad(routes, logits)?
        } else {
            let flat: Vec<f32> = routes
                .iter()
                .flat_map(|r| r.weights.iter().copied())
                .collect();
            Tensor::from_vec(flat, routes.len() * k, device)?
        };
        // For each expert: the tokens it serves and their slot in `weights`.
        let mut rows: Vec<Vec<u32>> = vec![Vec::new(); self.experts.len()];
        let mut slots: Vec<Vec<u32>> = vec![Vec::new(); self.experts.len()];
        for (token, route) in routes.iter().enumerate() {
            for (j, &e) in route.experts.iter().enumerate() {
                rows[e].push(token as u32);
                slots[e].push((token * k + j) as u32);
            }
        }
        let mut outputs = Vec::new();
        let mut all_rows = Vec::new();
        for (e, expert) in self.experts.iter().enumerate() {
            if rows[e].is_empty() {
                continue;
            }
            let n = rows[e].len();
            let index = Tensor::new(rows[e].as_slice(), device)?;
            let y = expert.forward(&x.index_select(&index, 0)?, train, meter)?;
            let slot = Tensor::new(slots[e].as_slice(), device)?;
            let w = weights.index_select(&slot, 0)?.reshape((n, 1))?;
            outputs.push(y.broadcast_mul(&w)?);
            all_rows.extend_from_slice(&rows[e]);
        }
        let routed = Tensor::cat(&outputs, 0)?;
        let index = Tensor::new(all_rows.as_slice(), device)?;
        let mut y = x.zeros_like()?.index_add(&index, &routed, 0)?;
        if let Some(shared) = &self.shared {
            y = (y + shared.forward(x, train, meter)?)?;
        }
        Ok(y)
    }

    /// Inference for few tokens: every expert with tokens (and the shared expert) runs as
    /// one job on raw f32 rows, the jobs side by side on the thread pool. A 32-token block
    /// gives each of 16 experts ~8 rows; as candle ops that is ~10 small ops per expert,
    /// each a thread hand-off, and a weight repacking per product. Sums are taken in the
    /// same order as [`SparseMoe::forward`]'s tensor path.
    fn forward_side_by_side(
        &self,
        x: &Tensor,
        routes: &[Route],
        meter: &CostMeter,
    ) -> Result<Tensor> {
        let (n, h) = x.dims2()?;
        let xs = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let mut rows: Vec<Vec<usize>> = vec![Vec::new(); self.experts.len()];
        let mut gates: Vec<Vec<f32>> = vec![Vec::new(); self.experts.len()];
        for (token, route) in routes.iter().enumerate() {
            for (&e, &w) in route.experts.iter().zip(&route.weights) {
                rows[e].push(token);
                gates[e].push(w);
            }
        }
        // Jobs: the experts with tokens in order, then the shared expert on every token.
        let mut jobs: Vec<(&Mlp, Option<usize>)> = (0..self.experts.len())
            .filter(|&e| !rows[e].is_empty())
            .map(|e| (&self.experts[e], Some(e)))
            .collect();
        if let Some(shared) = &self.shared {
            jobs.push((shared, None));
        }
        for (mlp, e) in &jobs {
            let m = e.map_or(n, |e| rows[e].len());
            for w in [&mlp.gate_proj, &mlp.up_proj, &mlp.down_proj] {
                meter.linear(w, m);
            }
        }
        let outputs = jobs
            .par_iter()
            .map(|&(mlp, e)| match e {
                Some(e) => {
                    let mut input = Vec::with_capacity(rows[e].len() * h);
                    for &t in &rows[e] {
                        input.extend_from_slice(&xs[t * h..(t + 1) * h]);
                    }
                    mlp.forward_rows(&input, rows[e].len())
                }
                None => mlp.forward_rows(&xs, n),
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let mut y = vec![0f32; n * h];
        for (&(_, e), out) in jobs.iter().zip(&outputs) {
            match e {
                Some(e) => {
                    for ((&t, &g), row) in rows[e].iter().zip(&gates[e]).zip(out.chunks_exact(h)) {
                        for (acc, &v) in y[t * h..(t + 1) * h].iter_mut().zip(row) {
                            *acc += v * g;
                        }
                    }
                }
                None => y.iter_mut().zip(out).for_each(|(acc, &v)| *acc += v),
            }
        }
        Ok(Tensor::from_vec(y, (n, h), x.device())?.to_dtype(x.dtype())?)
    }
}

enum FeedForward {
    Dense(Mlp),
    Moe(SparseMoe),
}

impl FeedForward {
    fn forward(&self, x: &Tensor, train: bool, meter: &CostMeter) -> Result<Tensor> {
        match self {
            FeedForward::Dense(mlp) => Ok(mlp.forward(x, train, meter)?),
            FeedForward::Moe(moe) => moe.forward(x, train, meter),
        }
    }
}

struct Attention {
    query_key_value: LinearWeight,
    query_layernorm: Option<Tensor>,
    key_layernorm: Option<Tensor>,
    dense: LinearWeight,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    eps: f64,
}

impl Attention {
    fn load(ld: Load<'_>, prefix: &str, cfg: &Llada2Config) -> Result<Self> {
        let store = ld.src;
        let (h, nh, nkv, d) = (
            cfg.hidden_size,
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim(),
        );
        let norm = |name: &str| -> Result<Option<Tensor>> {
            if cfg.use_qk_norm {
                Ok(Some(store.get(&format!("{prefix}.{name}.weight"), &[d])?))
            } else {
                Ok(None)
            }
        };
        Ok(Self {
            query_key_value: ld.linear(
                &format!("{prefix}.query_key_value"),
                (nh + 2 * nkv) * d,
                h,
                cfg.use_qkv_bias,
            )?,
            query_layernorm: norm("query_layernorm")?,
            key_layernorm: norm("key_layernorm")?,
            dense: ld.linear(&format!("{prefix}.dense"), h, nh * d, cfg.use_bias)?,
            num_heads: nh,
            num_kv_heads: nkv,
            head_dim: d,
            eps: cfg.rms_norm_eps,
        })
    }

    /// Queries, keys and values of every token of a pass (all sequences together, so
    /// the projection, QK-norm and RoPE run once per layer, not once per sequence).
    /// `rope` holds each token's own position.
    fn project(
        &self,
        x: &Tensor,
        rotary: &Rotary,
        rope: &RopeSlice,
        train: bool,
        meter: &CostMeter,
    ) -> Result<Qkv> {
        let (nh, nkv, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let n = x.dim(0)?;
        meter.linear(&self.query_key_value, n);
        let qkv = self
            .query_key_value
            .forward(x)?
            .reshape((n, nh + 2 * nkv, d))?;
        let mut q = qkv.narrow(1, 0, nh)?;
        let mut k = qkv.narrow(1, nh, nkv)?;
        let v = qkv
            .narrow(1, nh + nkv, nkv)?
            .transpose(0, 1)?
            .contiguous()?;
        // QK-norm comes before RoPE.
        if let Some(w) = &self.query_layernorm {
            q = rms_norm(&q, w, self.eps, train)?;
        }
        if let Some(w) = &self.key_layernorm {
            k = rms_norm(&k, w, self.eps, train)?;
        }
        let q = rotary.apply(&q.transpose(0, 1)?.contiguous()?, rope)?;
        let k = rotary.apply(&k.transpose(0, 1)?.contiguous()?, rope)?;
        let q = (q * (d as f64).powf(-0.5))?;
        Ok(Qkv { q, k, v })
    }

    /// Attention of one sequence's tokens (`qkv`, heads first) over its cache plus
    /// themselves; returns the per-head outputs `[heads, len, head_dim]`.
    fn attend(
        &self,
        qkv: &Qkv,
        mask: Option<&Tensor>,
        kv: Kv<'_>,
        meter: &CostMeter,
    ) -> Result<Tensor> {
        let (nh, nkv, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let len = qkv.q.dim(1)?;
        let (k_all, v_all) = match kv {
            Kv::Cache {
                cache,
                layer,
                rows: None,
            } => cache.write_and_view(layer, &qkv.k, &qkv.v)?,
            Kv::Cache {
                cache,
                layer,
                rows: Some((rows, total)),
            } => cache.write_rows_and_view(layer, &qkv.k, &qkv.v, rows, total)?,
            Kv::Train => (qkv.k.clone(), qkv.v.clone()),
        };
        // GQA without copying K/V: query heads of one KV group are adjacent, so
        // [heads, len, d] regroups to [kv_heads, group * len, d].
        let group = nh / nkv;
        // Scores and the weighted sum of values: 2 * heads * len * keys * d.
        meter.add(2 * nh * len * k_all.dim(1)? * d, 0);
        let q = qkv.q.contiguous()?.reshape((nkv, group * len, d))?;
        let scores = q.matmul(&k_all.t()?)?;
        // One pass over the scores with a vectorized exp (candle's softmax calls libm's
        // expf per score after a separate mask add: 8.9% of a block forward of the
        // default model in one thread).
        let probs = fused::masked_softmax(&scores, mask)?;
        Ok(probs.matmul(&v_all)?.reshape((nh, len, d))?)
    }
}

/// Heads-first projections: q `[heads, n, d]` (already scaled), k and v `[kv_heads, n, d]`.
struct Qkv {
    q: Tensor,
    k: Tensor,
    v: Tensor,
}

impl Qkv {
    /// The tokens `offset..offset + len` (one sequence of a batched pass).
    fn narrow(&self, offset: usize, len: usize) -> Result<Self> {
        if offset == 0 && len == self.q.dim(1)? {
            return Ok(Self {
                q: self.q.clone(),
                k: self.k.clone(),
                v: self.v.clone(),
            });
        }
        Ok(Self {
            q: self.q.narrow(1, offset, len)?,
            k: self.k.narrow(1, offset, len)?,
            v: self.v.narrow(1, offset, len)?,
        })
    }
}

/// `[heads, n, d]` per-head outputs to `[n, heads * d]`, the input of `dense`.
fn merge_heads(out: &Tensor) -> Result<Tensor> {
    let (nh, n, d) = out.dims3()?;
    Ok(out.transpose(0, 1)?.reshape((n, nh * d))?)
}

/// Where attention keys/values go: the sequence's cache (inference), or nowhere, with
/// differentiable ops throughout (training).
enum Kv<'a> {
    Cache {
        cache: &'a mut KvCache,
        layer: usize,
        /// A partial pass: the rows computed, of how many positions.
        rows: Option<(&'a [usize], usize)>,
    },
    Train,
}

struct DecoderLayer {
    input_layernorm: Tensor,
    attention: Attention,
    post_attention_layernorm: Tensor,
    mlp: FeedForward,
}

pub struct Llada2Model {
    /// Sequences run through [`Llada2Model::forward`] so far (a batched pass of n
    /// sequences counts n): the ground truth for the forward counts decoding reports.
    sequence_passes: std::sync::atomic::AtomicUsize,
    cost: CostMeter,
    cfg: Llada2Config,
    word_embeddings: Embedding,
    layers: Vec<DecoderLayer>,
    norm: Tensor,
    lm_head: LinearWeight,
    rotary: Rotary,
    device: Device,
}

/// Per-sequence data of one forward pass that every layer shares.
struct SeqPlan {
    offset: usize,
    len: usize,
    mask: Option<Tensor>,
}

impl Llada2Model {
    /// Builds the model from `store`; `quant` quantizes every linear layer but the router.
    pub fn load(
        cfg: &Llada2Config,
        store: &dyn WeightSource,
        quant: Option<Quant>,
    ) -> Result<Self> {
        let ld = Load { src: store, quant };
        let h = cfg.hidden_size;
        let v = cfg.vocab_size;
        let embed = store.get("model.word_embeddings.weight", &[v, h])?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let mlp = if cfg.is_moe_layer(i) {
                let shape = cfg.moe_shape().expect("validated: MoE layers have a shape");
                FeedForward::Moe(SparseMoe::load(ld, &format!("{p}.mlp"), cfg, shape)?)
            } else {
                let inter = cfg.intermediate_size.unwrap_or(0);
                FeedForward::Dense(Mlp::load(ld, &format!("{p}.mlp"), h, inter)?)
            };
            layers.push(DecoderLayer {
                input_layernorm: store.get(&format!("{p}.input_layernorm.weight"), &[h])?,
                attention: Attention::load(ld, &format!("{p}.attention"), cfg)?,
                post_attention_layernorm: store
                    .get(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
                mlp,
            });
        }
        // Tied as transformers ties them: the embedding matrix is the head, whatever
        // `lm_head.weight` the checkpoint may also carry.
        let lm_head = if cfg.tie_word_embeddings {
            LinearWeight::new(embed.clone(), None, quant)?
        } else {
            ld.linear("lm_head", v, h, false)?
        };
        Ok(Self {
            sequence_passes: Default::default(),
            cost: CostMeter::default(),
            cfg: cfg.clone(),
            word_embeddings: Embedding::new(embed, h),
            layers,
            norm: store.get("model.norm.weight", &[h])?,
            lm_head,
            rotary: Rotary::new(cfg),
            device: store.device().clone(),
        })
    }

    pub fn config(&self) -> &Llada2Config {
        &self.cfg
    }

    /// The work of every forward pass so far (inference and training).
    pub fn forward_cost(&self) -> ForwardCost {
        self.cost.total()
    }

    /// How many sequences [`Llada2Model::forward`] has run (a pass over n sequences
    /// counts n).
    pub fn sequence_passes(&self) -> usize {
        self.sequence_passes
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Bytes held by the weights (quantized matrices at their packed size).
    pub fn weight_bytes(&self) -> usize {
        let dense = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        let mut total = dense(self.word_embeddings.embeddings()) + dense(&self.norm);
        total += self.lm_head.memory_bytes();
        for layer in &self.layers {
            let a = &layer.attention;
            total += a.query_key_value.memory_bytes() + a.dense.memory_bytes();
            total += dense(&layer.input_layernorm) + dense(&layer.post_attention_layernorm);
            total += match &layer.mlp {
                FeedForward::Dense(mlp) => mlp.memory_bytes(),
                FeedForward::Moe(moe) => {
                    let experts: usize = moe.experts.iter().map(Mlp::memory_bytes).sum();
                    experts
                        + moe.shared.as_ref().map_or(0, Mlp::memory_bytes)
                        + dense(&moe.router.weight)
                }
            };
        }
        total
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.layers.len())
    }

    /// A cache sized for `positions` up front (no reallocation while decoding).
    pub fn new_cache_for(&self, positions: usize) -> KvCache {
        KvCache::with_capacity(self.layers.len(), positions)
    }

    /// Runs the model on every sequence of `batch` in one pass: the linear and MoE parts
    /// see all tokens together, attention runs per sequence over its own cache.
    /// Returns, per sequence, the logits `[logit_rows.len(), vocab]` (f32).
    pub fn forward(&self, batch: &mut [SeqStep<'_>]) -> Result<Vec<Option<Tensor>>> {
        crate::kernels::on_thread_pool(|| self.forward_on_pool(batch))
    }

    fn forward_on_pool(&self, batch: &mut [SeqStep<'_>]) -> Result<Vec<Option<Tensor>>> {
        let _span = tracing::trace_span!("forward", seqs = batch.len()).entered();
        self.sequence_passes
            .fetch_add(batch.len(), std::sync::atomic::Ordering::Relaxed);
        let mut ids = Vec::new();
        let mut plans = Vec::with_capacity(batch.len());
        let mut positions = Vec::new();
        for step in batch.iter() {
            self.check(step)?;
            plans.push(SeqPlan {
                offset: ids.len(),
                len: step.computed_rows(),
                mask: self.block_mask(step)?,
            });
            match step.compute {
                Some(rows) => {
                    ids.extend(rows.iter().map(|&r| step.tokens[r]));
                    positions.extend(rows.iter().map(|&r| step.start + r));
                }
                None => {
                    ids.extend_from_slice(step.tokens);
                    positions.extend(step.start..step.start + step.tokens.len());
                }
            }
        }
        let rope = self.rotary.at(positions.into_iter(), &self.device)?;
        let ids = Tensor::new(ids.as_slice(), &self.device)?;
        let h = self.run_layers(&ids, None, |li, attention, a| {
            let qkv = attention.project(a, &self.rotary, &rope, false, &self.cost)?;
            let mut heads = Vec::with_capacity(batch.len());
            for (step, plan) in batch.iter_mut().zip(&plans) {
                let kv = Kv::Cache {
                    cache: &mut *step.cache,
                    layer: li,
                    rows: step.compute.map(|rows| (rows, step.tokens.len())),
                };
                let one = qkv.narrow(plan.offset, plan.len)?;
                heads.push(attention.attend(&one, plan.mask.as_ref(), kv, &self.cost)?);
            }
            let heads = if heads.len() == 1 {
                heads.pop().expect("one sequence")
            } else {
                Tensor::cat(&heads, 1)?
            };
            merge_heads(&heads)
        })?;
        let mut logits = Vec::with_capacity(batch.len());
        for (step, plan) in batch.iter_mut().zip(&plans) {
            step.cache.advance(step.commit);
            if step.logit_rows.is_empty() {
                logits.push(None);
                continue;
            }
            // Only the rows a decoder will read go through the final norm and lm_head.
            // Logit rows are rows of `tokens`; `h` holds the computed ones.
            let row_in_h = |r: usize| match step.compute {
                Some(rows) => rows.binary_search(&r).unwrap_or(0),
                None => r,
            };
            let rows: Vec<u32> = step
                .logit_rows
                .iter()
                .map(|&r| (plan.offset + row_in_h(r)) as u32)
                .collect();
            let rows = Tensor::new(rows.as_slice(), &self.device)?;
            let x = rms_norm(
                &h.index_select(&rows, 0)?,
                &self.norm,
                self.cfg.rms_norm_eps,
                false,
            )?;
            self.cost.linear(&self.lm_head, rows.dim(0)?);
            logits.push(Some(self.lm_head.forward(&x)?.to_dtype(DType::F32)?));
        }
        Ok(logits)
    }

    /// The decoder stack on `ids`: embeddings, then per layer `attend` (which returns
    /// the per-head attention outputs for all tokens) and the feed-forward part.
    fn run_layers(
        &self,
        ids: &Tensor,
        train: Option<Option<&Tensor>>,
        mut attend: impl FnMut(usize, &Attention, &Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let eps = self.cfg.rms_norm_eps;
        let mut h = self.word_embeddings.forward(ids)?;
        // Training may perturb embeddings (noise on masked tokens early in conversion).
        if let Some(Some(noise)) = train {
            h = (h + noise)?;
        }
        let train = train.is_some();
        for (li, layer) in self.layers.iter().enumerate() {
            let a = rms_norm(&h, &layer.input_layernorm, eps, train)?;
            let heads = attend(li, &layer.attention, &a)?;
            self.cost.linear(&layer.attention.dense, heads.dim(0)?);
            h = (h + layer.attention.dense.forward(&heads)?)?;
            let b = rms_norm(&h, &layer.post_attention_layernorm, eps, train)?;
            h = (h + layer.mlp.forward(&b, train, &self.cost)?)?;
        }
        Ok(h)
    }

    /// Training forward of one sequence: [`Llada2Model::forward_train_batch`] of one row.
    pub fn forward_train(
        &self,
        tokens: &[u32],
        positions: &[u32],
        mask: &Tensor,
        embed_noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        self.forward_train_batch(&[TrainRow {
            tokens,
            positions,
            mask,
            embed_noise,
            outputs: None,
        }])
    }

    /// Training forward: differentiable ops only, no cache. Each row's tokens sit at its
    /// `positions` (the 2L `[noisy | clean]` layout repeats positions) under its additive
    /// `mask` (`[n, n]`, 0 visible / -inf hidden); `embed_noise` (`[n, hidden]`) is added
    /// to its token embeddings. The rows share every linear and expert product (one
    /// matrix of all their tokens, fewer and larger ops than row by row; SFT steps of
    /// 8 x 2 rows ran 1.16-1.25x faster, `scripts/train-throughput.sh`) and attend each
    /// within itself. Returns the logits of each row's `outputs` (or every token), rows
    /// one after another.
    pub fn forward_train_batch(&self, rows: &[TrainRow<'_>]) -> Result<Tensor> {
        let vocab = self.cfg.vocab_size;
        let hidden = self.cfg.hidden_size;
        let group = self.cfg.num_attention_heads / self.cfg.num_key_value_heads;
        let mut ids = Vec::new();
        let mut positions = Vec::new();
        let mut spans = Vec::with_capacity(rows.len());
        let mut masks = Vec::with_capacity(rows.len());
        for row in rows {
            let n = row.tokens.len();
            let noise_ok = row.embed_noise.is_none_or(|e| e.dims() == [n, hidden]);
            if n == 0 || row.positions.len() != n || row.mask.dims() != [n, n] || !noise_ok {
                return Err(Error::InvalidRequest(format!(
                    "training forward: {n} tokens need {n} positions, a [{n}, {n}] mask and [{n}, {hidden}] noise (got {}, {:?} and {:?})",
                    row.positions.len(),
                    row.mask.dims(),
                    row.embed_noise.map(|e| e.dims().to_vec())
                )));
            }
            if let Some(&id) = row.tokens.iter().find(|&&id| id as usize >= vocab) {
                return Err(Error::TokenOutOfRange { id, vocab });
            }
            if let Some(outputs) = row.outputs {
                if outputs.windows(2).any(|w| w[0] >= w[1]) || outputs.last() >= Some(&(n as u32)) {
                    return Err(Error::InvalidRequest(format!(
                        "training forward: the logits wanted must be increasing tokens of the row's {n}"
                    )));
                }
            }
            spans.push((ids.len(), n));
            ids.extend_from_slice(row.tokens);
            positions.extend(row.positions.iter().map(|&p| p as usize));
            // Query heads of one KV group are stacked (see `attend`): the mask repeats.
            masks.push(if group == 1 {
                row.mask.clone()
            } else {
                Tensor::cat(&vec![row.mask; group], 0)?
            });
        }
        let noise = if rows.iter().any(|r| r.embed_noise.is_some()) {
            let parts = rows
                .iter()
                .map(|r| match r.embed_noise {
                    Some(e) => Ok(e.clone()),
                    None => Tensor::zeros((r.tokens.len(), hidden), DType::F32, &self.device),
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            Some(Tensor::cat(&parts, 0)?)
        } else {
            None
        };
        let rope = self.rotary.at(positions.into_iter(), &self.device)?;
        let ids = Tensor::new(ids.as_slice(), &self.device)?;
        let h = self.run_layers(&ids, Some(noise.as_ref()), |_, attention, a| {
            let qkv = attention.project(a, &self.rotary, &rope, true, &self.cost)?;
            let mut heads = Vec::with_capacity(spans.len());
            for (&(offset, len), mask) in spans.iter().zip(&masks) {
                let one = qkv.narrow(offset, len)?;
                heads.push(attention.attend(&one, Some(mask), Kv::Train, &self.cost)?);
            }
            let heads = if heads.len() == 1 {
                heads.pop().expect("one row")
            } else {
                Tensor::cat(&heads, 1)?
            };
            merge_heads(&heads)
        })?;
        let h = if rows.iter().all(|r| r.outputs.is_none()) {
            h
        } else {
            let mut wanted = Vec::new();
            for (row, &(offset, n)) in rows.iter().zip(&spans) {
                match row.outputs {
                    Some(outputs) => wanted.extend(outputs.iter().map(|&i| offset as u32 + i)),
                    None => wanted.extend(offset as u32..(offset + n) as u32),
                }
            }
            h.index_select(&Tensor::new(wanted.as_slice(), &self.device)?, 0)?
        };
        let x = rms_norm(&h, &self.norm, self.cfg.rms_norm_eps, true)?;
        self.cost.linear(&self.lm_head, x.dim(0)?);
        Ok(self.lm_head.forward(&x)?)
    }

    /// Full-sequence forward without cache; logits of every position. This is what the
    /// reference computes; the engine uses it for verification.
    pub fn forward_full(&self, tokens: &[u32], block_length: usize) -> Result<Tensor> {
        let mut cache = self.new_cache();
        let rows: Vec<usize> = (0..tokens.len()).collect();
        let mut step = [SeqStep {
            tokens,
            start: 0,
            block_length,
            commit: 0,
            logit_rows: &rows,
            compute: None,
            cache: &mut cache,
        }];
        let mut out = self.forward(&mut step)?;
        Ok(out.pop().flatten().expect("rows were requested"))
    }

    fn check(&self, step: &SeqStep<'_>) -> Result<()> {
        let vocab = self.cfg.vocab_size;
        if let Some(&id) = step.tokens.iter().find(|&&id| id as usize >= vocab) {
            return Err(Error::TokenOutOfRange { id, vocab });
        }
        let bad = |msg: String| Err(Error::InvalidRequest(msg));
        if step.tokens.is_empty() {
            return bad("a forward step needs at least one token".into());
        }
        if step.block_length == 0 {
            return bad("block length must be positive".into());
        }
        if step.start != step.cache.len() {
            return bad(format!(
                "step starts at position {} but the cache holds {} positions",
                step.start,
                step.cache.len()
            ));
        }
        if step.commit > step.tokens.len() {
            return bad("cannot commit more tokens than the step has".into());
        }
        if step.logit_rows.iter().any(|&r| r >= step.tokens.len()) {
            return bad("logit row outside the step".into());
        }
        if let Some(rows) = step.compute {
            let b = step.block_length;
            let one_block = step.start / b == (step.start + step.tokens.len() - 1) / b;
            if rows.is_empty()
                || rows.windows(2).any(|w| w[0] >= w[1])
                || rows.last().is_some_and(|&r| r >= step.tokens.len())
            {
                return bad("a partial pass needs increasing rows inside the step".into());
            }
            if step.commit > 0 || !one_block {
                return bad("a partial pass covers one block and commits nothing".into());
            }
            if step
                .logit_rows
                .iter()
                .any(|r| rows.binary_search(r).is_err())
            {
                return bad("a partial pass gives logits of computed rows only".into());
            }
        }
        let end = step.start + step.tokens.len();
        if end > self.cfg.max_position_embeddings {
            return bad(format!(
                "positions up to {end} exceed max_position_embeddings {}",
                self.cfg.max_position_embeddings
            ));
        }
        Ok(())
    }

    /// Additive block-causal mask `[group * len, cache + len]` for a step whose tokens
    /// span more than one block; `None` when they all lie in one block (no mask needed:
    /// the cache holds only earlier, fully visible blocks).
    fn block_mask(&self, step: &SeqStep<'_>) -> Result<Option<Tensor>> {
        let b = step.block_length;
        let len = step.tokens.len();
        let (first, last) = (step.start / b, (step.start + len - 1) / b);
        if first == last {
            return Ok(None);
        }
        let cached = step.cache.len();
        let keys = cached + len;
        let mut row = vec![0f32; keys];
        let mut mask = Vec::with_capacity(len * keys);
        for i in 0..len {
            let q_block = (step.start + i) / b;
            for (j, m) in row.iter_mut().enumerate().skip(cached) {
                let k_block = (step.start + j - cached) / b;
                *m = if k_block <= q_block {
                    0.0
                } else {
                    f32::NEG_INFINITY
                };
            }
            mask.extend_from_slice(&row);
        }
        let mask = Tensor::from_vec(mask, (len, keys), &self.device)?;
        let group = self.cfg.num_attention_heads / self.cfg.num_key_value_heads;
        Ok(Some(if group == 1 {
            mask
        } else {
            Tensor::cat(&vec![&mask; group], 0)?
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::{preset, SyntheticSource};

    #[test]
    fn experts_side_by_side_equal_the_tensor_path() {
        let mut json = preset("llada2-63m", Some(2)).unwrap();
        json["hidden_size"] = 64.into();
        json["moe_intermediate_size"] = 32.into();
        let cfg = Llada2Config::from_json(json, std::path::Path::new("test")).unwrap();
        let src = SyntheticSource::new(3);
        for quant in [None, Some(Quant::Q8_0)] {
            let ld = Load { src: &src, quant };
            let moe = SparseMoe::load(ld, "m", &cfg, cfg.moe_shape().unwrap()).unwrap();
            assert!(moe.runs_in_place);
            let meter = CostMeter::default();
            for tokens in [1, 7, 33] {
                let x = Tensor::randn(0f32, 1.0, (tokens, 64), &Device::Cpu).unwrap();
                let (routes, logits) = moe.router.route(&x, &meter).unwrap();
                let fast = moe.forward_side_by_side(&x, &routes, &meter).unwrap();
                let plain = moe
                    .forward_tensors(&x, &routes, &logits, false, &meter)
                    .unwrap();
                let diff = (fast - &plain).unwrap().abs().unwrap().max_all().unwrap();
                let scale = plain.abs().unwrap().max_all().unwrap();
                let (diff, scale) = (
                    diff.to_scalar::<f32>().unwrap(),
                    scale.to_scalar::<f32>().unwrap(),
                );
                assert!(
                    diff <= 1e-5 * scale.max(1.0),
                    "{quant:?}, {tokens} tokens: {diff} (scale {scale})"
                );
            }
        }
    }
}
