//! Flags shared by the commands that load a model and decode.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use llada::decode::DecoderSettings;
use llada::tokenizer::SpecialTokens;
use llada::{
    BlockCache, DecoderConfig, GenerateParams, LoadedModel, Message, Quant, SamplingParams,
};

use crate::default_model::DEFAULT_MODEL;

#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model folder in Hugging Face layout, or a repo id (org/name[@revision]) found in
    /// the local Hugging Face cache. Default: the model built into this binary
    /// (or the folder in LLADA_DEFAULT_MODEL).
    #[arg(long, short = 'm')]
    pub model: Option<String>,
    /// Quantize the linear layers at load time for CPU inference: q8_0 or q4k.
    #[arg(long)]
    pub quant: Option<Quant>,
}

impl ModelArgs {
    /// The model folder, or `None` for the built-in default model.
    pub fn dir(&self) -> Result<Option<PathBuf>> {
        match &self.model {
            Some(model) => Ok(Some(llada::hub::resolve_model(model)?)),
            None => Ok(std::env::var_os("LLADA_DEFAULT_MODEL").map(PathBuf::from)),
        }
    }

    pub fn load(&self) -> Result<LoadedModel> {
        match self.dir()? {
            Some(dir) => llada::load_model_with(&dir, self.quant)
                .with_context(|| format!("loading the model from {}", dir.display())),
            None => llada::load_embedded(&DEFAULT_MODEL, self.quant)
                .context("loading the built-in default model"),
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct DecodeArgs {
    /// Most tokens to generate.
    #[arg(long, default_value_t = 128)]
    pub gen_length: usize,
    /// Tokens per diffusion block (1 = autoregressive decoding; default: the model's
    /// generation_config.json `block_length`, else 32).
    #[arg(long)]
    pub block_length: Option<usize>,
    /// Denoising steps per block (at most the block length fills one token per step;
    /// default: the block length, the flag's or the model's).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Decoding strategy: threshold (the LLaDA2.0 reference rule), joint (LLaDA2.1:
    /// also replaces decoded tokens), credit or hierarchy (dInfer's).
    #[arg(long, default_value = "threshold")]
    pub decoder: String,
    /// Fill every masked position whose confidence exceeds this (default: 0.95 for
    /// threshold, 0.7 for joint, 0.9 for credit and hierarchy).
    #[arg(long)]
    pub threshold: Option<f32>,
    /// joint: replace a decoded token when another has a probability above this (<= 0:
    /// no editing; default 0.5).
    #[arg(long)]
    pub editing_threshold: Option<f32>,
    /// joint: at most this many refinement steps after a block's last mask (default 16).
    #[arg(long)]
    pub max_post_steps: Option<usize>,
    /// credit: weight of the credit in the logits (default 0.7).
    #[arg(long)]
    pub credit_alpha: Option<f32>,
    /// credit: exponent of the top probability a step adds (default 0.2).
    #[arg(long)]
    pub credit_gamma: Option<f32>,
    /// credit: decay of the credit per step (default 0.8).
    #[arg(long)]
    pub credit_beta: Option<f32>,
    /// hierarchy: the best position of a run of masks is filled above this (default 0.4).
    #[arg(long)]
    pub low_threshold: Option<f32>,
    /// 0 = greedy (argmax).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long)]
    pub top_k: Option<usize>,
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Seed for sampling; the same seed gives the same output.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Mask token id (default: generation_config.json, the tokenizer's <|mask|>, 156895).
    #[arg(long)]
    pub mask_id: Option<u32>,
    /// EOS token id (default: generation_config.json, the tokenizer's EOS, 156892).
    #[arg(long)]
    pub eos_id: Option<u32>,
    /// Stop inside a block as soon as an EOS is placed with no mask before it.
    #[arg(long)]
    pub eos_early_stop: bool,
    /// Keys/values of the block being decoded: exact (recomputed every step) or dual
    /// (approximate: a step recomputes only masked and changed positions).
    #[arg(long, default_value = "exact")]
    pub block_cache: String,
    /// dual: recompute the whole block every N steps too (0: only at its first step and
    /// after an edit).
    #[arg(long, default_value_t = 0)]
    pub block_cache_refresh: usize,
}

impl DecodeArgs {
    /// The decoding parameters these flags ask for, checked by the engine's one
    /// validation (the server and chat use the same).
    pub fn params(&self, loaded: &LoadedModel) -> Result<GenerateParams> {
        let p = self.unchecked_params(loaded)?;
        p.validate(loaded.model.config().vocab_size)
            .map_err(|e| anyhow::anyhow!("{}", flag_names(&e.to_string())))?;
        Ok(p)
    }

    /// The decoder these flags name, with the settings they give.
    pub fn decoder(&self) -> Result<DecoderConfig> {
        let settings = DecoderSettings {
            threshold: self.threshold,
            editing_threshold: self.editing_threshold,
            max_post_steps: self.max_post_steps,
            credit_alpha: self.credit_alpha,
            credit_gamma: self.credit_gamma,
            credit_beta: self.credit_beta,
            low_threshold: self.low_threshold,
        };
        DecoderConfig::named(&self.decoder, settings)
            .map_err(|e| anyhow::anyhow!("{}", flag_names(&e.to_string())))
    }

    fn unchecked_params(&self, loaded: &LoadedModel) -> Result<GenerateParams> {
        let mut p = loaded.default_params();
        p.gen_length = self.gen_length;
        // The model's own block length (and as many steps) unless a flag says otherwise.
        if let Some(b) = self.block_length {
            p.set_block_length(b);
        }
        if let Some(s) = self.steps {
            p.steps = s;
        }
        p.decoder = self.decoder()?;
        p.sampling = SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
        };
        p.seed = self.seed;
        if let Some(m) = self.mask_id {
            p.mask_id = m;
        }
        if let Some(e) = self.eos_id {
            p.eos_id = e;
        }
        p.eos_early_stop = self.eos_early_stop;
        p.block_cache = BlockCache::named(&self.block_cache, self.block_cache_refresh)
            .map_err(|e| anyhow::anyhow!("{}", flag_names(&e.to_string())))?;
        Ok(p)
    }
}

/// An engine message with its setting names as the flags spell them.
pub fn flag_names(message: &str) -> String {
    let mut out = message.to_string();
    for (name, flag) in [
        ("editing_threshold", "--editing-threshold"),
        ("max_post_steps", "--max-post-steps"),
        ("credit_alpha", "--credit-alpha"),
        ("credit_gamma", "--credit-gamma"),
        ("credit_beta", "--credit-beta"),
        ("low_threshold", "--low-threshold"),
        ("decoder", "--decoder"),
        ("block_cache", "--block-cache"),
        ("gen_length", "--gen-length"),
        ("block_length", "--block-length"),
        ("steps", "--steps"),
        ("threshold", "--threshold"),
        ("temperature", "--temperature"),
        ("top_p", "--top-p"),
        ("mask_id", "--mask-id"),
        ("eos_id", "--eos-id"),
    ] {
        out = out.replace(&format!("invalid {name}:"), &format!("invalid {flag}:"));
    }
    out
}

#[derive(Args, Debug, Clone)]
pub struct PromptArgs {
    /// Prompt as comma-separated token ids, e.g. 1,2,3 (used as given).
    #[arg(long, value_delimiter = ',', conflicts_with = "prompt")]
    pub prompt_ids: Option<Vec<u32>>,
    /// Prompt as text: a user turn in the model's chat template (see --raw, --system).
    #[arg(long)]
    pub prompt: Option<String>,
    /// System prompt for the chat template.
    #[arg(long, requires = "prompt")]
    pub system: Option<String>,
    /// Tokenize --prompt as it is, without the chat template.
    #[arg(long, requires = "prompt")]
    pub raw: bool,
    /// Read special-token text in the prompt (e.g. <|role_end|>) as plain text, so the
    /// prompt cannot open turns of its own.
    #[arg(long, requires = "prompt")]
    pub literal_special_tokens: bool,
}

impl PromptArgs {
    /// The prompt's token ids, if one was given.
    pub fn ids(&self, loaded: &LoadedModel) -> Result<Option<Vec<u32>>> {
        if let Some(ids) = &self.prompt_ids {
            return Ok(Some(ids.clone()));
        }
        let Some(text) = &self.prompt else {
            return Ok(None);
        };
        let Some(tok) = &loaded.tokenizer else {
            bail!(
                "--prompt TEXT needs the model's tokenizer, but {} has no tokenizer.json; \
                 pass token ids with --prompt-ids 1,2,3",
                loaded.files.dir.display()
            );
        };
        let specials = if self.literal_special_tokens {
            SpecialTokens::AsText
        } else {
            SpecialTokens::Parse
        };
        let ids = if self.raw {
            match specials {
                SpecialTokens::Parse => tok.encode(text)?,
                SpecialTokens::AsText => tok.encode_literal(text)?,
            }
        } else {
            let mut messages = Vec::new();
            if let Some(system) = &self.system {
                messages.push(Message::new("system", system));
            }
            messages.push(Message::new("user", text));
            tok.encode_chat_with(&messages, true, specials)?
        };
        Ok(Some(ids))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use clap::Parser;
    use proptest::prelude::*;

    use super::*;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        decode: DecodeArgs,
    }

    fn fixture() -> &'static LoadedModel {
        static MODEL: OnceLock<LoadedModel> = OnceLock::new();
        MODEL.get_or_init(|| {
            let dir =
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/golden/llada2-tiny");
            llada::load_model(&dir).unwrap()
        })
    }

    const FLAGS: &[&str] = &[
        "--decoder",
        "--editing-threshold",
        "--max-post-steps",
        "--credit-beta",
        "--low-threshold",
        "--gen-length",
        "--block-length",
        "--steps",
        "--threshold",
        "--temperature",
        "--top-k",
        "--top-p",
        "--seed",
        "--mask-id",
        "--eos-id",
        "--block-cache",
        "--block-cache-refresh",
    ];

    const VALUES: &[&str] = &[
        "0",
        "1",
        "2",
        "3",
        "7",
        "32",
        "511",
        "512",
        "1000000",
        "-1",
        "0.5",
        "0.95",
        "1.5",
        "NaN",
        "inf",
        "-inf",
        "1e-38",
        "1e38",
        "4294967295",
        "18446744073709551615",
        "abc",
        "",
        "threshold",
        "joint",
        "credit",
        "hierarchy",
        "exact",
        "dual",
    ];

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Any values for the decoding flags (shared by generate, chat, bench, eval and
        /// serve): refused by clap or the engine's validation with a message, or decoded,
        /// never a panic.
        #[test]
        fn random_decoding_flags_are_refused_or_decode(
            flags in prop::collection::vec(
                (prop::sample::select(FLAGS), prop::sample::select(VALUES)),
                1..5,
            )
        ) {
            let mut argv = vec!["llada".to_string()];
            for (flag, value) in &flags {
                argv.push(format!("{flag}={value}"));
            }
            let Ok(parsed) = Flags::try_parse_from(&argv) else {
                return Ok(()); // clap names the flag and exits 2
            };
            let model = fixture();
            let params = match parsed.decode.params(model) {
                Ok(p) => p,
                Err(e) => {
                    prop_assert!(e.to_string().contains("invalid --"), "{flags:?}: {e}");
                    return Ok(());
                }
            };
            let mut generation = match llada::Generation::new(&model.model, &[1, 2, 3], params) {
                Ok(g) => g,
                Err(e) => {
                    prop_assert!(!e.to_string().is_empty());
                    return Ok(());
                }
            };
            struct Quiet;
            impl llada::Observer for Quiet {}
            for _ in 0..3 {
                match generation.step(&model.model, &mut Quiet) {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => prop_assert!(false, "{flags:?}: accepted, then failed: {e}"),
                }
            }
        }
    }
}
