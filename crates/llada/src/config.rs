//! `config.json` and `generation_config.json` of an HF-layout LLaDA2 model folder.
//!
//! Field names and defaults mirror the official `LLaDA2MoeConfig` class, so a config
//! that omits a field means what it means to the PyTorch code.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The architecture names llada accepts in `config.json`.
pub const ARCHITECTURE: &str = "LLaDA2MoeModelLM";
pub const MODEL_TYPE: &str = "llada2_moe";

/// The files of a model folder besides its weights (absent ones are fine): what
/// `llada download` fetches and `llada quantize` copies.
pub const COMPANION_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
];

/// LLaDA2 defaults for the special tokens, used when no config names them.
pub const DEFAULT_MASK_ID: u32 = 156_895;
pub const DEFAULT_EOS_ID: u32 = 156_892;

/// Serialized, it is a complete `config.json`: every field with the value llada uses.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Llada2Config {
    #[serde(default)]
    pub architectures: Vec<String>,
    #[serde(default)]
    pub model_type: Option<String>,
    #[serde(default = "d::vocab_size")]
    pub vocab_size: usize,
    #[serde(default = "d::hidden_size")]
    pub hidden_size: usize,
    #[serde(default)]
    pub intermediate_size: Option<usize>,
    #[serde(default = "d::num_hidden_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "d::num_attention_heads")]
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: usize,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "d::hidden_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub use_qkv_bias: bool,
    #[serde(default = "d::yes")]
    pub use_qk_norm: bool,
    #[serde(default = "d::yes")]
    pub use_bias: bool,
    #[serde(default = "d::rms_norm_eps")]
    pub rms_norm_eps: f64,
    #[serde(default)]
    pub norm_head: bool,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default = "d::max_position_embeddings")]
    pub max_position_embeddings: usize,
    #[serde(default = "d::rope_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default = "d::partial_rotary_factor")]
    pub partial_rotary_factor: f64,
    /// Informational in real configs; the reference derives the rotary width from
    /// `head_dim * partial_rotary_factor`, and so do we (a disagreement is an error).
    #[serde(default)]
    pub rotary_dim: Option<usize>,
    #[serde(default)]
    pub pad_token_id: Option<serde_json::Value>,
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
    #[serde(default = "d::num_experts")]
    pub num_experts: Option<usize>,
    #[serde(default)]
    pub num_shared_experts: Option<usize>,
    #[serde(default = "d::num_experts_per_tok")]
    pub num_experts_per_tok: usize,
    #[serde(default = "d::n_group")]
    pub n_group: usize,
    #[serde(default = "d::topk_group")]
    pub topk_group: usize,
    #[serde(default = "d::routed_scaling_factor")]
    pub routed_scaling_factor: f64,
    #[serde(default)]
    pub moe_intermediate_size: Option<usize>,
    #[serde(default)]
    pub first_k_dense_replace: usize,
    #[serde(default = "d::score_function")]
    pub score_function: String,
    #[serde(default)]
    pub moe_router_enable_expert_bias: bool,
    #[serde(default)]
    pub torch_dtype: Option<String>,
    /// LLaDA2.2 block routing: each routing block of `block_size` positions picks a pool
    /// of this many experts, and its tokens choose among them (0: LLaDA2.0's
    /// group-limited routing, token by token).
    #[serde(default)]
    pub expert_capacity: usize,
    /// The routing block's length (LLaDA2.2; tiled from absolute position 0). A decode
    /// block must be a multiple of it.
    #[serde(default)]
    pub block_size: Option<usize>,
    /// LLaDA2.2's Levenshtein editing tokens: DELETE drops a position, SPLIT turns it into
    /// `[MASK, token]`.
    #[serde(default)]
    pub delete_token_id: Option<u32>,
    #[serde(default)]
    pub split_token_id: Option<u32>,
}

mod d {
    pub fn vocab_size() -> usize {
        30592
    }
    pub fn hidden_size() -> usize {
        1024
    }
    pub fn num_hidden_layers() -> usize {
        24
    }
    pub fn num_attention_heads() -> usize {
        16
    }
    pub fn hidden_act() -> String {
        "silu".into()
    }
    pub fn yes() -> bool {
        true
    }
    pub fn rms_norm_eps() -> f64 {
        1e-5
    }
    pub fn max_position_embeddings() -> usize {
        16384
    }
    pub fn rope_theta() -> f64 {
        10000.0
    }
    pub fn partial_rotary_factor() -> f64 {
        0.5
    }
    pub fn num_experts() -> Option<usize> {
        Some(16)
    }
    pub fn num_experts_per_tok() -> usize {
        2
    }
    pub fn n_group() -> usize {
        8
    }
    pub fn topk_group() -> usize {
        4
    }
    pub fn routed_scaling_factor() -> f64 {
        2.5
    }
    pub fn score_function() -> String {
        "sigmoid".into()
    }
}

/// Query and key/value head counts and the head width of an attention layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heads {
    pub query: usize,
    pub kv: usize,
    pub dim: usize,
}

/// The MoE shape of a layer, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoeShape {
    pub num_experts: usize,
    pub experts_per_token: usize,
    pub n_group: usize,
    pub topk_group: usize,
    pub intermediate: usize,
    pub shared_intermediate: usize,
    /// Block routing (LLaDA2.2): the pool size per routing block; 0 for group-limited
    /// routing.
    pub capacity: usize,
    /// The routing block's length (used when `capacity > 0`).
    pub routing_block: usize,
}

impl Llada2Config {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text, path)
    }

    /// Parses and validates `config.json` text (`origin` names it in errors).
    pub fn parse(text: &str, origin: &Path) -> Result<Self> {
        let cfg: Self = serde_json::from_str(text).map_err(|source| Error::Json {
            path: origin.to_path_buf(),
            what: "a LLaDA2 config",
            source,
        })?;
        cfg.validate(origin)?;
        Ok(cfg)
    }

    /// Parses and validates a config given as JSON (`origin` names it in errors).
    pub fn from_json(value: serde_json::Value, origin: &Path) -> Result<Self> {
        let cfg: Self = serde_json::from_value(value).map_err(|source| Error::Json {
            path: origin.to_path_buf(),
            what: "a LLaDA2 config",
            source,
        })?;
        cfg.validate(origin)?;
        Ok(cfg)
    }

    /// The attention layers' head counts and width.
    pub fn heads(&self) -> Heads {
        Heads {
            query: self.num_attention_heads,
            kv: self.num_key_value_heads,
            dim: self.head_dim(),
        }
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Rotary width per head, as the reference computes it.
    pub fn rope_dim(&self) -> usize {
        (self.head_dim() as f64 * self.partial_rotary_factor) as usize
    }

    pub fn is_moe_layer(&self, layer: usize) -> bool {
        self.num_experts.is_some() && layer >= self.first_k_dense_replace
    }

    /// Bytes a KV cache of `positions` positions takes, keys and values of every layer
    /// stored as `dtype`.
    pub fn kv_cache_bytes(&self, positions: usize, dtype: crate::KvDtype) -> u64 {
        let h = self.heads();
        // Saturating: an impossible length (refused later) compares larger than any
        // memory.
        ((self.num_hidden_layers * 2 * h.kv * h.dim) as u64)
            .saturating_mul(positions as u64)
            .saturating_mul(dtype.bytes() as u64)
    }

    /// How many weights the model's linear layers hold (attention, MLPs, experts, the head
    /// when untied) and how many the rest (embeddings, routers; norms are negligible).
    pub fn weight_counts(&self) -> (u64, u64) {
        let h = self.hidden_size as u64;
        let heads = self.heads();
        let (q, kv, d) = (heads.query as u64, heads.kv as u64, heads.dim as u64);
        let mut linear = 0u64;
        let mut other = self.vocab_size as u64 * h;
        if !self.tie_word_embeddings {
            linear += self.vocab_size as u64 * h;
        }
        for layer in 0..self.num_hidden_layers {
            linear += (q + 2 * kv) * d * h + h * q * d;
            match self.moe_shape().filter(|_| self.is_moe_layer(layer)) {
                Some(m) => {
                    let e = m.num_experts as u64;
                    linear += 3 * h * (e * m.intermediate as u64 + m.shared_intermediate as u64);
                    other += e * h;
                }
                None => linear += 3 * h * self.intermediate_size.unwrap_or(0) as u64,
            }
        }
        (linear, other)
    }

    pub fn moe_shape(&self) -> Option<MoeShape> {
        let num_experts = self.num_experts?;
        let intermediate = self.moe_intermediate_size?;
        Some(MoeShape {
            num_experts,
            experts_per_token: self.num_experts_per_tok,
            n_group: self.n_group,
            topk_group: self.topk_group,
            intermediate,
            shared_intermediate: intermediate * self.num_shared_experts.unwrap_or(0),
            capacity: self.expert_capacity,
            routing_block: self.routing_block(),
        })
    }

    /// The routing block of LLaDA2.2's block routing (`None`: routing is per token, and
    /// any decode block length works).
    pub fn routing_block(&self) -> usize {
        if self.expert_capacity > 0 {
            self.block_size.unwrap_or(0)
        } else {
            0
        }
    }

    /// Refuses a decode block length that splits routing blocks: with block routing a
    /// token's experts depend on its whole routing block, so a decode block must hold
    /// whole ones for the cached path to route like the reference.
    pub fn check_block_length(&self, block_length: usize) -> Result<()> {
        let routing = self.routing_block();
        if routing > 0 && !block_length.is_multiple_of(routing) {
            return Err(Error::param(
                "block_length",
                format!(
                    "must be a multiple of the model's routing block ({routing}, config block_size), got {block_length}"
                ),
            ));
        }
        Ok(())
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let bad = |message: String| Error::Config {
            path: path.to_path_buf(),
            message,
        };
        let arch_ok = self.architectures.iter().any(|a| a == ARCHITECTURE);
        let type_ok = self.model_type.as_deref() == Some(MODEL_TYPE);
        if !arch_ok && !type_ok {
            let found = match (self.architectures.first(), &self.model_type) {
                (Some(a), _) => a.clone(),
                (None, Some(t)) => t.clone(),
                (None, None) => "none given".into(),
            };
            return Err(Error::UnsupportedArchitecture {
                path: path.to_path_buf(),
                found,
            });
        }
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(bad(format!("{field} must be positive")));
            }
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(bad(format!(
                "num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
                self.num_attention_heads, self.num_key_value_heads
            )));
        }
        let finite_positive = [
            ("rope_theta", self.rope_theta),
            ("rms_norm_eps", self.rms_norm_eps),
            ("routed_scaling_factor", self.routed_scaling_factor),
        ];
        for (field, value) in finite_positive {
            if !(value.is_finite() && value > 0.0) {
                return Err(bad(format!(
                    "{field} must be a finite number above 0, got {value}"
                )));
            }
        }
        if !(0.0..=1.0).contains(&self.partial_rotary_factor) {
            return Err(bad(format!(
                "partial_rotary_factor must be in [0, 1], got {}",
                self.partial_rotary_factor
            )));
        }
        if self.norm_head {
            // The official modeling code stores `norm_head` but never applies it; so
            // does llada, and says so rather than keep quiet.
            tracing::warn!(
                "{}: norm_head is true, but LLaDA2 (like its official modeling code) does not normalise the lm_head; the flag is ignored",
                path.display()
            );
        }
        let head_dim = self.head_dim();
        if head_dim == 0 {
            return Err(bad("head_dim must be positive".into()));
        }
        let rope_dim = self.rope_dim();
        if !rope_dim.is_multiple_of(2) || rope_dim > head_dim {
            return Err(bad(format!(
                "partial_rotary_factor {} gives a rotary width of {rope_dim}, which must be even and at most head_dim {head_dim}",
                self.partial_rotary_factor
            )));
        }
        if let Some(r) = self.rotary_dim {
            if r != rope_dim {
                return Err(bad(format!(
                    "rotary_dim {r} disagrees with head_dim * partial_rotary_factor = {rope_dim}"
                )));
            }
        }
        if self.hidden_act != "silu" {
            return Err(bad(format!(
                "hidden_act {:?} is not supported (only silu)",
                self.hidden_act
            )));
        }
        for (field, id) in [
            ("delete_token_id", self.delete_token_id),
            ("split_token_id", self.split_token_id),
        ] {
            if let Some(id) = id.filter(|&id| id as usize >= self.vocab_size) {
                return Err(bad(format!(
                    "{field} {id} is outside the vocabulary ({} tokens)",
                    self.vocab_size
                )));
            }
        }
        if let Some(scaling) = &self.rope_scaling {
            let kind = scaling
                .get("rope_type")
                .or_else(|| scaling.get("type"))
                .and_then(|v| v.as_str());
            if !matches!(kind, None | Some("default")) && !scaling.is_null() {
                return Err(bad(format!("rope_scaling {scaling} is not supported")));
            }
        }
        let dense_layers = if self.num_experts.is_some() {
            self.first_k_dense_replace.min(self.num_hidden_layers)
        } else {
            self.num_hidden_layers
        };
        if dense_layers > 0 && self.intermediate_size.unwrap_or(0) == 0 {
            return Err(bad(
                "intermediate_size is required for the dense (first_k_dense_replace) layers".into(),
            ));
        }
        if self.num_experts.is_some() && self.first_k_dense_replace < self.num_hidden_layers {
            let Some(moe) = self.moe_shape() else {
                return Err(bad(
                    "moe_intermediate_size is required for MoE layers".into()
                ));
            };
            if self.score_function != "sigmoid" {
                return Err(bad(format!(
                    "score_function {:?} is not supported (only sigmoid)",
                    self.score_function
                )));
            }
            if moe.capacity > 0 {
                // Block routing: groups are not used (n_group/topk_group may stay in
                // the config, as in LLaDA2.2's).
                if moe.capacity > moe.num_experts || moe.capacity < moe.experts_per_token {
                    return Err(bad(format!(
                        "expert_capacity ({}) must be between num_experts_per_tok ({}) and num_experts ({})",
                        moe.capacity, moe.experts_per_token, moe.num_experts
                    )));
                }
                if moe.experts_per_token == 0 {
                    return Err(bad("num_experts_per_tok must be positive".into()));
                }
                if moe.routing_block == 0 {
                    return Err(bad(
                        "expert_capacity needs block_size (the routing block), a positive number"
                            .into(),
                    ));
                }
                if moe.intermediate == 0 {
                    return Err(bad("moe_intermediate_size must be positive".into()));
                }
                return Ok(());
            }
            if moe.num_experts == 0 || moe.n_group == 0 || moe.num_experts % moe.n_group != 0 {
                return Err(bad(format!(
                    "num_experts ({}) must be a positive multiple of n_group ({})",
                    moe.num_experts, moe.n_group
                )));
            }
            let group_size = moe.num_experts / moe.n_group;
            if moe.topk_group == 0 || moe.topk_group > moe.n_group {
                return Err(bad(format!(
                    "topk_group ({}) must be between 1 and n_group ({})",
                    moe.topk_group, moe.n_group
                )));
            }
            if moe.experts_per_token == 0 || moe.experts_per_token > moe.topk_group * group_size {
                return Err(bad(format!(
                    "num_experts_per_tok ({}) must be between 1 and topk_group * experts per group ({})",
                    moe.experts_per_token,
                    moe.topk_group * group_size
                )));
            }
            if moe.intermediate == 0 {
                return Err(bad("moe_intermediate_size must be positive".into()));
            }
        }
        Ok(())
    }
}

/// `generation_config.json`: the special token ids a decoder needs, and the block length
/// the model was trained to decode with (llada's trainer writes it: 1 for an
/// autoregressive model; without it, the reference's 32).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct GenerationConfig {
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    pub pad_token_id: Option<serde_json::Value>,
    #[serde(default)]
    pub mask_token_id: Option<u32>,
    /// Default block length (and steps per block) for this model.
    #[serde(default)]
    pub block_length: Option<usize>,
    /// The decoder this model is meant to be decoded with, and its settings (LLaDA2.2:
    /// `indel`); a user's settings override them. SGLang's names are accepted too.
    #[serde(default)]
    pub decoder: Option<String>,
    #[serde(default)]
    pub threshold: Option<f32>,
    #[serde(default, alias = "edit_threshold")]
    pub editing_threshold: Option<f32>,
    #[serde(default, alias = "max_post_edit_steps")]
    pub max_post_steps: Option<usize>,
    #[serde(default)]
    pub penalty_lambda: Option<f32>,
}

impl GenerationConfig {
    /// Reads the file if present; a model folder without one is fine.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("generation_config.json");
        if !path.exists() {
            return Ok(Self::default());
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        Self::parse(&text, &path)
    }

    /// Parses `generation_config.json` text (`origin` names it in errors).
    pub fn parse(text: &str, origin: &Path) -> Result<Self> {
        let cfg: Self = serde_json::from_str(text).map_err(|source| Error::Json {
            path: origin.to_path_buf(),
            what: "a generation config",
            source,
        })?;
        if cfg.block_length == Some(0) {
            return Err(Error::Config {
                path: origin.to_path_buf(),
                message: "block_length must be at least 1".into(),
            });
        }
        let mut params = crate::GenerateParams::new(0, 1);
        cfg.decode_settings()
            .apply(&mut params)
            .and_then(|()| params.decoder.validate())
            .map_err(|e| Error::Config {
                path: origin.to_path_buf(),
                message: format!("the decoder settings: {e}"),
            })?;
        Ok(cfg)
    }

    /// The decoder settings the file gives (the model's defaults).
    pub fn decode_settings(&self) -> crate::DecodeSettings {
        crate::DecodeSettings {
            decoder: self.decoder.clone(),
            threshold: self.threshold,
            editing_threshold: self.editing_threshold,
            max_post_steps: self.max_post_steps,
            penalty_lambda: self.penalty_lambda,
            ..Default::default()
        }
    }

    /// The first EOS id (`eos_token_id` may be an int or a list).
    pub fn eos_id(&self) -> Option<u32> {
        first_id(self.eos_token_id.as_ref())
    }
}

pub fn first_id(value: Option<&serde_json::Value>) -> Option<u32> {
    match value? {
        serde_json::Value::Number(n) => n.as_u64().and_then(|v| u32::try_from(v).ok()),
        serde_json::Value::Array(items) => first_id(items.first()),
        _ => None,
    }
}

/// Everything read from a model folder before the weights.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    pub dir: PathBuf,
    pub config: Llada2Config,
    pub generation: GenerationConfig,
}

impl ModelFiles {
    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::io(
                dir,
                std::io::Error::new(std::io::ErrorKind::NotFound, "model folder not found"),
            ));
        }
        let config = Llada2Config::from_file(&dir.join("config.json"))?;
        let generation = GenerationConfig::from_dir(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            generation,
        })
    }
}
