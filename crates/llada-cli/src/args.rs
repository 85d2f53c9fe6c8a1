//! Flags shared by the commands that load a model and decode.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use llada::tokenizer::SpecialTokens;
use llada::{DecodeSettings, DeviceChoice, GenerateParams, LoadedModel, Message, Quant};

use crate::default_model::DEFAULT_MODEL;

#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model folder in Hugging Face layout, a GGUF file (llama.cpp's `llada2` layout; the
    /// first of split files), or a repo id (org/name[@revision]) found in the local
    /// Hugging Face cache. Default: the model built into this binary
    /// (or the folder in LLADA_DEFAULT_MODEL).
    #[arg(long, short = 'm')]
    pub model: Option<String>,
    /// Quantize the linear layers at load time for CPU inference: q8_0 or q4k.
    #[arg(long)]
    pub quant: Option<Quant>,
    /// Where the model runs: cpu, gpu (the best GPU adapter; a software one such as
    /// lavapipe with a warning) or auto (a hardware GPU when there is one, else the CPU).
    /// Default: LLADA_DEVICE, else auto.
    #[arg(long)]
    pub device: Option<DeviceChoice>,
}

impl ModelArgs {
    /// The model folder, or `None` for the built-in default model.
    pub fn dir(&self) -> Result<Option<PathBuf>> {
        match &self.model {
            Some(model) => Ok(Some(llada::hub::resolve_model(model)?)),
            None => Ok(std::env::var_os("LLADA_DEFAULT_MODEL").map(PathBuf::from)),
        }
    }

    /// `--device`, else `LLADA_DEVICE`, else auto.
    pub fn device(&self) -> Result<DeviceChoice> {
        match self.device {
            Some(d) => Ok(d),
            None => DeviceChoice::from_env().context("reading LLADA_DEVICE"),
        }
    }

    /// Loads the model onto its device and says on stderr which device that is.
    pub fn load(&self) -> Result<LoadedModel> {
        let device = self.device()?;
        let loaded = match self.dir()? {
            Some(dir) => llada::load_model_on(&dir, self.quant, device)
                .with_context(|| format!("loading the model from {}", dir.display()))?,
            None => llada::load_embedded_on(&DEFAULT_MODEL, self.quant, device)
                .context("loading the built-in default model")?,
        };
        eprintln!("llada: running on {}", loaded.model.device_name());
        Ok(loaded)
    }
}

#[derive(Args, Debug, Clone)]
pub struct DecodeArgs {
    #[command(flatten)]
    pub settings: DecodeSettings,
    /// Mask token id (default: generation_config.json, the tokenizer's <|mask|>, 156895).
    #[arg(long)]
    pub mask_id: Option<u32>,
    /// EOS token id (default: generation_config.json, the tokenizer's EOS, 156892).
    #[arg(long)]
    pub eos_id: Option<u32>,
}

impl DecodeArgs {
    /// The model's decoding parameters with these flags applied, checked by the engine's
    /// one validation (the server and chat use the same).
    pub fn params(&self, loaded: &LoadedModel) -> Result<GenerateParams> {
        let mut p = loaded.default_params();
        if let Some(m) = self.mask_id {
            p.mask_id = m;
        }
        if let Some(e) = self.eos_id {
            p.eos_id = e;
        }
        self.settings.apply(&mut p).map_err(flag_error)?;
        p.validate(loaded.model.config().vocab_size)
            .map_err(flag_error)?;
        Ok(p)
    }
}

/// An engine error with the setting it names spelled as its flag.
pub fn flag_error(e: llada::Error) -> anyhow::Error {
    match e {
        llada::Error::InvalidParam { param, message }
            if DecodeSettings::keys().contains(&param)
                || ["mask_id", "eos_id"].contains(&param) =>
        {
            anyhow::anyhow!("invalid --{}: {message}", param.replace('_', "-"))
        }
        other => other.into(),
    }
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
        "--penalty-lambda",
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
        "joint-sglang",
        "indel",
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
