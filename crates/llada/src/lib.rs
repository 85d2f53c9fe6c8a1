//! llada: an engine for LLaDA2-style block-diffusion language models.
//!
//! A model folder in Hugging Face layout is opened with [`load_model`]; [`generate`]
//! runs the reference block-diffusion decoding with a KV cache of finished blocks.

pub mod cache;
pub mod config;
pub mod decode;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod hub;
pub mod model;
pub mod quant;
pub mod sampling;
pub mod synthetic;
pub mod tokenizer;
pub mod weights;

use std::path::Path;

use candle_core::DType;

pub use config::{GenerationConfig, Llada2Config, ModelFiles};
pub use decode::{Decoder, DecoderConfig};
pub use error::{Error, Result};
pub use generate::{
    generate, generate_observed, step_batch, BlockView, GenerateOutput, GenerateParams,
    GenerateStats, Generation, Observer,
};
pub use model::Llada2Model;
pub use quant::Quant;
pub use sampling::SamplingParams;
pub use tokenizer::{Message, Tokenizer};
pub use weights::{WeightSource, WeightStore};

pub use candle_core::Device;

/// A loaded model with the files it came from.
pub struct LoadedModel {
    pub files: ModelFiles,
    pub model: Llada2Model,
    /// Present when the folder has a `tokenizer.json`.
    pub tokenizer: Option<Tokenizer>,
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
    let model = if dir.join(gguf::GGUF_FILE).is_file() && !dir.join(weights::SINGLE_FILE).exists() {
        let store = gguf::GgufStore::open(dir, device)?;
        Llada2Model::load(&files.config, &store, quant)?
    } else {
        let store = WeightStore::open(dir, device, DType::F32)?;
        Llada2Model::load(&files.config, &store, quant)?
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
    })
}
