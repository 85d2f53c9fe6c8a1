//! The CPU backend: candle tensors, with llada's kernels ([`crate::kernels`]) for the
//! products, the masked softmax and a MoE layer's experts side by side.
//!
//! It also counts the work of the ops it runs ([`ForwardCost`]): multiply-adds and
//! weight bytes read, measured around each op rather than by the model's math.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use candle_core::{DType, Tensor, D};
use rayon::prelude::*;

use super::{outputs_from_logits, Backend, Heads, Inference, Mlp, MoeInput, RopeTables};
use crate::cache::KvCache;
use crate::error::Result;
use crate::kernels;
use crate::quant::LinearWeight;
use crate::step::{BlockMask, PassRows, SeqStep, StepOutput, Wanted};

/// Attention is computed in pieces of query rows whose scores take at most this many
/// bytes: a long prefill over a long context never holds all of its scores (or mask).
const ATTENTION_SCORE_BYTES: usize = 64 << 20;

/// Up to this many tokens per forward, a MoE layer's experts run side by side on raw
/// rows ([`Cpu::experts_side_by_side`]); longer inputs (prefill) keep candle's
/// multithreaded products per expert.
const EXPERTS_SIDE_BY_SIDE_MAX_TOKENS: usize = 64;

/// The work forward passes did: multiply-accumulates of their matrix products and
/// attention, bytes of weights read (each matrix once per pass, an expert only when a
/// token was routed to it), and sequences run (a batched pass of n sequences counts n).
/// Cumulative; take differences around the passes measured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ForwardCost {
    pub macs: u64,
    pub weight_bytes: u64,
    /// Of `weight_bytes`: the routed experts' (each expert a pass used, once).
    pub expert_bytes: u64,
    pub sequence_passes: u64,
}

impl std::ops::Sub for ForwardCost {
    type Output = ForwardCost;

    /// The work done between two readings.
    fn sub(self, earlier: ForwardCost) -> ForwardCost {
        ForwardCost {
            macs: self.macs - earlier.macs,
            weight_bytes: self.weight_bytes - earlier.weight_bytes,
            expert_bytes: self.expert_bytes - earlier.expert_bytes,
            sequence_passes: self.sequence_passes - earlier.sequence_passes,
        }
    }
}

#[derive(Default)]
pub(super) struct CostMeter {
    macs: AtomicU64,
    weight_bytes: AtomicU64,
    expert_bytes: AtomicU64,
    sequence_passes: AtomicUsize,
}

impl CostMeter {
    pub(super) fn add(&self, macs: usize, weight_bytes: usize) {
        self.macs.fetch_add(macs as u64, Ordering::Relaxed);
        self.weight_bytes
            .fetch_add(weight_bytes as u64, Ordering::Relaxed);
    }

    /// The routed experts' weight bytes a MoE layer reads (also counted, product by
    /// product, in `weight_bytes`).
    pub(super) fn experts_read<B: Backend>(&self, b: &B, moe: &MoeInput<'_, B>) {
        let mut used = vec![false; moe.experts.len()];
        for route in moe.routes {
            for &e in &route.experts {
                used[e] = true;
            }
        }
        let bytes: usize = moe
            .experts
            .iter()
            .zip(&used)
            .filter(|(_, &u)| u)
            .map(|(m, _)| super::mlp_bytes(b, m))
            .sum();
        self.expert_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(super) fn sequences(&self, n: usize) {
        self.sequence_passes.fetch_add(n, Ordering::Relaxed);
    }

    pub(super) fn total(&self) -> ForwardCost {
        ForwardCost {
            macs: self.macs.load(Ordering::Relaxed),
            weight_bytes: self.weight_bytes.load(Ordering::Relaxed),
            expert_bytes: self.expert_bytes.load(Ordering::Relaxed),
            sequence_passes: self.sequence_passes.load(Ordering::Relaxed) as u64,
        }
    }

    /// `rows` rows through `w`: the matrix is read once, each row costs in * out MACs.
    fn linear(&self, w: &LinearWeight, rows: usize) {
        let (out, inp) = w.dims();
        self.add(rows * out * inp, w.memory_bytes());
    }
}

/// The CPU backend (see the module docs).
#[derive(Default)]
pub struct Cpu {
    meter: CostMeter,
}

impl Cpu {
    pub fn new() -> Self {
        Self::default()
    }

    /// The work of every op this backend ran so far.
    pub fn cost(&self) -> ForwardCost {
        self.meter.total()
    }

    /// The experts of a MoE layer, expert after expert as tensor ops, mixed with
    /// `weights` (`[tokens * k]`, each token's routes in order): the path for long inputs
    /// and for backends whose ops carry gradients (`b` runs the experts' MLPs).
    pub fn experts_by_expert<B: Backend<Tensor = Tensor>>(
        b: &B,
        x: &Tensor,
        moe: &MoeInput<'_, B>,
        weights: &Tensor,
    ) -> Result<Tensor> {
        let device = x.device();
        let k = moe.routes.first().map_or(0, |r| r.experts.len());
        // For each expert: the tokens it serves and their slot in `weights`.
        let mut rows: Vec<Vec<u32>> = vec![Vec::new(); moe.experts.len()];
        let mut slots: Vec<Vec<u32>> = vec![Vec::new(); moe.experts.len()];
        for (token, route) in moe.routes.iter().enumerate() {
            for (j, &e) in route.experts.iter().enumerate() {
                rows[e].push(token as u32);
                slots[e].push((token * k + j) as u32);
            }
        }
        let mut outputs = Vec::new();
        let mut all_rows = Vec::new();
        for (e, expert) in moe.experts.iter().enumerate() {
            if rows[e].is_empty() {
                continue;
            }
            let n = rows[e].len();
            let index = Tensor::new(rows[e].as_slice(), device)?;
            let y = b.mlp(expert, &x.index_select(&index, 0)?)?;
            let slot = Tensor::new(slots[e].as_slice(), device)?;
            let w = weights.index_select(&slot, 0)?.reshape((n, 1))?;
            outputs.push(y.broadcast_mul(&w)?);
            all_rows.extend_from_slice(&rows[e]);
        }
        let routed = Tensor::cat(&outputs, 0)?;
        let index = Tensor::new(all_rows.as_slice(), device)?;
        let mut y = x.zeros_like()?.index_add(&index, &routed, 0)?;
        if let Some(shared) = moe.shared {
            y = (y + b.mlp(shared, x)?)?;
        }
        Ok(y)
    }

    /// Few tokens: every expert with tokens (and the shared expert) runs as one job on
    /// raw f32 rows, the jobs side by side on the thread pool. A 32-token block gives
    /// each of 16 experts ~8 rows; as candle ops that is ~10 small ops per expert, each a
    /// thread hand-off, and a weight repacking per product. Sums are taken in the same
    /// order as [`Cpu::experts_by_expert`].
    fn experts_side_by_side(&self, x: &Tensor, moe: &MoeInput<'_, Self>) -> Result<Tensor> {
        let (n, h) = x.dims2()?;
        let xs = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let mut rows: Vec<Vec<usize>> = vec![Vec::new(); moe.experts.len()];
        let mut gates: Vec<Vec<f32>> = vec![Vec::new(); moe.experts.len()];
        for (token, route) in moe.routes.iter().enumerate() {
            for (&e, &w) in route.experts.iter().zip(&route.weights) {
                rows[e].push(token);
                gates[e].push(w);
            }
        }
        // Jobs: the experts with tokens in order, then the shared expert on every token.
        let mut jobs: Vec<(&Mlp<Self>, Option<usize>)> = (0..moe.experts.len())
            .filter(|&e| !rows[e].is_empty())
            .map(|e| (&moe.experts[e], Some(e)))
            .collect();
        if let Some(shared) = moe.shared {
            jobs.push((shared, None));
        }
        for (mlp, e) in &jobs {
            let m = e.map_or(n, |e| rows[e].len());
            for w in [&mlp.gate_proj, &mlp.up_proj, &mlp.down_proj] {
                self.meter.linear(w, m);
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
                    mlp_rows(mlp, &input, rows[e].len())
                }
                None => mlp_rows(mlp, &xs, n),
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

/// Whether every product of `w` runs on llada's kernels in the calling thread.
fn mlp_in_place(w: &Mlp<Cpu>) -> bool {
    [&w.gate_proj, &w.up_proj, &w.down_proj]
        .iter()
        .all(|l| l.runs_in_place())
}

/// A SwiGLU MLP on `m` row-major f32 rows in the calling thread, with candle's silu
/// formula.
fn mlp_rows(w: &Mlp<Cpu>, x: &[f32], m: usize) -> candle_core::Result<Vec<f32>> {
    let gate = w.gate_proj.apply_rows(x, m)?;
    let mut up = w.up_proj.apply_rows(x, m)?;
    for (u, &g) in up.iter_mut().zip(&gate) {
        *u *= g / (1.0 + (-g).exp());
    }
    w.down_proj.apply_rows(&up, m)
}

/// Rotary tables as tensors `[tokens, rope_dim / 2]`.
pub struct Rope {
    cos: Tensor,
    sin: Tensor,
    rope_dim: usize,
}

impl Rope {
    pub fn new(tables: RopeTables, device: &candle_core::Device) -> Result<Self> {
        let half = tables.rope_dim / 2;
        Ok(Self {
            cos: Tensor::from_vec(tables.cos, (tables.tokens, half), device)?,
            sin: Tensor::from_vec(tables.sin, (tables.tokens, half), device)?,
            rope_dim: tables.rope_dim,
        })
    }

    /// Rotate-half RoPE on the first `rope_dim` dims of `x: [heads, tokens, head_dim]`.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        if self.rope_dim == 0 {
            return Ok(x.clone());
        }
        let head_dim = x.dim(D::Minus1)?;
        let half = self.rope_dim / 2;
        let x1 = x.narrow(D::Minus1, 0, half)?;
        let x2 = x.narrow(D::Minus1, half, half)?;
        let rot1 = (x1.broadcast_mul(&self.cos)? - x2.broadcast_mul(&self.sin)?)?;
        let rot2 = (x2.broadcast_mul(&self.cos)? + x1.broadcast_mul(&self.sin)?)?;
        Ok(if self.rope_dim == head_dim {
            Tensor::cat(&[rot1, rot2], D::Minus1)?
        } else {
            let pass = x.narrow(D::Minus1, self.rope_dim, head_dim - self.rope_dim)?;
            Tensor::cat(&[rot1, rot2, pass], D::Minus1)?
        })
    }
}

/// The heads-first queries, keys and values of a fused QKV projection.
pub fn split_heads(qkv: &Tensor, heads: Heads) -> Result<(Tensor, Tensor, Tensor)> {
    let Heads { query, kv, dim } = heads;
    let n = qkv.dim(0)?;
    let qkv = qkv.reshape((n, query + 2 * kv, dim))?;
    let first = |at: usize, count: usize| -> Result<Tensor> {
        Ok(qkv.narrow(1, at, count)?.transpose(0, 1)?.contiguous()?)
    };
    Ok((first(0, query)?, first(query, kv)?, first(query + kv, kv)?))
}

/// The two ops attention is made of besides reshaping: a batched matrix product and a
/// softmax under an additive mask (each backend brings its own: with or without
/// gradients).
pub struct AttentionOps<M, S> {
    pub matmul: M,
    pub softmax: S,
}

/// Attention of heads-first queries `[heads, len, d]` over keys and values
/// `[kv_heads, keys, d]` under an additive mask (`[group * len, keys]`, the mask
/// repeated for the query heads of one KV group). Returns `[heads, len, d]`.
pub fn grouped_attention<M, S>(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    ops: &AttentionOps<M, S>,
) -> Result<Tensor>
where
    M: Fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>,
    S: Fn(&Tensor, Option<&Tensor>) -> candle_core::Result<Tensor>,
{
    let (heads, len, d) = q.dims3()?;
    let kv_heads = k.dim(0)?;
    // GQA without copying K/V: query heads of one KV group are adjacent, so
    // [heads, len, d] regroups to [kv_heads, group * len, d].
    let group = heads / kv_heads;
    let q = q.contiguous()?.reshape((kv_heads, group * len, d))?;
    let scores = (ops.matmul)(&q, &k.t()?)?;
    let probs = (ops.softmax)(&scores, mask)?;
    Ok((ops.matmul)(&probs, v)?.reshape((heads, len, d))?)
}

/// Attention of each sequence of a pass within itself: `one(i, q, k, v)` gives the
/// per-head outputs `[heads, len, d]` of sequence `i` (`spans[i]`: its first token and
/// length) from its own queries, keys and values; returns them one after another as
/// `[tokens, heads * d]`.
pub fn attend_by_sequence(
    spans: &[(usize, usize)],
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mut one: impl FnMut(usize, &Tensor, &Tensor, &Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let whole = spans.len() == 1;
    let mut outputs = Vec::with_capacity(spans.len());
    for (i, &(offset, len)) in spans.iter().enumerate() {
        let narrow = |t: &Tensor| -> Result<Tensor> {
            Ok(if whole {
                t.clone()
            } else {
                t.narrow(1, offset, len)?
            })
        };
        outputs.push(one(i, &narrow(q)?, &narrow(k)?, &narrow(v)?)?);
    }
    let heads = if outputs.len() == 1 {
        outputs.pop().expect("one sequence")
    } else {
        Tensor::cat(&outputs, 1)?
    };
    merge_heads(&heads)
}

/// `[heads, n, d]` per-head outputs to `[n, heads * d]`, the input of the output
/// projection.
fn merge_heads(out: &Tensor) -> Result<Tensor> {
    let (heads, n, d) = out.dims3()?;
    Ok(out.transpose(0, 1)?.reshape((n, heads * d))?)
}

/// [`grouped_attention`] with llada's kernels, `piece` query rows at a time (each piece's
/// scores and mask rows only).
fn attend_in_pieces(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&BlockMask>,
    piece: usize,
) -> Result<Tensor> {
    // One pass over the scores with a vectorized exp (candle's softmax calls libm's expf
    // per score after a separate mask add).
    let ops = AttentionOps {
        matmul: kernels::matmul,
        softmax: kernels::masked_softmax,
    };
    let (heads, len, _) = q.dims3()?;
    let group = heads / k.dim(0)?;
    let mut outputs = Vec::with_capacity(len.div_ceil(piece));
    for from in (0..len).step_by(piece) {
        let n = piece.min(len - from);
        let q = if n == len {
            q.clone()
        } else {
            q.narrow(1, from, n)?
        };
        let mask = match mask {
            Some(mask) => Some(group_mask(mask, from, n, group)?),
            None => None,
        };
        outputs.push(grouped_attention(&q, k, v, mask.as_ref(), &ops)?);
    }
    Ok(if outputs.len() == 1 {
        outputs.pop().expect("one piece")
    } else {
        Tensor::cat(&outputs, 1)?
    })
}

/// Rows `from..from + n` of a block mask as attention takes it: `[group * n, keys]`, the
/// rows repeated for the query heads of one KV group (stacked in attention).
fn group_mask(mask: &BlockMask, from: usize, n: usize, group: usize) -> Result<Tensor> {
    let rows = Tensor::from_vec(
        mask.rows(from, n),
        (n, mask.keys()),
        &candle_core::Device::Cpu,
    )?;
    Ok(if group == 1 {
        rows
    } else {
        Tensor::cat(&vec![&rows; group], 0)?
    })
}

/// One sequence's attention in a CPU pass.
struct SeqAttention<'p> {
    offset: usize,
    len: usize,
    /// The block-causal mask, when the tokens span blocks.
    mask: Option<BlockMask>,
    cache: &'p mut KvCache,
    /// A partial pass: the rows computed, of how many positions.
    rows: Option<(&'p [usize], usize)>,
}

/// A CPU inference pass.
pub struct CpuPass<'p> {
    ids: Tensor,
    rope: Rope,
    seqs: Vec<SeqAttention<'p>>,
    /// Rows of the final hidden states that go through the head, and how many belong to
    /// each sequence.
    outputs: Tensor,
    outputs_per_seq: Vec<usize>,
    wanted: Vec<Wanted>,
}

impl Backend for Cpu {
    type Tensor = Tensor;
    type Linear = LinearWeight;
    type Pass<'p> = CpuPass<'p>;

    fn tensor(&self, t: Tensor) -> Result<Tensor> {
        Ok(t)
    }

    fn linear_weight(&self, w: LinearWeight) -> Result<LinearWeight> {
        Ok(w)
    }

    fn tensor_bytes(&self, t: &Tensor) -> usize {
        t.elem_count() * t.dtype().size_in_bytes()
    }

    fn linear_bytes(&self, w: &LinearWeight) -> usize {
        w.memory_bytes()
    }

    fn embed(&self, table: &Tensor, pass: &CpuPass<'_>) -> Result<Tensor> {
        Ok(table.index_select(&pass.ids, 0)?)
    }

    fn rms_norm(&self, x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
        Ok(candle_nn::ops::rms_norm(
            &x.contiguous()?,
            weight,
            eps as f32,
        )?)
    }

    fn linear(&self, x: &Tensor, w: &LinearWeight) -> Result<Tensor> {
        self.meter
            .linear(w, x.elem_count() / x.dim(D::Minus1)?.max(1));
        Ok(w.forward(x)?)
    }

    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        Ok((a + b)?)
    }

    fn swiglu(&self, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
        Ok((candle_nn::ops::silu(gate)? * up)?)
    }

    fn split_heads(&self, qkv: &Tensor, heads: Heads) -> Result<(Tensor, Tensor, Tensor)> {
        split_heads(qkv, heads)
    }

    fn rope(&self, x: &Tensor, pass: &CpuPass<'_>) -> Result<Tensor> {
        pass.rope.apply(x)
    }

    fn scale(&self, x: &Tensor, factor: f64) -> Result<Tensor> {
        Ok((x * factor)?)
    }

    fn attend(
        &self,
        pass: &mut CpuPass<'_>,
        layer: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<Tensor> {
        let (heads, _, d) = q.dims3()?;
        let spans: Vec<(usize, usize)> = pass.seqs.iter().map(|s| (s.offset, s.len)).collect();
        attend_by_sequence(&spans, q, k, v, |i, q, k, v| {
            let seq = &mut pass.seqs[i];
            let (k_all, v_all) = match seq.rows {
                None => seq.cache.write_and_view(layer, k, v)?,
                Some((rows, total)) => seq.cache.write_rows_and_view(layer, k, v, rows, total)?,
            };
            let keys = k_all.dim(1)?;
            // Scores and the weighted sum of values: 2 * heads * len * keys * d.
            self.meter.add(2 * heads * seq.len * keys * d, 0);
            let piece = (ATTENTION_SCORE_BYTES / (4 * heads * keys).max(1)).max(1);
            attend_in_pieces(q, &k_all, &v_all, seq.mask.as_ref(), piece)
        })
    }

    fn router_logits(&self, x: &Tensor, weight: &Tensor) -> Result<(Tensor, Vec<f32>)> {
        let (experts, hidden) = weight.dims2()?;
        self.meter
            .add(x.dim(0)? * experts * hidden, 4 * experts * hidden);
        let logits = kernels::matmul(&x.to_dtype(DType::F32)?, &weight.t()?)?;
        let host = logits.flatten_all()?.to_vec1::<f32>()?;
        Ok((logits, host))
    }

    fn experts(&self, x: &Tensor, moe: &MoeInput<'_, Self>) -> Result<Tensor> {
        self.meter.experts_read(self, moe);
        let in_place = moe.experts.iter().chain(moe.shared).all(mlp_in_place);
        if in_place && x.dim(0)? <= EXPERTS_SIDE_BY_SIDE_MAX_TOKENS {
            return self.experts_side_by_side(x, moe);
        }
        let weights: Vec<f32> = moe
            .routes
            .iter()
            .flat_map(|r| r.weights.iter().copied())
            .collect();
        let n = weights.len();
        let weights = Tensor::from_vec(weights, n, x.device())?;
        Self::experts_by_expert(self, x, moe, &weights)
    }

    fn output_rows(&self, h: &Tensor, pass: &CpuPass<'_>) -> Result<Option<Tensor>> {
        if pass.outputs.dim(0)? == 0 {
            return Ok(None);
        }
        Ok(Some(h.index_select(&pass.outputs, 0)?))
    }
}

impl Inference for Cpu {
    fn pass<'p>(
        &self,
        batch: &'p mut [SeqStep<'_>],
        rows: PassRows,
        rope: RopeTables,
        _heads: Heads,
    ) -> Result<CpuPass<'p>> {
        let device = candle_core::Device::Cpu;
        self.meter.sequences(batch.len());
        let mut seqs = Vec::with_capacity(batch.len());
        for (step, &offset) in batch.iter_mut().zip(&rows.offsets) {
            seqs.push(SeqAttention {
                offset,
                len: step.computed_rows(),
                mask: step.block_mask(),
                rows: step.compute.map(|rows| (rows, step.tokens.len())),
                cache: &mut *step.cache,
            });
        }
        Ok(CpuPass {
            ids: Tensor::new(rows.tokens.as_slice(), &device)?,
            rope: Rope::new(rope, &device)?,
            seqs,
            outputs: Tensor::new(rows.outputs.as_slice(), &device)?,
            outputs_per_seq: rows.outputs_per_seq,
            wanted: rows.wanted,
        })
    }

    fn outputs(
        &self,
        pass: CpuPass<'_>,
        logits: Option<Tensor>,
    ) -> Result<Vec<Option<StepOutput>>> {
        let Some(logits) = logits else {
            return Ok(pass.outputs_per_seq.iter().map(|_| None).collect());
        };
        outputs_from_logits(
            &logits.to_dtype(DType::F32)?,
            &pass.outputs_per_seq,
            &pass.wanted,
        )
    }

    fn run<R: Send>(&self, work: impl FnOnce() -> R + Send) -> R {
        kernels::on_thread_pool(work)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Route;
    use crate::quant::Quant;
    use crate::synthetic::SyntheticSource;
    use crate::weights::WeightSource;

    fn mlp(src: &SyntheticSource, name: &str, quant: Option<Quant>) -> Mlp<Cpu> {
        let w = |part: &str, shape: [usize; 2]| {
            src.get_linear(&format!("{name}.{part}.weight"), shape, quant)
                .unwrap()
        };
        Mlp {
            gate_proj: w("gate_proj", [32, 64]),
            up_proj: w("up_proj", [32, 64]),
            down_proj: w("down_proj", [64, 32]),
        }
    }

    /// Attention in pieces of query rows (as over long contexts) equals it in one piece,
    /// with a block mask across blocks and a cache before them.
    #[test]
    fn attention_in_pieces_equals_attention_at_once() {
        let device = candle_core::Device::Cpu;
        let (heads, kv_heads, len, cached, d) = (4, 2, 11, 5, 8);
        let q = Tensor::randn(0f32, 1.0, (heads, len, d), &device).unwrap();
        let k = Tensor::randn(0f32, 1.0, (kv_heads, cached + len, d), &device).unwrap();
        let v = Tensor::randn(0f32, 1.0, (kv_heads, cached + len, d), &device).unwrap();
        let mask = BlockMask::new(cached, 4, cached, len);
        let whole = attend_in_pieces(&q, &k, &v, Some(&mask), len).unwrap();
        for piece in [1, 3, 4] {
            let pieces = attend_in_pieces(&q, &k, &v, Some(&mask), piece).unwrap();
            let diff = (&pieces - &whole)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap();
            // Products of other shapes sum in another order: equal to f32 rounding (a
            // random draw in CI once differed by just over 1e-6).
            let diff = diff.to_scalar::<f32>().unwrap();
            assert!(diff < 1e-5, "piece {piece}: {diff}");
        }
        // The mask hides later blocks: the first query (block 1 of 4-position blocks
        // from position 5) sees positions up to 7 only.
        let row: Vec<f32> = mask.rows(0, 1);
        assert_eq!(row.iter().filter(|v| v.is_finite()).count(), 8);
    }

    #[test]
    fn experts_side_by_side_equal_the_tensor_path() {
        let src = SyntheticSource::new(3);
        let cpu = Cpu::new();
        for quant in [None, Some(Quant::Q8_0)] {
            let experts: Vec<_> = (0..8).map(|e| mlp(&src, &format!("e{e}"), quant)).collect();
            let shared = mlp(&src, "shared", quant);
            assert!(experts.iter().all(mlp_in_place));
            for tokens in [1, 7, 33] {
                let routes: Vec<Route> = (0..tokens)
                    .map(|t| Route {
                        experts: vec![t % 8, (t * 3 + 1) % 8],
                        weights: vec![0.7, 0.3 + t as f32 / 100.0],
                    })
                    .collect();
                let logits =
                    Tensor::zeros((tokens, 8), DType::F32, &candle_core::Device::Cpu).unwrap();
                let moe = MoeInput {
                    experts: &experts,
                    shared: Some(&shared),
                    routes: &routes,
                    router_logits: &logits,
                    scaling: 1.0,
                };
                let x = Tensor::randn(0f32, 1.0, (tokens, 64), &candle_core::Device::Cpu).unwrap();
                let fast = cpu.experts_side_by_side(&x, &moe).unwrap();
                let flat: Vec<f32> = routes.iter().flat_map(|r| r.weights.clone()).collect();
                let weights =
                    Tensor::from_vec(flat, 2 * tokens, &candle_core::Device::Cpu).unwrap();
                let plain = Cpu::experts_by_expert(&cpu, &x, &moe, &weights).unwrap();
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
