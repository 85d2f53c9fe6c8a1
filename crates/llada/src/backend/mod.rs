//! The operations a forward pass is made of, one implementation per device: the seam
//! between the model's math ([`crate::Llada2`], which says in which order a layer calls
//! them) and the kernels that run them.
//!
//! [`Backend`] is the op set (ggml's idea: one set of ops, several devices). A backend
//! owns the representation of tensors and weight matrices on its device and what one
//! pass carries besides activations (positions, caches or masks). [`Inference`] adds
//! what decoding needs: a pass from [`crate::SeqStep`]s (sequences with KV caches) and
//! each sequence's logits back on the host.
//!
//! - [`Cpu`]: candle tensors and llada's CPU kernels (`crate::kernels`).
//! - [`Gpu`]: WGSL compute shaders through `wgpu` (Vulkan, Metal, DX12), weights and KV
//!   caches on the device.
//! - The trainer (crate `llada-train`) implements [`Backend`] for training: the same ops
//!   with gradients, no cache.
//!
//! A new device implements both traits and a weight upload (`tensor`, `linear_weight`);
//! the model file stays as it is.

mod cpu;
pub mod gpu;

pub use cpu::{
    attend_by_sequence, grouped_attention, split_heads, AttentionOps, Cpu, CpuPass, ForwardCost,
    Rope,
};

pub use crate::config::Heads;
use crate::error::Result;
use crate::quant::LinearWeight;
use crate::step::{GreedyPick, PassRows, SeqStep, StepOutput, Wanted};
pub use gpu::{DeviceChoice, Gpu};

/// A SwiGLU MLP: `down(silu(gate(x)) * up(x))` (dense layers, experts, shared experts).
pub struct Mlp<B: Backend> {
    pub gate_proj: B::Linear,
    pub up_proj: B::Linear,
    pub down_proj: B::Linear,
}

/// The experts one token was routed to and their mixing weights.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub experts: Vec<usize>,
    pub weights: Vec<f32>,
}

/// What a MoE layer's expert part computes: `Σ weight · expert(x)` over each token's
/// routes, plus the shared expert on every token.
pub struct MoeInput<'a, B: Backend> {
    pub experts: &'a [Mlp<B>],
    pub shared: Option<&'a Mlp<B>>,
    /// One per token, in order.
    pub routes: &'a [Route],
    /// The router's logits `[tokens, experts]` on the device (a backend that trains
    /// derives the mixing weights from them again, with gradients).
    pub router_logits: &'a B::Tensor,
    /// `routed_scaling_factor`, already applied to `routes`' weights.
    pub scaling: f32,
}

/// Rotary tables of the positions a pass computes, row by row: `[tokens, rope_dim / 2]`
/// each (rotate-half RoPE on the first `rope_dim` dims of a head).
#[derive(Debug, Clone, PartialEq)]
pub struct RopeTables {
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    pub tokens: usize,
    pub rope_dim: usize,
}

/// The op set of a forward pass. Activations are matrices with one row per token of the
/// pass (`[tokens, width]`); attention's are heads-first (`[heads, tokens, head_dim]`).
pub trait Backend: Send + Sync + Sized {
    /// A tensor on the device (activations, norm weights, the embedding table).
    type Tensor: Clone + Send + Sync;
    /// A linear layer's weight `[out, in]` (dense or quantized) on the device.
    type Linear: Send + Sync;
    /// What one pass carries besides activations: its tokens and their positions'
    /// rotary tables, each sequence's span and KV cache or attention mask, and the rows
    /// that go through the head.
    type Pass<'p>;

    /// A weight tensor moved to the device.
    fn tensor(&self, t: candle_core::Tensor) -> Result<Self::Tensor>;
    /// A linear layer's weight moved to the device (kept in its quantized form).
    fn linear_weight(&self, w: LinearWeight) -> Result<Self::Linear>;
    /// Bytes a tensor occupies on the device.
    fn tensor_bytes(&self, t: &Self::Tensor) -> usize;
    /// Bytes a linear weight occupies on the device (quantized: packed size).
    fn linear_bytes(&self, w: &Self::Linear) -> usize;

    /// The embeddings of the pass's tokens.
    fn embed(&self, table: &Self::Tensor, pass: &Self::Pass<'_>) -> Result<Self::Tensor>;
    /// RMSNorm over the last dimension.
    fn rms_norm(&self, x: &Self::Tensor, weight: &Self::Tensor, eps: f64) -> Result<Self::Tensor>;
    /// `x @ W^T (+ bias)`.
    fn linear(&self, x: &Self::Tensor, w: &Self::Linear) -> Result<Self::Tensor>;
    fn add(&self, a: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor>;
    /// `silu(gate) * up`.
    fn swiglu(&self, gate: &Self::Tensor, up: &Self::Tensor) -> Result<Self::Tensor>;
    /// A fused QKV projection `[tokens, (query + 2 kv) * dim]` as heads-first queries,
    /// keys and values.
    fn split_heads(
        &self,
        qkv: &Self::Tensor,
        heads: Heads,
    ) -> Result<(Self::Tensor, Self::Tensor, Self::Tensor)>;
    /// Rotate-half RoPE at the pass's positions on heads-first `x`.
    fn rope(&self, x: &Self::Tensor, pass: &Self::Pass<'_>) -> Result<Self::Tensor>;
    fn scale(&self, x: &Self::Tensor, factor: f64) -> Result<Self::Tensor>;
    /// Attention of each sequence's queries over its keys and values (for inference:
    /// its cache, into which the new ones are written, plus themselves) under the
    /// pass's block-causal masks. Returns `[tokens, query heads * dim]`.
    fn attend(
        &self,
        pass: &mut Self::Pass<'_>,
        layer: usize,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
    ) -> Result<Self::Tensor>;
    /// The router's logits `[tokens, experts]` in f32, on the device and on the host
    /// (expert selection runs on the host: a few numbers per token).
    fn router_logits(
        &self,
        x: &Self::Tensor,
        weight: &Self::Tensor,
    ) -> Result<(Self::Tensor, Vec<f32>)>;
    /// A MoE layer's experts (see [`MoeInput`]).
    fn experts(&self, x: &Self::Tensor, moe: &MoeInput<'_, Self>) -> Result<Self::Tensor>;
    /// The rows of the final hidden states that the pass wants logits for (`None`: no
    /// row).
    fn output_rows(&self, h: &Self::Tensor, pass: &Self::Pass<'_>) -> Result<Option<Self::Tensor>>;

    /// A SwiGLU MLP as three products and the gate.
    fn mlp(&self, w: &Mlp<Self>, x: &Self::Tensor) -> Result<Self::Tensor> {
        let gate = self.linear(x, &w.gate_proj)?;
        let up = self.linear(x, &w.up_proj)?;
        self.linear(&self.swiglu(&gate, &up)?, &w.down_proj)
    }
}

/// A backend that runs decoding's forward passes.
pub trait Inference: Backend {
    /// The pass of a batch of sequence steps (already checked) laid out as `rows`, with
    /// the rotary tables of those rows, for attention layers of `heads`.
    fn pass<'p>(
        &self,
        batch: &'p mut [SeqStep<'_>],
        rows: PassRows,
        rope: RopeTables,
        heads: Heads,
    ) -> Result<Self::Pass<'p>>;

    /// Per sequence of the pass, what it wanted of its logit rows on the host (`None`
    /// where it asked for no row): the f32 logits `[logit_rows, vocab]` or each row's
    /// greedy pick, from the head's output over the pass's output rows.
    fn outputs(
        &self,
        pass: Self::Pass<'_>,
        logits: Option<Self::Tensor>,
    ) -> Result<Vec<Option<StepOutput>>>;

    /// Runs a whole pass where the backend's ops run best (the CPU: on a thread of its
    /// pool).
    fn run<R: Send>(&self, work: impl FnOnce() -> R + Send) -> R {
        work()
    }
}

/// Bytes an MLP's three weight matrices occupy on `b`'s device.
pub fn mlp_bytes<B: Backend>(b: &B, m: &Mlp<B>) -> usize {
    [&m.gate_proj, &m.up_proj, &m.down_proj]
        .iter()
        .map(|w| b.linear_bytes(w))
        .sum()
}

/// Each sequence's output from host logits `[rows, vocab]` (all sequences' rows in
/// order, `counts` per sequence): the rows themselves, or their greedy picks.
pub fn outputs_from_logits(
    logits: &candle_core::Tensor,
    counts: &[usize],
    wanted: &[Wanted],
) -> Result<Vec<Option<StepOutput>>> {
    let mut out = Vec::with_capacity(counts.len());
    let mut at = 0;
    for (&n, &want) in counts.iter().zip(wanted) {
        out.push(if n == 0 {
            None
        } else {
            let rows = logits.narrow(0, at, n)?;
            Some(match want {
                Wanted::Logits => StepOutput::Logits(rows),
                Wanted::Greedy => {
                    let v = rows.flatten_all()?.to_vec1::<f32>()?;
                    let vocab = v.len() / n;
                    StepOutput::Greedy(v.chunks_exact(vocab).map(GreedyPick::of).collect())
                }
            })
        });
        at += n;
    }
    Ok(out)
}
