//! Random weights of exact model shapes, generated on demand: for benchmarking real
//! architectures (LLaDA2.0-mini, flash) without their checkpoints, for tests that need
//! a model of some shape, and as the initialisation of a model trained from scratch.
//! Quantized matrices are generated directly as random blocks, so a 16B-parameter model
//! at q4k is built in seconds without its f32 copy.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType};
use candle_core::{Device, Tensor};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::Llada2Config;
use crate::error::{Error, Result};
use crate::quant::{LinearWeight, Quant};
use crate::weights::WeightSource;

/// Config JSON of a known architecture, optionally cut to its first `layers` layers.
pub fn preset(name: &str, layers: Option<usize>) -> Result<serde_json::Value> {
    let mut cfg = match name {
        "llada2-mini" => serde_json::json!({
            "hidden_size": 2048, "num_hidden_layers": 20, "num_attention_heads": 16,
            "num_key_value_heads": 4, "head_dim": 128, "intermediate_size": 5120,
            "moe_intermediate_size": 512, "num_experts": 256,
        }),
        "llada2-flash" => serde_json::json!({
            "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 4, "head_dim": 128, "intermediate_size": 9216,
            "moe_intermediate_size": 1024, "num_experts": 256,
        }),
        // LLaDA2.2-mini: LLaDA2.0-mini's shapes with block routing (a 32-token routing
        // block shares a pool of 48 of the 256 experts), Levenshtein editing tokens and
        // a native 128K context.
        "llada2_2-mini" => serde_json::json!({
            "hidden_size": 2048, "num_hidden_layers": 20, "num_attention_heads": 16,
            "num_key_value_heads": 4, "head_dim": 128, "intermediate_size": 5120,
            "moe_intermediate_size": 512, "num_experts": 256, "expert_capacity": 48,
            "block_size": 32, "max_position_embeddings": 131072,
            "delete_token_id": 156_900, "split_token_id": 156_901,
        }),
        // The 63M-parameter checkpoint llada was compared with chatllm.cpp on (the
        // performance issue): small enough to run anywhere, every mechanism present.
        "llada2-63m" => serde_json::json!({
            "hidden_size": 512, "num_hidden_layers": 8, "num_attention_heads": 8,
            "num_key_value_heads": 4, "head_dim": 64, "intermediate_size": 1024,
            "moe_intermediate_size": 256, "num_experts": 16, "num_experts_per_tok": 4,
            "n_group": 4, "topk_group": 2, "vocab_size": 8192,
        }),
        other => {
            return Err(Error::InvalidRequest(format!(
                "unknown synthetic model {other:?} (use llada2-mini, llada2_2-mini, llada2-flash or llada2-63m)"
            )))
        }
    };
    let shared = serde_json::json!({
        "architectures": ["LLaDA2MoeModelLM"], "model_type": "llada2_moe",
        "num_shared_experts": 1, "routed_scaling_factor": 2.5,
        "first_k_dense_replace": 1, "rope_theta": 600000.0, "partial_rotary_factor": 0.5,
        "rms_norm_eps": 1e-6, "use_bias": false, "use_qkv_bias": false, "use_qk_norm": true,
        "score_function": "sigmoid",
        "moe_router_enable_expert_bias": true, "tie_word_embeddings": false,
    });
    // The LLaDA2.0 values, unless the preset sets its own.
    let published = serde_json::json!({
        "vocab_size": 157184, "num_experts_per_tok": 8, "n_group": 8, "topk_group": 4,
        "max_position_embeddings": 32768,
    });
    for (k, v) in shared.as_object().expect("object") {
        cfg[k] = v.clone();
    }
    for (k, v) in published.as_object().expect("object") {
        if cfg.get(k).is_none() {
            cfg[k] = v.clone();
        }
    }
    if let Some(n) = layers {
        if n == 0 {
            return Err(Error::InvalidRequest(
                "a model needs at least one layer".into(),
            ));
        }
        cfg["num_hidden_layers"] = n.into();
    }
    Ok(cfg)
}

/// How a [`SyntheticSource`] draws its values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// Uniform values scaled by the fan-in, norms near 1, a small expert bias: peaked
    /// enough to exercise a model like trained weights (benchmarks, tests).
    Uniform,
    /// N(0, std²) matrices and embeddings, unit norms, zero expert bias: the start of
    /// training from scratch.
    Normal { std: f32 },
}

/// FNV-1a of a text: the same on every run and platform (seeds derived from names,
/// partitions of questions).
pub fn stable_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// A weight source that invents every tensor, deterministic for a seed and tensor name.
pub struct SyntheticSource {
    device: Device,
    seed: u64,
    init: Init,
    /// Tensors handed out, kept when recording (to write a checkpoint).
    recorded: Option<Mutex<HashMap<String, Tensor>>>,
}

/// `n` samples of N(0, std²), deterministic for `seed` (Box-Muller on ChaCha8).
pub fn gaussian(n: usize, std: f32, seed: u64) -> Vec<f32> {
    gaussian_from(&mut ChaCha8Rng::seed_from_u64(seed), n, std)
}

fn gaussian_from(rng: &mut ChaCha8Rng, n: usize, std: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u1: f32 = rng.random::<f32>().max(f32::MIN_POSITIVE);
            let u2: f32 = rng.random();
            std * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
        })
        .collect()
}

impl SyntheticSource {
    /// [`Init::Uniform`] weights.
    pub fn new(seed: u64) -> Self {
        Self::with_init(seed, Init::Uniform)
    }

    pub fn with_init(seed: u64, init: Init) -> Self {
        Self {
            device: Device::Cpu,
            seed,
            init,
            recorded: None,
        }
    }

    fn rng(&self, name: &str) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(stable_hash(name) ^ self.seed)
    }

    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let mut rng = self.rng(name);
        let n: usize = shape.iter().product();
        let is_norm = name.ends_with("norm.weight");
        if let Init::Normal { std } = self.init {
            let data = if is_norm {
                vec![1.0; n]
            } else if name.ends_with("expert_bias") {
                vec![0.0; n]
            } else {
                gaussian_from(&mut rng, n, std)
            };
            return Ok(Tensor::from_vec(data, shape, &self.device)?);
        }
        let (offset, scale) = if is_norm {
            (1.0, 0.2)
        } else if name.ends_with("expert_bias") {
            (0.0, 0.05)
        } else if name.contains("word_embeddings") {
            (0.0, 1.0)
        } else {
            let fan_in = *shape.last().unwrap_or(&1) as f32;
            (0.0, 2.0 / fan_in.sqrt())
        };
        // Rounded to bf16, as LLaDA2 checkpoints store them (a GPU keeps them at 2 bytes).
        let data: Vec<f32> = (0..n)
            .map(|_| {
                let v = offset + scale * (rng.random::<f32>() * 2.0 - 1.0);
                half::bf16::from_f32(v).to_f32()
            })
            .collect();
        Ok(Tensor::from_vec(data, shape, &self.device)?)
    }

    /// Random ggml blocks with sane scales: `[out, in]` at `dtype`.
    fn quantized(&self, name: &str, shape: [usize; 2], dtype: GgmlDType) -> Result<LinearWeight> {
        let mut rng = self.rng(name);
        let blocks = shape[0] * shape[1] / dtype.block_size();
        let mut bytes = vec![0u8; blocks * dtype.type_size()];
        rng.fill_bytes(&mut bytes);
        let amplitude = 2.0 / (shape[1] as f32).sqrt();
        let (d, dmin) = match dtype {
            GgmlDType::Q8_0 => (amplitude / 127.0, None),
            // q4k: value = d * scale(6 bit) * q(4 bit) - dmin * min(6 bit), centred: with
            // dmin = 7.5 d the mean over random bits is 0. (Uncentred, every row had the
            // same negative mean, the products of all tokens pointed alike, and every
            // token of a block chose nearly the same experts.)
            GgmlDType::Q4K => (amplitude / (63.0 * 7.5), Some(amplitude / 63.0)),
            other => {
                return Err(Error::InvalidRequest(format!(
                    "synthetic blocks for {other:?} are not supported"
                )))
            }
        };
        for block in bytes.chunks_mut(dtype.type_size()) {
            block[0..2].copy_from_slice(&half::f16::from_f32(d).to_le_bytes());
            if let Some(m) = dmin {
                block[2..4].copy_from_slice(&half::f16::from_f32(m).to_le_bytes());
            }
        }
        let q = qtensor_from_ggml(dtype, &bytes, shape.to_vec(), &self.device)?;
        LinearWeight::from_qtensor(q, None)
    }
}

impl WeightSource for SyntheticSource {
    fn device(&self) -> &Device {
        &self.device
    }

    fn contains(&self, _name: &str) -> bool {
        true
    }

    fn get_optional(&self, name: &str, shape: &[usize]) -> Result<Option<Tensor>> {
        let t = self.tensor(name, shape)?;
        if let Some(rec) = &self.recorded {
            rec.lock()
                .expect("recording lock")
                .insert(name.to_string(), t.clone());
        }
        Ok(Some(t))
    }

    fn missing(&self, name: &str) -> Error {
        Error::InvalidRequest(format!("synthetic source cannot make {name}"))
    }

    fn get_linear(
        &self,
        name: &str,
        shape: [usize; 2],
        quant: Option<Quant>,
    ) -> Result<LinearWeight> {
        match quant.and_then(|q| q.dtype_for(shape[1])) {
            Some(dtype) if self.recorded.is_none() && self.init == Init::Uniform => {
                self.quantized(name, shape, dtype)
            }
            _ => LinearWeight::new(self.get(name, &shape)?, None, quant),
        }
    }
}

/// Writes a random model folder (`config.json` from `config`, `generation_config.json`
/// with `mask_id`/`eos_id`, f32 `model.safetensors`) that loads like a real checkpoint.
pub fn write_random_checkpoint(
    dir: &Path,
    config: &serde_json::Value,
    mask_id: u32,
    eos_id: u32,
    seed: u64,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let config_path = dir.join("config.json");
    crate::files::write_atomic(&config_path, config.to_string().as_bytes())?;
    let cfg = Llada2Config::from_file(&config_path)?;
    let gen = serde_json::json!({ "eos_token_id": eos_id, "pad_token_id": eos_id, "mask_token_id": mask_id });
    crate::files::write_atomic(
        &dir.join("generation_config.json"),
        gen.to_string().as_bytes(),
    )?;
    let source = SyntheticSource {
        recorded: Some(Mutex::new(HashMap::new())),
        ..SyntheticSource::new(seed)
    };
    crate::model::Llada2::load(&cfg, &source, None, crate::backend::Cpu::new())?;
    let tensors = source
        .recorded
        .expect("recording")
        .into_inner()
        .expect("lock");
    crate::files::save_safetensors(&dir.join("model.safetensors"), &tensors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Llada2Config {
        let mut cfg = preset("llada2-mini", Some(2)).unwrap();
        for (k, v) in [
            ("vocab_size", 512),
            ("hidden_size", 256),
            ("num_attention_heads", 4),
            ("num_key_value_heads", 2),
            ("head_dim", 64),
            ("intermediate_size", 512),
            ("moe_intermediate_size", 256),
            ("num_experts", 16),
        ] {
            cfg[k] = v.into();
        }
        Llada2Config::from_json(cfg, Path::new("test")).unwrap()
    }

    #[test]
    fn presets_have_the_published_shapes() {
        let mini =
            Llada2Config::from_json(preset("llada2-mini", None).unwrap(), Path::new("m")).unwrap();
        assert_eq!(
            (mini.num_hidden_layers, mini.hidden_size, mini.vocab_size),
            (20, 2048, 157184)
        );
        assert_eq!(mini.moe_shape().unwrap().num_experts, 256);
        let flash = preset("llada2-flash", Some(4)).unwrap();
        assert_eq!(flash["num_hidden_layers"], 4);
        let small =
            Llada2Config::from_json(preset("llada2-63m", None).unwrap(), Path::new("s")).unwrap();
        assert_eq!(
            (
                small.vocab_size,
                small.hidden_size,
                small.num_experts_per_tok,
                small.n_group
            ),
            (8192, 512, 4, 4)
        );
        assert!(preset("llada2-huge", None).is_err());
        assert!(preset("llada2-mini", Some(0)).is_err());
    }

    #[test]
    fn random_quantized_blocks_make_a_runnable_smaller_model() {
        let cfg = small();
        let dense = crate::model::Llada2::load(
            &cfg,
            &SyntheticSource::new(1),
            None,
            crate::backend::Cpu::new(),
        )
        .unwrap();
        for quant in [Quant::Q8_0, Quant::Q4k] {
            let q = crate::model::Llada2::load(
                &cfg,
                &SyntheticSource::new(1),
                Some(quant),
                crate::backend::Cpu::new(),
            )
            .unwrap();
            assert!(q.weight_bytes() * 3 < dense.weight_bytes(), "{quant:?}");
            let logits = q.forward_full(&[1, 2, 3, 4, 5], 4).unwrap();
            let finite = logits.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(finite.iter().all(|v| v.is_finite()), "{quant:?}");
        }
    }
}
