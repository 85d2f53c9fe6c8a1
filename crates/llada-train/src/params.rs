//! Trainable weights: a model whose tensors are candle `Var`s, and saving them as an
//! HF-layout checkpoint that llada (and the PyTorch code) loads.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use candle_core::{Device, Tensor, Var};
use llada::{LinearWeight, Quant};
use llada::{Llada2, Llada2Config, WeightSource};

use crate::forward::{Autograd, TrainModel};

use crate::{Result, TrainError};

/// Wraps a weight source so that every tensor handed to the model is a fresh `Var`
/// (recorded by name), which the optimizer then updates in place.
pub struct TrainableSource<'a> {
    inner: &'a dyn WeightSource,
    vars: Mutex<Vec<(String, Var)>>,
}

impl<'a> TrainableSource<'a> {
    pub fn new(inner: &'a dyn WeightSource) -> Self {
        Self {
            inner,
            vars: Mutex::new(Vec::new()),
        }
    }
}

impl WeightSource for TrainableSource<'_> {
    fn device(&self) -> &Device {
        self.inner.device()
    }

    fn contains(&self, name: &str) -> bool {
        self.inner.contains(name)
    }

    fn get_optional(&self, name: &str, shape: &[usize]) -> llada::Result<Option<Tensor>> {
        let Some(t) = self.inner.get_optional(name, shape)? else {
            return Ok(None);
        };
        let var = Var::from_tensor(&t)?;
        let tensor = var.as_tensor().clone();
        self.vars
            .lock()
            .expect("vars lock")
            .push((name.to_string(), var));
        Ok(Some(tensor))
    }

    fn missing(&self, name: &str) -> llada::Error {
        self.inner.missing(name)
    }

    /// Trainable matrices stay dense f32.
    fn get_linear(
        &self,
        name: &str,
        shape: [usize; 2],
        _quant: Option<Quant>,
    ) -> llada::Result<LinearWeight> {
        LinearWeight::new(self.get(name, &shape)?, None, None)
    }
}

/// A model and its parameters by HF name.
pub struct TrainableModel {
    pub model: TrainModel,
    pub config: Llada2Config,
    pub params: Vec<(String, Var)>,
}

impl TrainableModel {
    /// Builds the model from `source` (a checkpoint, or random init) with `Var` weights.
    /// The router's `expert_bias` is a buffer, not a parameter: it is not trained.
    pub fn new(config: &Llada2Config, source: &dyn WeightSource) -> Result<Self> {
        let trainable = TrainableSource::new(source);
        let model = Llada2::load(config, &trainable, None, Autograd::default())?;
        let mut params = trainable.vars.into_inner().expect("vars lock");
        params.retain(|(name, _)| !name.ends_with("expert_bias"));
        params.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Self {
            model,
            config: config.clone(),
            params,
        })
    }

    pub fn vars(&self) -> Vec<Var> {
        self.params.iter().map(|(_, v)| v.clone()).collect()
    }

    pub fn num_parameters(&self) -> usize {
        self.params.iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// The current weights by name (expert_bias buffers included, from `source`).
    pub fn tensors(&self, buffers: &HashMap<String, Tensor>) -> HashMap<String, Tensor> {
        let mut out: HashMap<String, Tensor> = self
            .params
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().detach()))
            .collect();
        out.extend(buffers.iter().map(|(k, v)| (k.clone(), v.clone())));
        out
    }
}

/// Saves `tensors` as `dir/model.safetensors` (the folder is created; the file is
/// written atomically).
pub fn save_weights(dir: &Path, tensors: &HashMap<String, Tensor>) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| TrainError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    Ok(llada::files::save_safetensors(
        &dir.join("model.safetensors"),
        tensors,
    )?)
}

/// The special token ids a checkpoint's `config.json` names.
#[derive(Debug, Clone, Copy)]
pub struct SpecialIds {
    pub eos: u32,
    pub mask: u32,
}

/// Adds to a model's `config.json` the fields whose defaults in the official
/// `LLaDA2MoeConfig` would not describe the model llada trained, and that other readers
/// require; fields already there are kept. Every architecture field is written with the
/// value llada uses (the official defaults differ: `rope_theta` 10000, `use_bias` true,
/// no shared expert, ...). Its default `pad_token_id` (156892) lies outside a small
/// vocabulary, and the official code then refuses to build the embedding; its three
/// dropouts default to 0.1 where llada trains without dropout; mlx-lm requires the
/// router's fields. `origin` names the file in errors.
pub fn complete_official_config(
    cfg: &mut serde_json::Value,
    ids: SpecialIds,
    origin: &Path,
) -> Result<()> {
    let parsed = Llada2Config::from_json(cfg.clone(), origin)?;
    let serde_json::Value::Object(resolved) =
        serde_json::to_value(&parsed).expect("a config serializes")
    else {
        unreachable!("a config serializes to a JSON object");
    };
    let serde_json::Value::Object(fields) = cfg else {
        unreachable!("a config that parsed is a JSON object");
    };
    let extra = [
        ("pad_token_id", ids.eos.into()),
        ("eos_token_id", ids.eos.into()),
        ("mask_token_id", ids.mask.into()),
        ("embedding_dropout", 0.0.into()),
        ("attention_dropout", 0.0.into()),
        ("output_dropout", 0.0.into()),
        ("norm_topk_prob", true.into()),
        ("router_dtype", "fp32".into()),
        ("rotary_dim", parsed.rope_dim().into()),
    ];
    let resolved = resolved.into_iter().filter(|(_, v)| !v.is_null());
    for (name, value) in resolved.chain(extra.map(|(k, v)| (k.to_string(), v))) {
        fields.entry(name).or_insert(value);
    }
    Ok(())
}

/// Copies a checkpoint's model files into `out` (config, generation config, tokenizer,
/// weights; not the optimizer or trainer state), weights optionally in bf16. Returns
/// the size of the written weights.
pub fn export(checkpoint: &Path, out: &Path, bf16: bool) -> Result<u64> {
    let weights = checkpoint.join("model.safetensors");
    let tensors = candle_core::safetensors::load(&weights, &Device::Cpu)?;
    let dtype = if bf16 {
        candle_core::DType::BF16
    } else {
        candle_core::DType::F32
    };
    let converted = tensors
        .into_iter()
        .map(|(k, v)| Ok((k, v.to_dtype(dtype)?)))
        .collect::<candle_core::Result<HashMap<_, _>>>()?;
    save_weights(out, &converted)?;
    llada::files::copy_companion_files(checkpoint, out)?;
    complete_exported_config(out)?;
    let path = out.join("model.safetensors");
    Ok(std::fs::metadata(&path)
        .map_err(|source| TrainError::Read { path, source })?
        .len())
}

/// Completes an exported folder's `config.json` for the official code (checkpoints of
/// earlier versions of the trainer lack some fields), with the special ids of its
/// generation config.
fn complete_exported_config(dir: &Path) -> Result<()> {
    let path = dir.join("config.json");
    let mut cfg: serde_json::Value = crate::read_json(&path)?;
    let generation = llada::GenerationConfig::from_dir(dir)?;
    let (Some(eos), Some(mask)) = (generation.eos_id(), generation.mask_token_id) else {
        return Err(TrainError::Invalid(format!(
            "{}: generation_config.json must name eos_token_id and mask_token_id",
            dir.display()
        )));
    };
    complete_official_config(&mut cfg, SpecialIds { eos, mask }, &path)?;
    let json = serde_json::to_string_pretty(&cfg).expect("JSON values serialize");
    llada::files::write_atomic(&path, json.as_bytes())?;
    Ok(())
}
