//! Opening a model: a Hugging Face layout folder, a model held in memory, or random
//! weights of a known shape, each into one [`LoadedModel`].

use std::fmt;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

use crate::backend::{Backend, Cpu, DeviceChoice, Gpu};
use crate::config::{self, GenerationConfig, Llada2Config, ModelFiles};
use crate::error::Result;
use crate::gguf::{self, GgufStore};
use crate::model::{Llada2, Model};
use crate::params::GenerateParams;
use crate::quant::Quant;
use crate::synthetic::SyntheticSource;
use crate::tokenizer::Tokenizer;
use crate::weights::{self, WeightSource, WeightStore};

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

/// How a model's weights are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    /// Safetensors in this element type (f32, bf16 or f16).
    Safetensors(DType),
    /// A GGUF file (or a folder's `model.gguf` written by `llada quantize`), its linear
    /// layers in this ggml type ("q8_0", "q4k", "q4_0", "f32", ...).
    Gguf(&'static str),
    /// Random weights of a known shape ([`crate::synthetic`]).
    Random,
}

/// How a loaded model's weights are stored and run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Weights {
    pub format: WeightFormat,
    /// The quantization asked for at load (a GGUF file keeps its own blocks).
    pub quantized_at_load: Option<Quant>,
}

impl Weights {
    /// The block type the linear layers run in (`None`: f32).
    /// For a GGUF file's other block types, the nearest of llada's (8-bit: q8_0; fewer
    /// bits: q4k), for memory estimates.
    pub fn compute(&self) -> Option<Quant> {
        match self.format {
            WeightFormat::Gguf(name) => gguf_quant(name),
            _ => self.quantized_at_load,
        }
    }
}

impl fmt::Display for Weights {
    /// e.g. "bf16 safetensors, run in f32", "q4k GGUF", "random q8_0 blocks".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.format, self.quantized_at_load) {
            (WeightFormat::Gguf(name), _) => write!(f, "{name} GGUF"),
            (WeightFormat::Random, q) => match q {
                Some(q) => write!(f, "random {} blocks", q.name()),
                None => write!(f, "random f32"),
            },
            (WeightFormat::Safetensors(dtype), Some(q)) => write!(
                f,
                "{} safetensors, quantized to {} at load",
                dtype.as_str(),
                q.name()
            ),
            (WeightFormat::Safetensors(DType::F32), None) => write!(f, "f32 safetensors"),
            (WeightFormat::Safetensors(dtype), None) => {
                write!(f, "{} safetensors, run in f32", dtype.as_str())
            }
        }
    }
}

/// The nearest of llada's quantizations to a GGUF type name (see [`Weights::compute`]).
fn gguf_quant(name: &str) -> Option<Quant> {
    match name {
        "f32" | "f16" | "bf16" => None,
        "q8_0" | "q8_1" => Some(Quant::Q8_0),
        _ => Some(Quant::Q4k),
    }
}

/// Where a loaded model's weights are read from (to load them again, e.g. onto another
/// backend).
#[derive(Debug, Clone)]
enum Origin {
    Dir(PathBuf),
    /// A GGUF file (the first of its splits).
    GgufFile(PathBuf),
    Embedded(EmbeddedModel),
    Synthetic {
        seed: u64,
    },
}

impl Origin {
    /// The weight source, opened again, and its format.
    fn open(&self) -> Result<(Box<dyn WeightSource>, WeightFormat)> {
        let cpu = &Device::Cpu;
        Ok(match self {
            Origin::Dir(dir)
                if dir.join(gguf::GGUF_FILE).is_file()
                    && !dir.join(weights::SINGLE_FILE).exists() =>
            {
                // A folder written by `llada quantize` carries its weights in model.gguf.
                let store = GgufStore::open(dir, cpu)?;
                let format = gguf_format(&store);
                (Box::new(store), format)
            }
            Origin::GgufFile(path) => {
                let store = GgufStore::open_file(path, cpu)?;
                let format = gguf_format(&store);
                (Box::new(store), format)
            }
            Origin::Dir(dir) => {
                let store = WeightStore::open(dir, cpu, DType::F32)?;
                let format = WeightFormat::Safetensors(store.stored_dtype());
                (Box::new(store), format)
            }
            Origin::Embedded(e) => {
                let origin = PathBuf::from(e.name);
                let store = WeightStore::from_static(e.weights, &origin, cpu, DType::F32)?;
                let format = WeightFormat::Safetensors(store.stored_dtype());
                (Box::new(store), format)
            }
            Origin::Synthetic { seed } => {
                (Box::new(SyntheticSource::new(*seed)), WeightFormat::Random)
            }
        })
    }
}

fn gguf_format(store: &GgufStore) -> WeightFormat {
    let name = store.quantization().unwrap_or_else(|| "f32".into());
    // The names a store reports are gguf::dtype_name's (or Quant's), all static.
    let name = [
        "f32", "f16", "bf16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q8_1", "q2_k", "q3_k",
        "q4k", "q5_k", "q6_k", "q8_k",
    ]
    .into_iter()
    .find(|n| *n == name)
    .unwrap_or("f32");
    WeightFormat::Gguf(name)
}

/// Bytes the model's weights will take on a GPU: bf16 weights stay bf16, other dense ones
/// f32, quantized ones their blocks (q8_0 8.5 bits, q4k 4.5 bits per weight).
fn device_bytes(cfg: &Llada2Config, format: WeightFormat, quant: Option<Quant>) -> u64 {
    let (linear, other) = cfg.weight_counts();
    let dense_bytes = match format {
        WeightFormat::Safetensors(candle_core::DType::BF16) | WeightFormat::Random => 2.0,
        _ => 4.0,
    };
    let quant = match format {
        // The GPU multiplies q4k and q8_0 blocks; other GGUF blocks become q8_0 there.
        WeightFormat::Gguf("q4k") => Some(Quant::Q4k),
        WeightFormat::Gguf(name) => gguf_quant(name).map(|_| Quant::Q8_0),
        _ => quant,
    };
    let linear_bytes = match quant {
        Some(Quant::Q8_0) => 34.0 / 32.0,
        Some(Quant::Q4k) => 144.0 / 256.0,
        None => dense_bytes,
    };
    (linear as f64 * linear_bytes + other as f64 * dense_bytes) as u64
}

/// `gpu` if the weights fit in its memory (with a tenth left for caches and
/// activations); else the CPU for `auto`, an error with the sizes for `gpu`.
fn fits(
    gpu: Gpu,
    cfg: &Llada2Config,
    format: WeightFormat,
    quant: Option<Quant>,
    device: DeviceChoice,
) -> Result<Option<Gpu>> {
    let Some(memory) = gpu.memory_bytes() else {
        return Ok(Some(gpu));
    };
    let need = device_bytes(cfg, format, quant);
    if need as f64 <= 0.9 * memory as f64 {
        return Ok(Some(gpu));
    }
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let message = format!(
        "the model's weights need {:.1} GiB on {}, which has {:.1} GiB",
        gib(need),
        gpu.name(),
        gib(memory)
    );
    match device {
        DeviceChoice::Auto => {
            tracing::warn!("{message}: running on the CPU (a smaller --quant may fit)");
            Ok(None)
        }
        _ => Err(crate::error::Error::Device(format!(
            "{message}; {}--device cpu",
            if quant == Some(Quant::Q4k) {
                ""
            } else {
                "try --quant q4k, or "
            }
        ))),
    }
}

/// A loaded model with the files it came from.
pub struct LoadedModel {
    pub files: ModelFiles,
    pub model: Model,
    /// Present when the folder has a `tokenizer.json`.
    pub tokenizer: Option<Tokenizer>,
    pub weights: Weights,
    origin: Origin,
}

impl LoadedModel {
    /// The one constructor: the model's weights from `origin` onto the device `device`
    /// picks (see [`DeviceChoice`]).
    fn assemble(
        files: ModelFiles,
        origin: Origin,
        tokenizer: Option<Tokenizer>,
        quant: Option<Quant>,
        device: DeviceChoice,
    ) -> Result<Self> {
        let (source, format) = origin.open()?;
        let gpu = match Gpu::open(device)? {
            Some(gpu) => fits(gpu, &files.config, format, quant, device)?,
            None => None,
        };
        let model = match gpu {
            Some(gpu) => {
                let model = Llada2::load(&files.config, source.as_ref(), quant, gpu)?;
                // Out of memory during the upload surfaces here, named, not mid-decode.
                model.backend().finish("uploading the weights")?;
                Model::Gpu(model)
            }
            None => Model::Cpu(Llada2::load(
                &files.config,
                source.as_ref(),
                quant,
                Cpu::new(),
            )?),
        };
        Ok(Self {
            files,
            model,
            tokenizer,
            weights: Weights {
                format,
                quantized_at_load: quant.filter(|_| !matches!(format, WeightFormat::Gguf(_))),
            },
            origin,
        })
    }

    /// The same weights loaded again onto `backend` (e.g. the trainer's, whose ops carry
    /// gradients, to score a loaded model's losses).
    pub fn load_on<B: Backend>(&self, backend: B) -> Result<Llada2<B>> {
        let (source, _) = self.origin.open()?;
        Llada2::load(
            &self.files.config,
            source.as_ref(),
            self.weights.quantized_at_load,
            backend,
        )
    }

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
        params.delete_id = self.files.config.delete_token_id;
        params.split_id = self.files.config.split_token_id;
        if let Some(b) = gen.block_length {
            params.set_block_length(b);
        }
        // Checked when the file was read; a failure here would only keep the defaults.
        if let Err(e) = gen.decode_settings().apply(&mut params) {
            tracing::warn!("generation_config.json decoder settings ignored: {e}");
        }
        if let Some(role_end) = tok.and_then(Tokenizer::role_end_id) {
            if role_end != eos {
                params.extra_stop_ids.push(role_end);
            }
        }
        params
    }
}

/// Opens a model: an HF-layout folder (config, generation config and weights, computed
/// in f32 on the CPU) or a GGUF file.
pub fn load_model(dir: &Path) -> Result<LoadedModel> {
    load_model_with(dir, None)
}

/// As [`load_model`], quantizing the linear layers at load time when `quant` is given.
pub fn load_model_with(dir: &Path, quant: Option<Quant>) -> Result<LoadedModel> {
    load_model_on(dir, quant, DeviceChoice::Cpu)
}

/// As [`load_model_with`], on the device `device` picks.
pub fn load_model_on(
    dir: &Path,
    quant: Option<Quant>,
    device: DeviceChoice,
) -> Result<LoadedModel> {
    if dir.is_file() {
        return load_gguf_on(dir, quant, device);
    }
    let files = ModelFiles::open(dir)?;
    let tokenizer = if dir.join("tokenizer.json").is_file() {
        Some(Tokenizer::from_dir(dir)?)
    } else {
        None
    };
    LoadedModel::assemble(
        files,
        Origin::Dir(dir.to_path_buf()),
        tokenizer,
        quant,
        device,
    )
}

/// Loads a GGUF file in the `llada2` layout (or the first of its splits): the config from
/// its keys, the tokenizer and chat template from its metadata (when it has them), the
/// mask and EOS ids from `tokenizer.ggml.*`.
pub fn load_gguf_on(
    path: &Path,
    quant: Option<Quant>,
    device: DeviceChoice,
) -> Result<LoadedModel> {
    let store = GgufStore::open_file(path, &Device::Cpu)?;
    let meta = &store.head().metadata;
    let id = |key: &str| match meta.get(&format!("tokenizer.ggml.{key}")) {
        Some(candle_core::quantized::gguf_file::Value::U32(v)) => Some(*v),
        _ => None,
    };
    let files = ModelFiles {
        dir: path.to_path_buf(),
        config: store.config()?,
        generation: GenerationConfig {
            eos_token_id: id("eos_token_id").map(serde_json::Value::from),
            mask_token_id: id("mask_token_id"),
            ..Default::default()
        },
    };
    let tokenizer = crate::tokenizer::gguf::from_metadata(meta, files.config.vocab_size, path)?;
    if files.generation.mask_token_id.is_none()
        && tokenizer.as_ref().and_then(Tokenizer::mask_id).is_none()
        && config::DEFAULT_MASK_ID as usize >= files.config.vocab_size
    {
        // LLaDA2's default mask id does not fit this vocabulary: say where one comes from.
        tracing::warn!(
            "{} names no mask token (tokenizer.ggml.mask_token_id) and has no tokenizer with <|mask|>: pass --mask-id",
            path.display()
        );
    }
    drop(store);
    LoadedModel::assemble(
        files,
        Origin::GgufFile(path.to_path_buf()),
        tokenizer,
        quant,
        device,
    )
}

/// A random model's special ids: LLaDA2's where the vocabulary has them, else its last
/// two ids.
fn synthetic_generation(config: &Llada2Config) -> GenerationConfig {
    let vocab = config.vocab_size as u32;
    let (mask, eos) = if config::DEFAULT_MASK_ID < vocab {
        (config::DEFAULT_MASK_ID, config::DEFAULT_EOS_ID)
    } else {
        (vocab.saturating_sub(1), vocab.saturating_sub(2))
    };
    GenerationConfig {
        eos_token_id: Some(serde_json::json!(eos)),
        mask_token_id: Some(mask),
        ..Default::default()
    }
}

/// Where [`write_gguf`] takes a model from.
#[derive(Debug, Clone, Copy)]
pub enum ModelSource<'a> {
    /// An HF-layout folder (or a folder `llada quantize` wrote).
    Dir(&'a Path),
    Embedded(&'a EmbeddedModel),
    /// Random weights of a preset's shapes ([`load_synthetic`]).
    Synthetic {
        name: &'a str,
        layers: Option<usize>,
        seed: u64,
    },
}

/// Writes a model as one GGUF file in the `llada2` layout, with its tokenizer and chat
/// template when it has them: what `llada quantize --out FILE.gguf` does. Linear layers
/// in `quant`'s blocks exactly as a load with `--quant` makes them (so the file answers
/// as that load does); f32 without.
pub fn write_gguf(
    source: ModelSource<'_>,
    quant: Option<Quant>,
    out: &Path,
) -> Result<gguf::QuantizeReport> {
    use candle_core::quantized::gguf_file::Value;
    let (config, generation, origin, tokenizer_json): (_, _, _, Option<String>) = match source {
        ModelSource::Dir(dir) => {
            let files = ModelFiles::open(dir)?;
            let json = dir.join("tokenizer.json");
            let text = match json.is_file() {
                true => {
                    Some(std::fs::read_to_string(&json).map_err(|e| crate::Error::io(&json, e))?)
                }
                false => None,
            };
            (
                files.config,
                files.generation,
                Origin::Dir(dir.to_path_buf()),
                text,
            )
        }
        ModelSource::Embedded(e) => {
            let origin = PathBuf::from(e.name);
            let config = Llada2Config::parse(e.config, &origin.join("config.json"))?;
            let generation = match e.generation_config {
                Some(text) => {
                    GenerationConfig::parse(text, &origin.join("generation_config.json"))?
                }
                None => GenerationConfig::default(),
            };
            (
                config,
                generation,
                Origin::Embedded(*e),
                e.tokenizer.map(str::to_string),
            )
        }
        ModelSource::Synthetic { name, layers, seed } => {
            let origin = PathBuf::from(format!("synthetic:{name}"));
            let config = Llada2Config::from_json(crate::synthetic::preset(name, layers)?, &origin)?;
            let generation = synthetic_generation(&config);
            (config, generation, Origin::Synthetic { seed }, None)
        }
    };
    let (source, _) = origin.open()?;
    let label = match &origin {
        Origin::Dir(d) | Origin::GgufFile(d) => d.display().to_string(),
        Origin::Embedded(e) => e.name.to_string(),
        Origin::Synthetic { .. } => "synthetic".to_string(),
    };
    let name = Path::new(&label)
        .file_name()
        .map_or(label.clone(), |n| n.to_string_lossy().into_owned());
    let mut extra = vec![("general.name".to_string(), Value::String(name))];
    let tokenizer = match (&tokenizer_json, &origin) {
        (Some(json), Origin::Dir(dir)) => Some(Tokenizer::from_dir(dir).map(|t| (json, t))?),
        (Some(json), Origin::Embedded(e)) => Some((
            json,
            Tokenizer::from_parts(json, e.tokenizer_config, None, Path::new(e.name))?,
        )),
        _ => None,
    };
    match &tokenizer {
        Some((json, t)) => extra.extend(crate::tokenizer::gguf::to_metadata(
            json,
            t,
            config.vocab_size,
            Path::new(&label),
        )?),
        None => extra.push((
            "tokenizer.ggml.model".to_string(),
            Value::String("none".into()),
        )),
    }
    // The model's own special ids win over the tokenizer's guesses.
    let mask = generation
        .mask_token_id
        .or_else(|| tokenizer.as_ref().and_then(|(_, t)| t.mask_id()));
    let eos = generation
        .eos_id()
        .or_else(|| config::first_id(config.eos_token_id.as_ref()))
        .or_else(|| tokenizer.as_ref().and_then(|(_, t)| t.eos_id()));
    for (key, id) in [("mask_token_id", mask), ("eos_token_id", eos)] {
        if let Some(id) = id {
            extra.retain(|(k, _)| *k != format!("tokenizer.ggml.{key}"));
            extra.push((format!("tokenizer.ggml.{key}"), Value::U32(id)));
        }
    }
    for (key, id) in [
        ("delete_token_id", config.delete_token_id),
        ("split_token_id", config.split_token_id),
    ] {
        if let Some(id) = id {
            extra.push((format!("tokenizer.ggml.{key}"), Value::U32(id)));
        }
    }
    gguf::write_llada2(out, &config, source.as_ref(), quant, extra)
}

/// Loads an [`EmbeddedModel`] exactly as [`load_model_with`] loads a folder holding the
/// same files.
pub fn load_embedded(embedded: &EmbeddedModel, quant: Option<Quant>) -> Result<LoadedModel> {
    load_embedded_on(embedded, quant, DeviceChoice::Cpu)
}

/// As [`load_embedded`], on the device `device` picks.
pub fn load_embedded_on(
    embedded: &EmbeddedModel,
    quant: Option<Quant>,
    device: DeviceChoice,
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
    let tokenizer = embedded
        .tokenizer
        .map(|json| Tokenizer::from_parts(json, embedded.tokenizer_config, None, &origin))
        .transpose()?;
    LoadedModel::assemble(files, Origin::Embedded(*embedded), tokenizer, quant, device)
}

/// A model of a known architecture's exact shapes ([`crate::synthetic::preset`]) with
/// random weights, built in memory: for benchmarks of models one does not have.
pub fn load_synthetic(
    name: &str,
    layers: Option<usize>,
    quant: Option<Quant>,
    seed: u64,
) -> Result<LoadedModel> {
    load_synthetic_on(name, layers, quant, seed, DeviceChoice::Cpu)
}

/// As [`load_synthetic`], on the device `device` picks.
pub fn load_synthetic_on(
    name: &str,
    layers: Option<usize>,
    quant: Option<Quant>,
    seed: u64,
    device: DeviceChoice,
) -> Result<LoadedModel> {
    let origin = PathBuf::from(format!("synthetic:{name}"));
    let config = Llada2Config::from_json(crate::synthetic::preset(name, layers)?, &origin)?;
    let generation = synthetic_generation(&config);
    let files = ModelFiles {
        dir: origin,
        config,
        generation,
    };
    LoadedModel::assemble(files, Origin::Synthetic { seed }, None, quant, device)
}
