//! llada: an engine for LLaDA2-style block-diffusion language models.
//!
//! A model folder in Hugging Face layout is opened with [`load_model`]; [`generate`]
//! runs the reference block-diffusion decoding with a KV cache of finished blocks.

pub mod cache;
pub mod config;
pub mod decode;
pub mod error;
pub mod generate;
pub mod hub;
pub mod model;
pub mod sampling;
pub mod tokenizer;
pub mod weights;

use std::path::Path;

use candle_core::DType;

pub use config::{GenerationConfig, Llada2Config, ModelFiles};
pub use decode::{Decoder, DecoderConfig};
pub use error::{Error, Result};
pub use generate::{generate, GenerateOutput, GenerateParams, GenerateStats};
pub use model::Llada2Model;
pub use sampling::SamplingParams;
pub use tokenizer::{Message, Tokenizer};
pub use weights::WeightStore;

pub use candle_core::Device;

/// A loaded model with the files it came from.
pub struct LoadedModel {
    pub files: ModelFiles,
    pub model: Llada2Model,
}

impl LoadedModel {
    /// Decoding parameters with this model's mask and EOS ids.
    pub fn default_params(&self) -> GenerateParams {
        GenerateParams::new(self.files.mask_id(), self.files.eos_id())
    }
}

/// Opens an HF-layout model folder: config, generation config and weights (computed in
/// f32 on CPU).
pub fn load_model(dir: &Path, device: &Device) -> Result<LoadedModel> {
    let files = ModelFiles::open(dir)?;
    let store = WeightStore::open(dir, device, DType::F32)?;
    let model = Llada2Model::load(&files.config, &store)?;
    Ok(LoadedModel { files, model })
}
