//! llada: an engine for LLaDA2-style block-diffusion language models.
//!
//! A model folder in Hugging Face layout is opened with [`load_model`] (or a model held
//! in memory with [`load_embedded`]); [`generate`] runs the reference block-diffusion
//! decoding with a KV cache of finished blocks. `examples/generate.rs` shows the whole
//! path from a folder and a text prompt to a streamed answer.

pub mod backend;
pub mod bench;
mod cache;
mod config;
pub mod decode;
mod error;
pub mod files;
mod generate;
mod gguf;
pub mod hub;
pub mod kernels;
mod load;
mod model;
mod quant;
mod sampling;
mod settings;
mod step;
pub mod synthetic;
pub mod tokenizer;
mod weights;

pub use backend::{Cpu, ForwardCost};
pub use cache::KvCache;
pub use config::{
    GenerationConfig, Heads, Llada2Config, ModelFiles, MoeShape, COMPANION_FILES, DEFAULT_EOS_ID,
    DEFAULT_MASK_ID,
};
pub use decode::{Decoder, DecoderConfig};
pub use error::{Error, Result};
pub use generate::{
    generate, generate_observed, run_batch, step_batch, BlockCache, BlockView, GenerateOutput,
    GenerateParams, GenerateStats, Generation, Observer,
};
pub use gguf::{quantize_checkpoint, QuantizeReport};
pub use load::{
    load_embedded, load_model, load_model_with, load_synthetic, EmbeddedModel, LoadedModel,
    WeightFormat, Weights,
};
pub use model::{Llada2, Llada2Model};
pub use quant::{LinearWeight, Quant};
pub use sampling::{Sampler, SamplingParams, MAX_TEMPERATURE};
pub use settings::DecodeSettings;
pub use step::SeqStep;
pub use tokenizer::{Message, TextStream, Tokenizer};
pub use weights::{WeightSource, WeightStore};

pub use candle_core::Device;
