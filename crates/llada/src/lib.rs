//! llada: an engine for LLaDA2-style block-diffusion language models.
//!
//! A model folder in Hugging Face layout or a GGUF file (llama.cpp's `llada2` layout) is
//! opened with [`load_model`] (or a model held in memory with [`load_embedded`]); [`generate`] runs the reference block-diffusion
//! decoding with a KV cache of finished blocks. `examples/generate.rs` shows the whole
//! path from a folder and a text prompt to a streamed answer; `docs/architecture.md`
//! how the parts fit.
//!
//! The public API, by job:
//! - Loading: [`load_model`], [`load_model_with`] (quantize at load), [`load_embedded`],
//!   [`load_synthetic`] (random weights of a known shape) give a [`LoadedModel`] on the
//!   CPU; their `_on` forms ([`load_model_on`], ...) take a [`DeviceChoice`] (CPU, GPU or
//!   auto). A [`LoadedModel`] holds its [`ModelFiles`] ([`Llada2Config`],
//!   [`GenerationConfig`]), the [`Model`] on its device,
//!   [`Tokenizer`] and [`Weights`] ([`WeightFormat`], [`Quant`]). [`hub`] finds models in
//!   the Hugging Face cache and downloads them; [`mod@gguf`] reads and writes GGUF files
//!   ([`write_gguf`] from a [`ModelSource`], [`quantize_checkpoint`] a folder);
//!   [`files`] writes files atomically.
//! - Decoding: [`GenerateParams`] (set from [`DecodeSettings`], the settings flags, chat
//!   commands and requests give), then [`generate`] / [`generate_observed`] (an
//!   [`Observer`] sees commits and steps), or [`Generation`] with [`step_batch`] /
//!   [`run_batch`] to decode several answers in shared forward passes. [`decode`] holds
//!   the [`Decoder`] trait and its rules, selected by [`DecoderConfig`];
//!   [`SamplingParams`] and [`Sampler`] pick tokens.
//! - The model and its seam: [`Llada2`] is the model's math, generic over a
//!   [`backend::Backend`] (the op set; [`Cpu`] is the CPU one, with its [`ForwardCost`],
//!   [`Gpu`] the wgpu one; [`Llada2Model`] is the model on the CPU);
//!   [`Llada2::forward`] runs [`SeqStep`]s over [`KvCache`]s. Weights come from a
//!   [`WeightSource`] ([`WeightStore`] for safetensors, [`synthetic`] for random ones) as
//!   [`LinearWeight`]s. [`kernels`] are the CPU kernels, for backends in other crates
//!   (the trainer's); [`kernels::init_thread_pool`] sets the thread count.
//! - Measuring: [`mod@bench`] times decoding settings side by side and measures the
//!   machine's limits.
//! - Text: [`tokenizer`] ([`Tokenizer`], chat templates, [`Message`], [`TextStream`]).

pub mod backend;
pub mod bench;
mod cache;
mod config;
pub mod decode;
mod error;
pub mod files;
mod generate;
pub mod gguf;
pub mod hub;
pub mod kernels;
mod load;
mod model;
mod params;
mod quant;
mod sampling;
mod settings;
mod step;
pub mod synthetic;
pub mod tokenizer;
mod weights;

pub use backend::{Cpu, DeviceChoice, ForwardCost, Gpu};
pub use cache::{KvCache, KvDtype};
pub use config::{
    GenerationConfig, Heads, Llada2Config, ModelFiles, MoeShape, COMPANION_FILES, DEFAULT_EOS_ID,
    DEFAULT_MASK_ID,
};
pub use decode::{Decoder, DecoderConfig};
pub use error::{Error, Result};
pub use generate::{
    generate, generate_observed, run_batch, step_batch, BlockView, GenerateOutput, GenerateStats,
    Generation, Observer,
};
pub use gguf::{quantize_checkpoint, QuantizeReport};
pub use load::{
    load_embedded, load_embedded_on, load_gguf_on, load_model, load_model_on, load_model_with,
    load_synthetic, load_synthetic_on, write_gguf, EmbeddedModel, LoadedModel, ModelSource,
    WeightFormat, Weights,
};
pub use model::{Llada2, Llada2Model, Model, RoutingBlocks};
pub use params::{BlockCache, GenerateParams};
pub use quant::{LinearWeight, Quant};
pub use sampling::{Sampler, SamplingParams, MAX_TEMPERATURE};
pub use settings::DecodeSettings;
pub use step::{GreedyPick, PassRows, SeqStep, StepOutput, Wanted};
pub use tokenizer::{Message, TextStream, Tokenizer};
pub use weights::{WeightSource, WeightStore};

pub use candle_core::Device;
