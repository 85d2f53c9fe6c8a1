//! Random LLaDA2 checkpoints of any shape, written in HF layout (optionally sharded and
//! in bf16/f16), for tests that must not depend on the golden fixture's sizes.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

#[derive(Debug, Clone)]
pub struct Shape {
    pub vocab: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub rotary_factor: f64,
    pub intermediate: usize,
    pub experts: usize,
    pub experts_per_tok: usize,
    pub n_group: usize,
    pub topk_group: usize,
    pub moe_intermediate: usize,
    pub shared_experts: usize,
    pub dense_layers: usize,
    pub max_positions: usize,
    pub options: Options,
}

/// Architecture switches real LLaDA2 checkpoints leave at their defaults, exercised by
/// the naive-forward comparison.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// `use_qkv_bias`: a bias on the fused QKV projection.
    pub qkv_bias: bool,
    /// `use_bias`: a bias on the attention output projection.
    pub dense_bias: bool,
    /// `use_qk_norm = false`: no per-head RMSNorm of queries and keys.
    pub no_qk_norm: bool,
    /// `tie_word_embeddings`: lm_head is the embedding matrix (no `lm_head.weight`).
    pub tied: bool,
}

impl Shape {
    pub fn config(&self) -> serde_json::Value {
        json!({
            "architectures": ["LLaDA2MoeModelLM"],
            "model_type": "llada2_moe",
            "vocab_size": self.vocab,
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "partial_rotary_factor": self.rotary_factor,
            "rope_theta": 600000.0,
            "rms_norm_eps": 1e-6,
            "use_bias": self.options.dense_bias,
            "use_qkv_bias": self.options.qkv_bias,
            "use_qk_norm": !self.options.no_qk_norm,
            "num_experts": self.experts,
            "num_experts_per_tok": self.experts_per_tok,
            "n_group": self.n_group,
            "topk_group": self.topk_group,
            "moe_intermediate_size": self.moe_intermediate,
            "num_shared_experts": self.shared_experts,
            "first_k_dense_replace": self.dense_layers,
            "routed_scaling_factor": 2.5,
            "score_function": "sigmoid",
            "moe_router_enable_expert_bias": true,
            "max_position_embeddings": self.max_positions,
            "tie_word_embeddings": self.options.tied,
        })
    }

    /// Every tensor the architecture needs, with HF names, random but peaked enough
    /// that a wrong detail changes the argmax.
    pub fn tensors(&self, seed: u64) -> HashMap<String, Tensor> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut t = HashMap::new();
        let mut add = |name: String, shape: &[usize], scale: f32, offset: f32| {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = (0..n)
                .map(|_| offset + scale * (rng.random::<f32>() * 2.0 - 1.0))
                .collect();
            t.insert(name, Tensor::from_vec(data, shape, &Device::Cpu).unwrap());
        };
        let (h, d) = (self.hidden, self.head_dim);
        add(
            "model.word_embeddings.weight".into(),
            &[self.vocab, h],
            1.0,
            0.0,
        );
        for i in 0..self.layers {
            let p = format!("model.layers.{i}");
            add(format!("{p}.input_layernorm.weight"), &[h], 0.3, 1.0);
            add(
                format!("{p}.post_attention_layernorm.weight"),
                &[h],
                0.3,
                1.0,
            );
            let qkv = (self.heads + 2 * self.kv_heads) * d;
            add(
                format!("{p}.attention.query_key_value.weight"),
                &[qkv, h],
                0.4,
                0.0,
            );
            if self.options.qkv_bias {
                add(
                    format!("{p}.attention.query_key_value.bias"),
                    &[qkv],
                    0.5,
                    0.0,
                );
            }
            if !self.options.no_qk_norm {
                add(
                    format!("{p}.attention.query_layernorm.weight"),
                    &[d],
                    0.3,
                    1.0,
                );
                add(
                    format!("{p}.attention.key_layernorm.weight"),
                    &[d],
                    0.3,
                    1.0,
                );
            }
            add(
                format!("{p}.attention.dense.weight"),
                &[h, self.heads * d],
                0.3,
                0.0,
            );
            if self.options.dense_bias {
                add(format!("{p}.attention.dense.bias"), &[h], 0.5, 0.0);
            }
            let mut mlp = |prefix: String, inter: usize| {
                add(format!("{prefix}.gate_proj.weight"), &[inter, h], 0.3, 0.0);
                add(format!("{prefix}.up_proj.weight"), &[inter, h], 0.3, 0.0);
                add(format!("{prefix}.down_proj.weight"), &[h, inter], 0.3, 0.0);
            };
            if i < self.dense_layers {
                mlp(format!("{p}.mlp"), self.intermediate);
            } else {
                for e in 0..self.experts {
                    mlp(format!("{p}.mlp.experts.{e}"), self.moe_intermediate);
                }
                if self.shared_experts > 0 {
                    mlp(
                        format!("{p}.mlp.shared_experts"),
                        self.moe_intermediate * self.shared_experts,
                    );
                }
                add(format!("{p}.mlp.gate.weight"), &[self.experts, h], 0.5, 0.0);
                add(
                    format!("{p}.mlp.gate.expert_bias"),
                    &[self.experts],
                    0.2,
                    0.0,
                );
            }
        }
        add("model.norm.weight".into(), &[h], 0.3, 1.0);
        if !self.options.tied {
            add("lm_head.weight".into(), &[self.vocab, h], 1.0, 0.0);
        }
        t
    }
}

/// Writes `config.json`, `generation_config.json` and the weights in `dtype`, split
/// over `shards` files (with an index when more than one). Returns the tensors as
/// stored (rounded to `dtype`, back in f32).
pub fn write_checkpoint(
    dir: &Path,
    config: &serde_json::Value,
    tensors: &HashMap<String, Tensor>,
    dtype: DType,
    shards: usize,
    mask_id: u32,
    eos_id: u32,
) -> HashMap<String, Tensor> {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let gen = json!({"eos_token_id": eos_id, "pad_token_id": eos_id, "mask_token_id": mask_id});
    std::fs::write(dir.join("generation_config.json"), gen.to_string()).unwrap();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let stored: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, v)| {
            // Integer tensors stay as they are, so tests can plant wrong dtypes.
            let v = if v.dtype().is_float() {
                v.to_dtype(dtype).unwrap()
            } else {
                v.clone()
            };
            (k.clone(), v)
        })
        .collect();
    if shards <= 1 {
        candle_core::safetensors::save(&stored, dir.join("model.safetensors")).unwrap();
    } else {
        let mut weight_map = serde_json::Map::new();
        let per = names.len().div_ceil(shards);
        for (s, chunk) in names.chunks(per).enumerate() {
            let file = format!("model-{:05}-of-{:05}.safetensors", s + 1, shards);
            let part: HashMap<String, Tensor> = chunk
                .iter()
                .map(|n| ((*n).clone(), stored[*n].clone()))
                .collect();
            candle_core::safetensors::save(&part, dir.join(&file)).unwrap();
            for n in chunk {
                weight_map.insert((*n).clone(), json!(file));
            }
        }
        let index = json!({"metadata": {}, "weight_map": weight_map});
        std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    }
    stored
        .into_iter()
        .map(|(k, v)| (k, v.to_dtype(DType::F32).unwrap()))
        .collect()
}
