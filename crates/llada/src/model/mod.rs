//! Model architectures, one file each, with tensor names as in the HF checkpoints, and
//! [`Model`]: a loaded model on the device that runs it.

mod llada2;

use candle_core::Tensor;

pub use llada2::{Llada2, Llada2Model, RoutingBlocks};

use crate::backend::{Cpu, ForwardCost, Gpu};
use crate::cache::KvCache;
use crate::config::Llada2Config;
use crate::error::Result;
use crate::step::{SeqStep, StepOutput};

/// A LLaDA2 model on the CPU or on a GPU: what decoding, the server and the CLI run.
/// One per process, so the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub enum Model {
    Cpu(Llada2<Cpu>),
    Gpu(Llada2<Gpu>),
}

/// `$body` with `$m` bound to the model, whichever backend holds it.
macro_rules! on_backend {
    ($model:expr, $m:ident => $body:expr) => {
        match $model {
            Model::Cpu($m) => $body,
            Model::Gpu($m) => $body,
        }
    };
}

impl Model {
    pub fn config(&self) -> &Llada2Config {
        on_backend!(self, m => m.config())
    }

    /// See [`Llada2::forward`].
    pub fn forward(&self, batch: &mut [SeqStep<'_>]) -> Result<Vec<Option<StepOutput>>> {
        on_backend!(self, m => m.forward(batch))
    }

    /// See [`Llada2::forward_full`].
    pub fn forward_full(&self, tokens: &[u32], block_length: usize) -> Result<Tensor> {
        on_backend!(self, m => m.forward_full(tokens, block_length))
    }

    pub fn new_cache(&self) -> KvCache {
        on_backend!(self, m => m.new_cache())
    }

    /// A cache sized for `positions` up front.
    pub fn new_cache_for(&self, positions: usize) -> KvCache {
        on_backend!(self, m => m.new_cache_for(positions))
    }

    /// A cache sized for `positions` that keeps keys/values as `dtype`; the GPU backend
    /// keeps them in f32 only.
    pub fn new_cache_as(&self, positions: usize, dtype: crate::KvDtype) -> Result<KvCache> {
        match self {
            Model::Cpu(m) => Ok(m.new_cache_as(positions, dtype)),
            Model::Gpu(_) if dtype != crate::KvDtype::F32 => Err(crate::Error::param(
                "kv_cache",
                format!(
                    "the GPU backend keeps its KV cache in f32; --kv-cache {} runs on the CPU (--device cpu)",
                    dtype.name()
                ),
            )),
            Model::Gpu(m) => Ok(m.new_cache_for(positions)),
        }
    }

    /// Bytes of the routed experts' weights (all MoE layers).
    pub fn expert_weight_bytes(&self) -> usize {
        on_backend!(self, m => m.expert_weight_bytes())
    }

    /// Bytes the weights occupy on their device.
    pub fn weight_bytes(&self) -> usize {
        on_backend!(self, m => m.weight_bytes())
    }

    /// The work of every forward pass so far, as the backend counted it.
    pub fn cost(&self) -> ForwardCost {
        match self {
            Model::Cpu(m) => m.backend().cost(),
            Model::Gpu(m) => m.backend().cost(),
        }
    }

    /// Where the model runs, for people: "CPU" or the GPU adapter's name.
    pub fn device_name(&self) -> String {
        match self {
            Model::Cpu(_) => "CPU".into(),
            Model::Gpu(m) => m.backend().name(),
        }
    }
}
