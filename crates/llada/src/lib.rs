//! llada: an engine for LLaDA2-style block-diffusion language models.
//!
//! A model folder in Hugging Face layout is opened with [`load_model`] (or a model held
//! in memory with [`load_embedded`]); [`generate`] runs the reference block-diffusion
//! decoding with a KV cache of finished blocks. `examples/generate.rs` shows the whole
//! path from a folder and a text prompt to a streamed answer.

mod cache;
mod config;
pub mod decode;
mod error;
pub mod files;
mod generate;
mod gguf;
pub mod hub;
pub mod kernels;
mod model;
mod quant;
mod sampling;
pub mod synthetic;
pub mod tokenizer;
mod weights;

use std::path::{Path, PathBuf};

use candle_core::DType;

pub use cache::KvCache;
pub use config::{
    GenerationConfig, Llada2Config, ModelFiles, MoeShape, COMPANION_FILES, DEFAULT_EOS_ID,
    DEFAULT_MASK_ID,
};
pub use decode::{Decoder, DecoderConfig};
pub use error::{Error, Result};
pub use generate::{
    generate, generate_observed, run_batch, step_batch, BlockCache, BlockView, GenerateOutput,
    GenerateParams, GenerateStats, Generation, Observer,
};
pub use gguf::{quantize_checkpoint, QuantizeReport};
pub use model::{ForwardCost, Llada2Model, SeqStep, TrainRow};
pub use quant::{LinearWeight, Quant};
pub use sampling::{Sampler, SamplingParams, MAX_TEMPERATURE};
pub use tokenizer::{Message, TextStream, Tokenizer};
pub use weights::{WeightSource, WeightStore};

pub use candle_core::Device;

/// A loaded model with the files it came from.
pub struct LoadedModel {
    pub files: ModelFiles,
    pub model: Llada2Model,
    /// Present when the folder has a `tokenizer.json`.
    pub tokenizer: Option<Tokenizer>,
    /// How the weights are stored and run, e.g. "bf16 safetensors, run in f32" or
    /// "q4k GGUF" (for reports such as `llada bench`).
    pub weights: String,
}

impl LoadedModel {
    /// Decoding parameters with this model's special ids: from the generation config,
    /// else the tokenizer's tokens by name, else the LLaDA2 defaults. `<|role_end|>`
    /// ends an answer as EOS does.
    pub fn default_params(&self) -> GenerateParams {
        let gen = &self.files.generation;
        let tok = self.tokenizer.as_ref();
        let mask = gen
            .mask_token_id
            .or_else(|| tok.and_then(Tokenizer::mask_id))
            .unwrap_or(config::DEFAULT_MASK_ID);
        let eos = gen
            .eos_id()
            .or_else(|| config::first_id(self.files.config.eos_token_id.as_ref()))
            .or_else(|| tok.and_then(Tokenizer::eos_id))
            .unwrap_or(config::DEFAULT_EOS_ID);
        let mut params = GenerateParams::new(mask, eos);
        if let Some(b) = gen.block_length {
            params.set_block_length(b);
        }
        if let Some(role_end) = tok.and_then(Tokenizer::role_end_id) {
            if role_end != eos {
                params.extra_stop_ids.push(role_end);
            }
        }
        params
    }
}

/// Opens an HF-layout model folder: config, generation config and weights (computed in
/// f32 on CPU).
pub fn load_model(dir: &Path, device: &Device) -> Result<LoadedModel> {
    load_model_with(dir, device, None)
}

/// As [`load_model`], quantizing the linear layers at load time when `quant` is given.
pub fn load_model_with(dir: &Path, device: &Device, quant: Option<Quant>) -> Result<LoadedModel> {
    let files = ModelFiles::open(dir)?;
    // A folder written by `llada quantize` carries its weights in model.gguf.
    let (model, stored) =
        if dir.join(gguf::GGUF_FILE).is_file() && !dir.join(weights::SINGLE_FILE).exists() {
            let store = gguf::GgufStore::open(dir, device)?;
            let stored = format!("{} GGUF", store.quantization().unwrap_or("f32".into()));
            (Llada2Model::load(&files.config, &store, quant)?, stored)
        } else {
            let store = WeightStore::open(dir, device, DType::F32)?;
            let stored = format!("{} safetensors", store.stored_dtype());
            (Llada2Model::load(&files.config, &store, quant)?, stored)
        };
    let tokenizer = if dir.join("tokenizer.json").is_file() {
        Some(Tokenizer::from_dir(dir)?)
    } else {
        None
    };
    Ok(LoadedModel {
        files,
        model,
        tokenizer,
        weights: describe_weights(&stored, quant),
    })
}

/// A model's files held in memory, e.g. compiled into a binary with `include_bytes!`
/// (the `llada` binary carries its default model this way).
#[derive(Debug, Clone, Copy)]
pub struct EmbeddedModel {
    /// Shown wherever a model folder's path would be.
    pub name: &'static str,
    pub config: &'static str,
    pub generation_config: Option<&'static str>,
    /// A safetensors file.
    pub weights: &'static [u8],
    pub tokenizer: Option<&'static str>,
    pub tokenizer_config: Option<&'static str>,
}

/// Loads an [`EmbeddedModel`] exactly as [`load_model_with`] loads a folder holding the
/// same files.
pub fn load_embedded(
    embedded: &EmbeddedModel,
    device: &Device,
    quant: Option<Quant>,
) -> Result<LoadedModel> {
    let origin = PathBuf::from(embedded.name);
    let files = ModelFiles {
        config: Llada2Config::parse(embedded.config, &origin.join("config.json"))?,
        generation: match embedded.generation_config {
            Some(text) => GenerationConfig::parse(text, &origin.join("generation_config.json"))?,
            None => GenerationConfig::default(),
        },
        dir: origin.clone(),
    };
    let store = WeightStore::from_static(embedded.weights, &origin, device, DType::F32)?;
    let stored = format!("{} safetensors", store.stored_dtype());
    let model = Llada2Model::load(&files.config, &store, quant)?;
    let tokenizer = match embedded.tokenizer {
        Some(json) => Some(Tokenizer::from_parts(
            json,
            embedded.tokenizer_config,
            None,
            &origin,
        )?),
        None => None,
    };
    Ok(LoadedModel {
        files,
        model,
        tokenizer,
        weights: describe_weights(&stored, quant),
    })
}

fn describe_weights(stored: &str, quant: Option<Quant>) -> String {
    match quant {
        Some(q) if !stored.ends_with("GGUF") => {
            format!("{stored}, quantized to {} at load", q.name())
        }
        _ if stored.starts_with("f32") => stored.to_string(),
        _ if stored.ends_with("GGUF") => stored.to_string(),
        _ => format!("{stored}, run in f32"),
    }
}
