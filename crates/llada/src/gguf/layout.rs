//! The llama.cpp-style `llada2` GGUF layout (llama.cpp PR #17454, as published LLaDA2.0
//! GGUF files use it; documented key by key in `fixtures/golden/README.md`): its
//! hyper-parameter keys against llada's config, and its tensor names against the Hugging
//! Face ones the model reads. Experts are stacked along a third dimension there; here
//! each is a matrix of its own.

use candle_core::quantized::gguf_file::Value;
use serde_json::json;

use super::container::{Container, TensorEntry};
use crate::config::Llada2Config;
use crate::error::Result;

pub const ARCH: &str = "llada2";

/// Where an HF tensor lies in a `llada2` file: a tensor, or one expert's slab of a
/// stacked one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub tensor: String,
    pub expert: Option<usize>,
}

/// The `llada2` name of an HF tensor name (`None`: the layout has no such tensor).
pub fn locate(hf: &str) -> Option<Location> {
    let whole = |tensor: String| {
        Some(Location {
            tensor,
            expert: None,
        })
    };
    match hf {
        "model.word_embeddings.weight" => return whole("token_embd.weight".into()),
        "model.norm.weight" => return whole("output_norm.weight".into()),
        "lm_head.weight" => return whole("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let blk = |name: &str| format!("blk.{layer}.{name}");
    let fixed = match rest {
        "input_layernorm.weight" => Some("attn_norm.weight"),
        "attention.query_key_value.weight" => Some("attn_qkv.weight"),
        "attention.query_key_value.bias" => Some("attn_qkv.bias"),
        "attention.query_layernorm.weight" => Some("attn_q_norm.weight"),
        "attention.key_layernorm.weight" => Some("attn_k_norm.weight"),
        "attention.dense.weight" => Some("attn_output.weight"),
        "attention.dense.bias" => Some("attn_output.bias"),
        "post_attention_layernorm.weight" => Some("ffn_norm.weight"),
        "mlp.gate_proj.weight" => Some("ffn_gate.weight"),
        "mlp.up_proj.weight" => Some("ffn_up.weight"),
        "mlp.down_proj.weight" => Some("ffn_down.weight"),
        "mlp.gate.weight" => Some("ffn_gate_inp.weight"),
        "mlp.gate.expert_bias" => Some("exp_probs_b.bias"),
        "mlp.shared_experts.gate_proj.weight" => Some("ffn_gate_shexp.weight"),
        "mlp.shared_experts.up_proj.weight" => Some("ffn_up_shexp.weight"),
        "mlp.shared_experts.down_proj.weight" => Some("ffn_down_shexp.weight"),
        _ => None,
    };
    if let Some(name) = fixed {
        return whole(blk(name));
    }
    let rest = rest.strip_prefix("mlp.experts.")?;
    let (expert, proj) = rest.split_once('.')?;
    let stacked = match proj {
        "gate_proj.weight" => "ffn_gate_exps.weight",
        "up_proj.weight" => "ffn_up_exps.weight",
        "down_proj.weight" => "ffn_down_exps.weight",
        _ => return None,
    };
    Some(Location {
        tensor: blk(stacked),
        expert: Some(expert.parse().ok()?),
    })
}

/// Every tensor the model reads, with its Hugging Face shape and whether it is a linear
/// layer's matrix, in the order of the `llada2` layout (a stacked tensor's experts in a
/// row). The expert bias is listed when `src` has it or the config requires it.
pub fn hf_tensors(
    cfg: &Llada2Config,
    src: &dyn crate::weights::WeightSource,
) -> Vec<(String, Vec<usize>, bool)> {
    let h = cfg.hidden_size;
    let heads = cfg.heads();
    let mut out: Vec<(String, Vec<usize>, bool)> = Vec::new();
    let mut put = |name: String, shape: Vec<usize>, linear: bool| out.push((name, shape, linear));
    put(
        "model.word_embeddings.weight".into(),
        vec![cfg.vocab_size, h],
        false,
    );
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        put(format!("{p}.input_layernorm.weight"), vec![h], false);
        let qkv = (heads.query + 2 * heads.kv) * heads.dim;
        put(
            format!("{p}.attention.query_key_value.weight"),
            vec![qkv, h],
            true,
        );
        if cfg.use_qkv_bias {
            put(
                format!("{p}.attention.query_key_value.bias"),
                vec![qkv],
                false,
            );
        }
        if cfg.use_qk_norm {
            put(
                format!("{p}.attention.query_layernorm.weight"),
                vec![heads.dim],
                false,
            );
            put(
                format!("{p}.attention.key_layernorm.weight"),
                vec![heads.dim],
                false,
            );
        }
        put(
            format!("{p}.attention.dense.weight"),
            vec![h, heads.query * heads.dim],
            true,
        );
        if cfg.use_bias {
            put(format!("{p}.attention.dense.bias"), vec![h], false);
        }
        put(
            format!("{p}.post_attention_layernorm.weight"),
            vec![h],
            false,
        );
        let mlp = |put: &mut dyn FnMut(String, Vec<usize>, bool), prefix: &str, ff: usize| {
            put(format!("{prefix}.gate_proj.weight"), vec![ff, h], true);
            put(format!("{prefix}.up_proj.weight"), vec![ff, h], true);
            put(format!("{prefix}.down_proj.weight"), vec![h, ff], true);
        };
        match cfg.moe_shape().filter(|_| cfg.is_moe_layer(l)) {
            None => mlp(
                &mut put,
                &format!("{p}.mlp"),
                cfg.intermediate_size.unwrap_or(0),
            ),
            Some(m) => {
                let e = m.num_experts;
                put(format!("{p}.mlp.gate.weight"), vec![e, h], false);
                let bias = format!("{p}.mlp.gate.expert_bias");
                if cfg.moe_router_enable_expert_bias || src.contains(&bias) {
                    put(bias, vec![e], false);
                }
                for (proj, shape) in [
                    ("gate_proj", vec![m.intermediate, h]),
                    ("up_proj", vec![m.intermediate, h]),
                    ("down_proj", vec![h, m.intermediate]),
                ] {
                    for i in 0..e {
                        put(
                            format!("{p}.mlp.experts.{i}.{proj}.weight"),
                            shape.clone(),
                            true,
                        );
                    }
                }
                if m.shared_intermediate > 0 {
                    mlp(
                        &mut put,
                        &format!("{p}.mlp.shared_experts"),
                        m.shared_intermediate,
                    );
                }
            }
        }
    }
    put("model.norm.weight".into(), vec![h], false);
    if !cfg.tie_word_embeddings {
        put("lm_head.weight".into(), vec![cfg.vocab_size, h], true);
    }
    out
}

/// Reads typed keys, each missing or mistyped one an error naming it.
struct Keys<'a>(&'a Container);

impl Keys<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.0.metadata.get(&format!("{ARCH}.{key}"))
    }

    fn uint_opt(&self, key: &str) -> Result<Option<usize>> {
        let v = match self.get(key) {
            None => return Ok(None),
            Some(Value::U8(v)) => *v as u64,
            Some(Value::U16(v)) => *v as u64,
            Some(Value::U32(v)) => *v as u64,
            Some(Value::U64(v)) => *v,
            Some(Value::I32(v)) if *v >= 0 => *v as u64,
            Some(Value::I64(v)) if *v >= 0 => *v as u64,
            Some(other) => return Err(self.mistyped(key, other, "an unsigned integer")),
        };
        Ok(Some(v as usize))
    }

    fn uint(&self, key: &str) -> Result<usize> {
        self.uint_opt(key)?.ok_or_else(|| self.missing(key))
    }

    fn float_opt(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::F32(v)) if v.is_finite() => Ok(Some(*v as f64)),
            Some(Value::F64(v)) if v.is_finite() => Ok(Some(*v)),
            Some(Value::F32(_) | Value::F64(_)) => Err(self
                .0
                .error(format!("key {ARCH}.{key} is not a finite number"))),
            Some(other) => Err(self.mistyped(key, other, "a float")),
        }
    }

    fn float(&self, key: &str) -> Result<f64> {
        self.float_opt(key)?.ok_or_else(|| self.missing(key))
    }

    fn bool_opt(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(v)) => Ok(Some(*v)),
            Some(other) => Err(self.mistyped(key, other, "a bool")),
        }
    }

    fn missing(&self, key: &str) -> crate::Error {
        self.0.error(format!(
            "key {ARCH}.{key} is missing (a llada2 file needs it)"
        ))
    }

    fn mistyped(&self, key: &str, found: &Value, want: &str) -> crate::Error {
        self.0.error(format!(
            "key {ARCH}.{key} should be {want}, found {:?}",
            found.value_type()
        ))
    }
}

/// The config a `llada2` file describes, from its `llada2.*` keys (in `c`, the first
/// split) and which tensors the model holds (`tensor` looks one up in any split: q/k
/// norms, the expert bias, a separate output matrix); contradictions are errors naming
/// the keys.
pub fn config<'a>(
    c: &Container,
    tensor: &dyn Fn(&str) -> Option<&'a TensorEntry>,
) -> Result<Llada2Config> {
    match c.string("general.architecture") {
        Some(ARCH) => {}
        Some(other) => {
            return Err(c.error(format!(
                "general.architecture is {other:?}; llada reads \"{ARCH}\" files (LLaDA2.x)"
            )))
        }
        None => return Err(c.error("general.architecture is missing")),
    }
    let k = Keys(c);
    let layers = k.uint("block_count")?;
    let hidden = k.uint("embedding_length")?;
    let heads = k.uint("attention.head_count")?;
    let kv_heads = k.uint_opt("attention.head_count_kv")?.unwrap_or(heads);
    let head_dim = k
        .uint_opt("attention.key_length")?
        .unwrap_or(hidden / heads.max(1));
    if let Some(v) = k.uint_opt("attention.value_length")? {
        if v != head_dim {
            return Err(c.error(format!(
                "{ARCH}.attention.value_length {v} differs from attention.key_length {head_dim}"
            )));
        }
    }
    let rope_dim = k.uint_opt("rope.dimension_count")?.unwrap_or(head_dim);
    if rope_dim > head_dim || head_dim == 0 || heads == 0 {
        return Err(c.error(format!(
            "{ARCH}.rope.dimension_count {rope_dim} with attention.key_length {head_dim} and \
             attention.head_count {heads}: the rotary width must be at most the head width"
        )));
    }
    match c.metadata.get("diffusion.shift_logits") {
        None | Some(Value::Bool(false)) => {}
        Some(Value::Bool(true)) => {
            return Err(c.error(
                "diffusion.shift_logits is true: LLaDA2's logits at position i predict token i \
                 (false); this file is for a model that predicts the next token",
            ))
        }
        Some(other) => {
            return Err(c.error(format!(
                "diffusion.shift_logits should be a bool, found {:?}",
                other.value_type()
            )))
        }
    }
    let vocab = match k.uint_opt("vocab_size")? {
        Some(v) => v,
        None => match tensor("token_embd.weight") {
            Some(t) if t.ne.len() == 2 => t.ne[1],
            _ => return Err(k.missing("vocab_size")),
        },
    };
    let rope_scaling = match c.string(&format!("{ARCH}.rope.scaling.type")) {
        None | Some("none") => None,
        Some(kind) => Some(json!({
            "type": kind,
            "factor": k.float_opt("rope.scaling.factor")?,
            "original_max_position_embeddings": k.uint_opt("rope.scaling.original_context_length")?,
        })),
    };
    let experts = k.uint_opt("expert_count")?.filter(|&e| e > 0);
    let dense_layers = match experts {
        Some(_) => k.uint_opt("leading_dense_block_count")?.unwrap_or(0),
        None => layers,
    };
    let first_moe = (dense_layers < layers).then_some(dense_layers);
    let mut moe = serde_json::Map::new();
    if let (Some(e), Some(first)) = (experts, first_moe) {
        // Against the stacked tensor before anything is sized by the key.
        let stacked = format!("blk.{first}.ffn_up_exps.weight");
        match tensor(&stacked) {
            Some(t) if t.ne.len() == 3 && t.ne[2] == e => {}
            Some(t) => {
                return Err(c.error(format!(
                    "{ARCH}.expert_count is {e}, but {stacked} has shape {:?} (GGUF order, experts last)",
                    t.ne
                )))
            }
            None => return Err(c.error(format!("tensor {stacked} is missing"))),
        }
        let moe_ff = k.uint("expert_feed_forward_length")?;
        let shared_count = k.uint_opt("expert_shared_count")?.unwrap_or(0);
        // The shared tensors' width is authoritative (README: llama.cpp's loader
        // multiplies the key by the count once more).
        let shared = match tensor(&format!("blk.{first}.ffn_up_shexp.weight")) {
            Some(t) if t.ne.len() == 2 => {
                let width = t.ne[1];
                if moe_ff == 0 || !width.is_multiple_of(moe_ff) {
                    return Err(c.error(format!(
                        "blk.{first}.ffn_up_shexp.weight is {width} wide, not a multiple of \
                         {ARCH}.expert_feed_forward_length {moe_ff}"
                    )));
                }
                width / moe_ff
            }
            _ => 0,
        };
        if shared != shared_count && shared_count != 0 {
            tracing::debug!("{ARCH}.expert_shared_count {shared_count}; the tensors hold {shared} experts' width");
        }
        let gating = k.uint_opt("expert_gating_func")?.unwrap_or(2);
        let score = match gating {
            1 => "softmax",
            2 => "sigmoid",
            other => {
                return Err(c.error(format!(
                    "{ARCH}.expert_gating_func {other} is unknown (1 softmax, 2 sigmoid)"
                )))
            }
        };
        let groups = k
            .uint_opt("expert_group_count")?
            .filter(|&g| g > 0)
            .unwrap_or(1);
        let groups_used = k
            .uint_opt("expert_group_used_count")?
            .filter(|&g| g > 0)
            .unwrap_or(groups);
        moe.insert("num_experts".into(), json!(e));
        moe.insert(
            "num_experts_per_tok".into(),
            json!(k.uint("expert_used_count")?),
        );
        moe.insert("moe_intermediate_size".into(), json!(moe_ff));
        moe.insert("num_shared_experts".into(), json!(shared));
        moe.insert("n_group".into(), json!(groups));
        moe.insert("topk_group".into(), json!(groups_used));
        moe.insert(
            "routed_scaling_factor".into(),
            json!(k.float_opt("expert_weights_scale")?.unwrap_or(1.0)),
        );
        moe.insert("score_function".into(), json!(score));
        let bias = tensor(&format!("blk.{first}.exp_probs_b.bias")).is_some();
        moe.insert("moe_router_enable_expert_bias".into(), json!(bias));
        if k.bool_opt("expert_weights_norm")? == Some(false) {
            return Err(c.error(format!(
                "{ARCH}.expert_weights_norm is false; LLaDA2 renormalises the chosen experts' weights"
            )));
        }
        moe.insert(
            "expert_capacity".into(),
            json!(k.uint_opt("expert_capacity")?.unwrap_or(0)),
        );
        if let Some(b) = k.uint_opt("expert_routing_block_length")? {
            moe.insert("block_size".into(), json!(b));
        }
    } else {
        moe.insert("num_experts".into(), serde_json::Value::Null);
    }
    let dense_ff = k.uint_opt("feed_forward_length")?;
    // Either norm present says the model has them (a missing one is then named).
    let q_norm = tensor("blk.0.attn_q_norm.weight").is_some()
        || tensor("blk.0.attn_k_norm.weight").is_some();
    let qkv_bias = tensor("blk.0.attn_qkv.bias").is_some();
    let out_bias = tensor("blk.0.attn_output.bias").is_some();
    let tied = tensor("output.weight").is_none();
    let token = |key: &str| match c.metadata.get(&format!("tokenizer.ggml.{key}")) {
        Some(Value::U32(v)) => Some(*v),
        _ => None,
    };
    let mut cfg = json!({
        "architectures": [crate::config::ARCHITECTURE],
        "model_type": crate::config::MODEL_TYPE,
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": dense_ff,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "use_qkv_bias": qkv_bias,
        "use_qk_norm": q_norm,
        "use_bias": out_bias,
        "rms_norm_eps": k.float("attention.layer_norm_rms_epsilon")?,
        "tie_word_embeddings": tied,
        "max_position_embeddings": k.uint_opt("context_length")?.unwrap_or(4096),
        "rope_theta": k.float_opt("rope.freq_base")?.unwrap_or(10000.0),
        "rope_scaling": rope_scaling,
        "partial_rotary_factor": rope_dim as f64 / head_dim.max(1) as f64,
        "first_k_dense_replace": dense_layers,
        "eos_token_id": token("eos_token_id"),
        "pad_token_id": token("padding_token_id"),
        "delete_token_id": token("delete_token_id"),
        "split_token_id": token("split_token_id"),
    });
    if let Some(map) = cfg.as_object_mut() {
        map.extend(moe);
    }
    let cfg = Llada2Config::from_json(cfg, &c.path).map_err(|e| match e {
        crate::Error::Config { message, .. } => c.error(with_key_names(&message)),
        other => other,
    })?;
    if cfg.rope_dim() != rope_dim {
        return Err(c.error(format!(
            "{ARCH}.rope.dimension_count {rope_dim} is not a whole fraction of key_length {head_dim}"
        )));
    }
    Ok(cfg)
}

/// The config's field names in a validation message, each followed by the GGUF key it
/// came from (the message is about the file's keys, not a config.json).
const KEY_OF_FIELD: &[(&str, &str)] = &[
    ("num_hidden_layers", "block_count"),
    ("num_attention_heads", "attention.head_count"),
    ("num_key_value_heads", "attention.head_count_kv"),
    ("max_position_embeddings", "context_length"),
    ("rms_norm_eps", "attention.layer_norm_rms_epsilon"),
    ("rope_theta", "rope.freq_base"),
    (
        "partial_rotary_factor",
        "rope.dimension_count / attention.key_length",
    ),
    ("routed_scaling_factor", "expert_weights_scale"),
    ("num_experts_per_tok", "expert_used_count"),
    ("num_experts", "expert_count"),
    ("topk_group", "expert_group_used_count"),
    ("n_group", "expert_group_count"),
    ("moe_intermediate_size", "expert_feed_forward_length"),
    ("intermediate_size", "feed_forward_length"),
    ("first_k_dense_replace", "leading_dense_block_count"),
    ("expert_capacity", "expert_capacity"),
    ("vocab_size", "vocab_size"),
    ("hidden_size", "embedding_length"),
];

fn with_key_names(message: &str) -> String {
    let named: Vec<String> = KEY_OF_FIELD
        .iter()
        .filter(|(field, _)| {
            message
                .split(|ch: char| !(ch.is_alphanumeric() || ch == '_'))
                .any(|word| word == *field)
        })
        .map(|(field, key)| format!("{field} is {ARCH}.{key}"))
        .collect();
    match named.is_empty() {
        true => message.to_string(),
        false => format!("{message} ({})", named.join(", ")),
    }
}

/// `llada2.expert_count` (0 if absent or not a number), for messages.
pub fn expert_count(c: &Container) -> usize {
    Keys(c).uint_opt("expert_count").ok().flatten().unwrap_or(0)
}

/// `general.file_type` (llama_ftype) of a file whose main type is `dtype`.
pub fn file_type(dtype: candle_core::quantized::GgmlDType) -> u32 {
    use candle_core::quantized::GgmlDType as D;
    match dtype {
        D::F32 => 0,
        D::F16 => 1,
        D::Q4_0 => 2,
        D::Q4_1 => 3,
        D::Q8_0 => 7,
        D::Q5_0 => 8,
        D::Q5_1 => 9,
        D::Q2K => 10,
        D::Q3K => 12,
        D::Q4K => 15,
        D::Q5K => 17,
        D::Q6K => 18,
        D::BF16 => 32,
        D::Q8_1 | D::Q8K => 7,
    }
}

/// The `llada2.*` keys (and the architecture's) for `cfg`.
pub fn metadata(cfg: &Llada2Config) -> Vec<(String, Value)> {
    let u = |v: usize| Value::U32(v as u32);
    let h = cfg.heads();
    let key = |k: &str| format!("{ARCH}.{k}");
    let mut out = vec![
        ("general.architecture".into(), Value::String(ARCH.into())),
        (key("block_count"), u(cfg.num_hidden_layers)),
        (key("context_length"), u(cfg.max_position_embeddings)),
        (key("embedding_length"), u(cfg.hidden_size)),
        (key("attention.head_count"), u(h.query)),
        (key("attention.head_count_kv"), u(h.kv)),
        (key("attention.key_length"), u(h.dim)),
        (key("attention.value_length"), u(h.dim)),
        (
            key("attention.layer_norm_rms_epsilon"),
            Value::F32(cfg.rms_norm_eps as f32),
        ),
        (key("rope.freq_base"), Value::F32(cfg.rope_theta as f32)),
        (key("rope.dimension_count"), u(cfg.rope_dim())),
        (key("rope.scaling.type"), Value::String("none".into())),
        (key("vocab_size"), u(cfg.vocab_size)),
        ("diffusion.shift_logits".into(), Value::Bool(false)),
    ];
    if let Some(ff) = cfg.intermediate_size {
        out.push((key("feed_forward_length"), u(ff)));
    }
    if let Some(m) = cfg.moe_shape() {
        let shared = cfg.num_shared_experts.unwrap_or(0);
        let gating = if cfg.score_function == "softmax" {
            1
        } else {
            2
        };
        out.extend([
            (
                key("leading_dense_block_count"),
                u(cfg.first_k_dense_replace),
            ),
            (key("expert_count"), u(m.num_experts)),
            (key("expert_used_count"), u(m.experts_per_token)),
            (key("expert_shared_count"), u(shared)),
            (key("expert_feed_forward_length"), u(m.intermediate)),
            (
                key("expert_shared_feed_forward_length"),
                u(m.shared_intermediate),
            ),
            (
                key("expert_weights_scale"),
                Value::F32(cfg.routed_scaling_factor as f32),
            ),
            (key("expert_weights_norm"), Value::Bool(true)),
            (key("expert_gating_func"), Value::U32(gating)),
            (key("expert_group_count"), u(m.n_group)),
            (key("expert_group_used_count"), u(m.topk_group)),
        ]);
        // LLaDA2.2's block routing: llada's own keys (llama.cpp's layout has none yet).
        if m.capacity > 0 {
            out.push((key("expert_capacity"), u(m.capacity)));
            out.push((key("expert_routing_block_length"), u(m.routing_block)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_names_map_to_the_layout() {
        let at = |hf: &str| locate(hf).map(|l| (l.tensor, l.expert));
        assert_eq!(
            at("model.layers.3.attention.query_key_value.weight"),
            Some(("blk.3.attn_qkv.weight".into(), None))
        );
        assert_eq!(
            at("model.layers.1.mlp.experts.7.down_proj.weight"),
            Some(("blk.1.ffn_down_exps.weight".into(), Some(7)))
        );
        assert_eq!(
            at("model.layers.1.mlp.gate.expert_bias"),
            Some(("blk.1.exp_probs_b.bias".into(), None))
        );
        assert_eq!(at("lm_head.weight"), Some(("output.weight".into(), None)));
        assert_eq!(at("model.layers.x.mlp.gate.weight"), None);
        assert_eq!(at("model.layers.1.mlp.experts.7.bogus"), None);
    }

    #[test]
    fn config_messages_name_the_gguf_keys() {
        let m =
            with_key_names("num_attention_heads (4) must be a multiple of num_key_value_heads (3)");
        assert!(m.ends_with(
            "(num_attention_heads is llada2.attention.head_count, num_key_value_heads is llada2.attention.head_count_kv)"
        ), "{m}");
        assert_eq!(with_key_names("nothing here"), "nothing here");
    }
}
