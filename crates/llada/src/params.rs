//! The settings of one generation ([`GenerateParams`]): lengths, the decoder, sampling,
//! special ids, caching, and the one validation every front end shares.

use serde::Serialize;

use crate::decode::DecoderConfig;
use crate::error::{Error, Result};
use crate::sampling::SamplingParams;

#[derive(Debug, Clone, PartialEq)]
pub struct GenerateParams {
    /// Most tokens to generate after the prompt.
    pub gen_length: usize,
    pub block_length: usize,
    /// Denoising steps per block (capped at `gen_length`, as the reference does).
    pub steps: usize,
    pub decoder: DecoderConfig,
    pub sampling: SamplingParams,
    pub seed: u64,
    pub mask_id: u32,
    pub eos_id: u32,
    /// The model's Levenshtein editing tokens (LLaDA2.2's `delete_token_id` and
    /// `split_token_id`), which the `indel` decoder writes.
    pub delete_id: Option<u32>,
    pub split_id: Option<u32>,
    /// More tokens that end the answer as EOS does (e.g. `<|role_end|>` in chat).
    pub extra_stop_ids: Vec<u32>,
    /// Stop inside a block as soon as an EOS is placed with no mask before it.
    pub eos_early_stop: bool,
    /// Generate all `gen_length` tokens: EOS and the extra stop ids end nothing
    /// (benchmarks measure fixed lengths this way).
    pub ignore_eos: bool,
    /// Serve finished blocks from the KV cache (false: recompute the whole prefix each
    /// step, exactly as the reference does).
    pub use_cache: bool,
    /// Keys/values of the block being decoded: recomputed every step (exact), or kept
    /// for positions that did not change (approximate; needs `use_cache`).
    pub block_cache: BlockCache,
    /// The number format of the KV cache (f32: exact).
    pub kv_cache: crate::KvDtype,
    /// With the cache, a prompt longer than this is committed in passes of this many
    /// tokens (rounded down to whole blocks) before decoding starts.
    pub prefill_chunk: usize,
}

/// How a step treats the keys/values of the block being decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockCache {
    /// Every step recomputes the whole block: the reference's numerics.
    #[default]
    Exact,
    /// Approximate, as Fast-dLLM's dual cache and dInfer's vicinity refresh: a step
    /// recomputes only the positions still masked, those whose token changed since they
    /// were last computed and those a decoder wants logits for; the others keep their
    /// keys/values. The whole block is recomputed at its first step, after a step that
    /// edited a token, and every `refresh` steps (0: only then). Finished blocks are
    /// committed by a full pass, so the approximation never reaches later blocks' cache.
    Dual { refresh: usize },
}

impl BlockCache {
    /// `exact` or `dual` (with `refresh`).
    pub fn named(name: &str, refresh: usize) -> Result<Self> {
        match name {
            "exact" => Ok(BlockCache::Exact),
            "dual" => Ok(BlockCache::Dual { refresh }),
            other => Err(Error::param(
                "block_cache",
                format!("unknown block cache {other:?} (use exact or dual)"),
            )),
        }
    }
}

/// The reference's block length and denoising steps per block.
const DEFAULT_BLOCK_LENGTH: usize = 32;
const DEFAULT_STEPS: usize = 32;
/// Tokens per prefill pass: memory for a 1024-token chunk of LLaDA2.2-mini's activations
/// is tens of MB, and each pass still reads the weights once for many tokens.
pub const DEFAULT_PREFILL_CHUNK: usize = 1024;

impl GenerateParams {
    /// The reference defaults (block 32, 32 steps, threshold 0.95, greedy).
    pub fn new(mask_id: u32, eos_id: u32) -> Self {
        Self {
            gen_length: 128,
            block_length: DEFAULT_BLOCK_LENGTH,
            steps: DEFAULT_STEPS,
            decoder: DecoderConfig::Threshold { threshold: 0.95 },
            sampling: SamplingParams::default(),
            seed: 0,
            mask_id,
            eos_id,
            delete_id: None,
            split_id: None,
            extra_stop_ids: Vec::new(),
            eos_early_stop: false,
            ignore_eos: false,
            use_cache: true,
            block_cache: BlockCache::Exact,
            kv_cache: crate::KvDtype::F32,
            prefill_chunk: DEFAULT_PREFILL_CHUNK,
        }
    }

    /// Sets the block length and as many denoising steps per block (at least one token
    /// per step, as the reference's default 32/32 and a model's `generation_config.json`
    /// block): the one rule the CLI, chat, server and a model's defaults follow when a
    /// block length comes without steps.
    pub fn set_block_length(&mut self, block_length: usize) {
        self.block_length = block_length;
        self.steps = block_length;
    }

    /// One line for people: the settings a user can change.
    pub fn describe(&self) -> String {
        let opt = |v: Option<String>| v.unwrap_or_else(|| "off".into());
        format!(
            "decoder {}, block-length {}, steps {}, gen-length {}, temperature {}, top-k {}, top-p {}, seed {}, block cache {}, kv cache {}",
            self.decoder.describe(),
            self.block_length,
            self.steps,
            self.gen_length,
            self.sampling.temperature,
            opt(self.sampling.top_k.map(|k| k.to_string())),
            opt(self.sampling.top_p.map(|v| v.to_string())),
            self.seed,
            match self.block_cache {
                BlockCache::Exact => "exact".to_string(),
                BlockCache::Dual { refresh: 0 } => "dual".to_string(),
                BlockCache::Dual { refresh } => format!("dual, refresh every {refresh} steps"),
            },
            self.kv_cache.name()
        )
    }

    /// Tokens per prefill pass: `prefill_chunk` rounded down to whole blocks, at least
    /// one block.
    pub fn prefill_chunk_tokens(&self) -> usize {
        let b = self.block_length.max(1);
        (self.prefill_chunk / b).max(1) * b
    }

    /// Whether `token` ends the answer.
    pub fn is_stop(&self, token: u32) -> bool {
        !self.ignore_eos && (token == self.eos_id || self.extra_stop_ids.contains(&token))
    }

    /// Positions a prompt of `prompt_len` tokens occupies with its answer: whole blocks
    /// (saturating: an impossible length compares larger than any context).
    pub fn positions_needed(&self, prompt_len: usize) -> usize {
        let b = self.block_length.max(1);
        prompt_len
            .saturating_add(self.gen_length)
            .div_ceil(b)
            .saturating_mul(b)
    }

    /// Checks every setting against a vocabulary of `vocab` tokens: the one validation
    /// the CLI, chat, server and evaluation share. Errors name the setting.
    pub fn validate(&self, vocab: usize) -> Result<()> {
        for (param, value) in [
            ("gen_length", self.gen_length),
            ("block_length", self.block_length),
            ("steps", self.steps),
            ("prefill_chunk", self.prefill_chunk),
        ] {
            if value == 0 {
                return Err(Error::param(param, "must be at least 1"));
            }
        }
        self.decoder.validate()?;
        self.sampling.validate()?;
        if self.block_cache != BlockCache::Exact && !self.use_cache {
            return Err(Error::param(
                "block_cache",
                "approximate block caching needs the KV cache",
            ));
        }
        for (param, id) in [("mask_id", self.mask_id), ("eos_id", self.eos_id)] {
            if id as usize >= vocab {
                return Err(Error::param(
                    param,
                    format!("{id} is outside the vocabulary (size {vocab})"),
                ));
            }
        }
        if let Some(&id) = self.extra_stop_ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(Error::param(
                "stop_ids",
                format!("{id} is outside the vocabulary (size {vocab})"),
            ));
        }
        if self.mask_id == self.eos_id || self.extra_stop_ids.contains(&self.mask_id) {
            return Err(Error::param(
                "mask_id",
                format!(
                    "{} is also a stop token: the mask and EOS ids must differ",
                    self.mask_id
                ),
            ));
        }
        Ok(())
    }
}
