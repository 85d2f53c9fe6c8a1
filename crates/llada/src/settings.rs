//! Decoding settings as people give them: flags (`--threshold 0.9`), chat commands
//! (`/set threshold 0.9`) and request fields (`"threshold": 0.9`) are all this one type.
//! Each setting is an optional field: clap reads them as flags, serde from a request
//! body, [`DecodeSettings::parse`] from a key and a text value; [`DecodeSettings::apply`]
//! changes a [`GenerateParams`] by the ones given and [`GenerateParams::validate`]
//! checks the result. Errors name the setting by its key (the field name), which each front end
//! spells its own way ([`Error::InvalidParam`]'s `param`).
//!
//! A new setting is a field here (its doc comment is the flag's help) and a line in
//! [`DecodeSettings::apply`]; a decoder's setting is a field of its [`DecoderConfig`]
//! variant instead of that line, mapped both ways below (`decoder_named`,
//! `of_decoder`).

use serde::{Deserialize, Serialize};

use crate::decode::{DecoderConfig, DecoderDefaults, DECODER_NAMES};
use crate::error::{Error, Result};
use crate::params::{BlockCache, GenerateParams};

/// Decoding settings, each optional: what is not given keeps its current value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct DecodeSettings {
    /// Most tokens to generate (default 128).
    #[cfg_attr(feature = "clap", arg(long))]
    pub gen_length: Option<usize>,
    /// Tokens per diffusion block (1 = autoregressive decoding; default: the model's
    /// generation_config.json `block_length`, else 32). Comes with as many steps unless
    /// steps are given.
    #[cfg_attr(feature = "clap", arg(long))]
    pub block_length: Option<usize>,
    /// Denoising steps per block (at most the block length fills one token per step;
    /// default: the block length).
    #[cfg_attr(feature = "clap", arg(long))]
    pub steps: Option<usize>,
    /// Decoding strategy: threshold (the LLaDA2.0 reference rule), joint (LLaDA2.1, as
    /// diffusers: also replaces decoded tokens), credit or hierarchy (dInfer's),
    /// joint-sglang (LLaDA2.1 as SGLang decodes it), indel (LLaDA2.2: also deletes and
    /// splits). A decoder other than the current one starts from its own defaults.
    #[cfg_attr(feature = "clap", arg(long))]
    pub decoder: Option<String>,
    /// Fill every masked position whose confidence exceeds this (default: 0.95 for
    /// threshold, 0.7 for joint, 0.9 for credit and hierarchy, 0.5 for joint-sglang and
    /// indel).
    #[cfg_attr(feature = "clap", arg(long))]
    pub threshold: Option<f32>,
    /// joint, joint-sglang, indel: replace a decoded token when another has a
    /// probability above this (joint: <= 0 is no editing, default 0.5; SGLang's: default
    /// 0).
    #[cfg_attr(feature = "clap", arg(long))]
    pub editing_threshold: Option<f32>,
    /// joint, joint-sglang, indel: at most this many refinement steps after a block's
    /// last mask (default 16).
    #[cfg_attr(feature = "clap", arg(long))]
    pub max_post_steps: Option<usize>,
    /// joint-sglang: lower the logit of the previous position's token by this (repeat
    /// penalty; default 0).
    #[cfg_attr(feature = "clap", arg(long))]
    pub penalty_lambda: Option<f32>,
    /// credit: weight of the credit in the logits (default 0.7).
    #[cfg_attr(feature = "clap", arg(long))]
    pub credit_alpha: Option<f32>,
    /// credit: exponent of the top probability a step adds (default 0.2).
    #[cfg_attr(feature = "clap", arg(long))]
    pub credit_gamma: Option<f32>,
    /// credit: decay of the credit per step (default 0.8).
    #[cfg_attr(feature = "clap", arg(long))]
    pub credit_beta: Option<f32>,
    /// hierarchy: the best position of a run of masks is filled above this (default 0.4).
    #[cfg_attr(feature = "clap", arg(long))]
    pub low_threshold: Option<f32>,
    /// Sampling temperature, 0 = greedy (argmax; the default).
    #[cfg_attr(feature = "clap", arg(long))]
    pub temperature: Option<f32>,
    /// Keep only the k most likely tokens (0: all).
    #[cfg_attr(feature = "clap", arg(long))]
    pub top_k: Option<usize>,
    /// Keep the smallest set of tokens whose probability reaches p (1: all).
    #[cfg_attr(feature = "clap", arg(long))]
    pub top_p: Option<f32>,
    /// Seed for sampling; the same seed gives the same output (default 0).
    #[cfg_attr(feature = "clap", arg(long))]
    pub seed: Option<u64>,
    /// Stop inside a block as soon as an EOS is placed with no mask before it.
    #[cfg_attr(feature = "clap", arg(long, num_args = 0..=1, default_missing_value = "true"))]
    pub eos_early_stop: Option<bool>,
    /// Generate all gen-length tokens: EOS ends nothing (for benchmarks).
    #[cfg_attr(feature = "clap", arg(long, num_args = 0..=1, default_missing_value = "true"))]
    pub ignore_eos: Option<bool>,
    /// Keys/values of the block being decoded: exact (recomputed every step; the
    /// default) or dual (approximate: a step recomputes only masked and changed
    /// positions).
    #[cfg_attr(feature = "clap", arg(long))]
    pub block_cache: Option<String>,
    /// dual: recompute the whole block every N steps too (0: only at its first step and
    /// after an edit).
    #[cfg_attr(feature = "clap", arg(long))]
    pub block_cache_refresh: Option<usize>,
    /// The KV cache's number format: f32 (exact; the default), f16 or bf16 (half the
    /// memory: long contexts).
    #[cfg_attr(feature = "clap", arg(long))]
    pub kv_cache: Option<String>,
    /// A prompt longer than this many tokens is committed to the cache in passes of this
    /// many (whole blocks; default 1024): memory for a chunk, not the whole prompt.
    #[cfg_attr(feature = "clap", arg(long))]
    pub prefill_chunk: Option<usize>,
}

impl DecodeSettings {
    /// Every setting's key (the field names, as request bodies spell them).
    pub fn keys() -> &'static [&'static str] {
        field_names::<Self>()
    }

    /// The one setting `key` (underscores or dashes) from text, as a chat command gives
    /// it: a number, `true`/`false`, a name; `off` turns top-k and top-p off. The value
    /// is checked for its type here, for its range by [`GenerateParams::validate`].
    pub fn parse(key: &str, value: &str) -> Result<Self> {
        let wanted = key.replace('-', "_");
        let Some(&key) = Self::keys().iter().find(|k| **k == wanted) else {
            return Err(Error::InvalidRequest(format!(
                "unknown setting {key:?} (settings: {})",
                Self::keys().join(", ").replace('_', "-")
            )));
        };
        let value = match (key, value) {
            ("top_k", "off") => serde_json::json!(0),
            ("top_p", "off") => serde_json::json!(1.0),
            // `null` would read as "not given" and change nothing.
            (_, "null") => value.into(),
            _ => serde_json::from_str(value).unwrap_or_else(|_| value.into()),
        };
        serde_json::from_value(serde_json::json!({ key: value }))
            .map_err(|e| Error::param(key, format!("{value} is not a valid value ({e})")))
    }

    /// Applies the settings given to `params`. A block length without steps brings as
    /// many steps ([`GenerateParams::set_block_length`]); decoder settings change the
    /// current decoder, or the named one from its defaults ([`DecodeSettings::decoder_from`]).
    /// Errors name the setting; ranges are checked by [`GenerateParams::validate`].
    pub fn apply(&self, p: &mut GenerateParams) -> Result<()> {
        if let Some(n) = self.gen_length {
            p.gen_length = n;
        }
        if let Some(b) = self.block_length {
            p.set_block_length(b);
        }
        if let Some(s) = self.steps {
            p.steps = s;
        }
        p.decoder = self.decoder_from(&p.decoder)?;
        if let Some(t) = self.temperature {
            p.sampling.temperature = t;
        }
        if let Some(k) = self.top_k {
            p.sampling.top_k = (k > 0).then_some(k);
        }
        if let Some(top_p) = self.top_p {
            p.sampling.top_p = (top_p != 1.0).then_some(top_p);
        }
        if let Some(seed) = self.seed {
            p.seed = seed;
        }
        if let Some(stop) = self.eos_early_stop {
            p.eos_early_stop = stop;
        }
        if let Some(ignore) = self.ignore_eos {
            p.ignore_eos = ignore;
        }
        if let Some(name) = &self.kv_cache {
            p.kv_cache = crate::KvDtype::named(name)?;
        }
        if let Some(n) = self.prefill_chunk {
            p.prefill_chunk = n;
        }
        let refresh = match p.block_cache {
            BlockCache::Dual { refresh } => refresh,
            BlockCache::Exact => 0,
        };
        if let Some(name) = &self.block_cache {
            p.block_cache = BlockCache::named(name, self.block_cache_refresh.unwrap_or(refresh))?;
        } else if let Some(n) = self.block_cache_refresh {
            let BlockCache::Dual { refresh } = &mut p.block_cache else {
                return Err(Error::param(
                    "block_cache_refresh",
                    "needs the dual block cache",
                ));
            };
            *refresh = n;
        }
        Ok(())
    }
}

impl DecodeSettings {
    /// The decoder called `name` with these settings' decoder settings, else `base`'s,
    /// else its defaults. A setting given here that the decoder does not use is an error
    /// (it would be silently ignored).
    fn decoder_named(&self, name: &str, base: &DecodeSettings) -> Result<DecoderConfig> {
        let s = self;
        type D = DecoderDefaults;
        let unused = |setting: &'static str, given: bool| -> Result<()> {
            if given {
                return Err(Error::param(
                    setting,
                    format!("is not a setting of the {name} decoder"),
                ));
            }
            Ok(())
        };
        let config = match name {
            "threshold" => DecoderConfig::Threshold {
                threshold: s.threshold.or(base.threshold).unwrap_or(D::THRESHOLD),
            },
            "joint" => DecoderConfig::Joint {
                threshold: s.threshold.or(base.threshold).unwrap_or(D::JOINT_THRESHOLD),
                editing_threshold: s
                    .editing_threshold
                    .or(base.editing_threshold)
                    .unwrap_or(D::EDITING_THRESHOLD),
                max_post_steps: s
                    .max_post_steps
                    .or(base.max_post_steps)
                    .unwrap_or(D::MAX_POST_STEPS),
            },
            "joint-sglang" | "indel" => {
                let threshold = s
                    .threshold
                    .or(base.threshold)
                    .unwrap_or(D::SGLANG_THRESHOLD);
                let editing_threshold = s
                    .editing_threshold
                    .or(base.editing_threshold)
                    .unwrap_or(D::SGLANG_EDIT_THRESHOLD);
                let max_post_steps = s
                    .max_post_steps
                    .or(base.max_post_steps)
                    .unwrap_or(D::SGLANG_MAX_POST_STEPS);
                if name == "indel" {
                    DecoderConfig::Indel {
                        threshold,
                        editing_threshold,
                        max_post_steps,
                    }
                } else {
                    DecoderConfig::JointSglang {
                        threshold,
                        editing_threshold,
                        max_post_steps,
                        penalty_lambda: s
                            .penalty_lambda
                            .or(base.penalty_lambda)
                            .unwrap_or(D::PENALTY_LAMBDA),
                    }
                }
            }
            "credit" => DecoderConfig::Credit {
                threshold: s
                    .threshold
                    .or(base.threshold)
                    .unwrap_or(D::CREDIT_THRESHOLD),
                alpha: s
                    .credit_alpha
                    .or(base.credit_alpha)
                    .unwrap_or(D::CREDIT_ALPHA),
                gamma: s
                    .credit_gamma
                    .or(base.credit_gamma)
                    .unwrap_or(D::CREDIT_GAMMA),
                beta: s.credit_beta.or(base.credit_beta).unwrap_or(D::CREDIT_BETA),
            },
            "hierarchy" => DecoderConfig::Hierarchy {
                threshold: s
                    .threshold
                    .or(base.threshold)
                    .unwrap_or(D::HIERARCHY_THRESHOLD),
                low_threshold: s
                    .low_threshold
                    .or(base.low_threshold)
                    .unwrap_or(D::LOW_THRESHOLD),
            },
            other => {
                return Err(Error::param(
                    "decoder",
                    format!(
                        "unknown decoder `{other}` (known: {})",
                        DECODER_NAMES.join(", ")
                    ),
                ))
            }
        };
        let joint = matches!(
            config,
            DecoderConfig::Joint { .. }
                | DecoderConfig::JointSglang { .. }
                | DecoderConfig::Indel { .. }
        );
        let credit = matches!(config, DecoderConfig::Credit { .. });
        let sglang = matches!(config, DecoderConfig::JointSglang { .. });
        unused("editing_threshold", !joint && s.editing_threshold.is_some())?;
        unused("max_post_steps", !joint && s.max_post_steps.is_some())?;
        unused("penalty_lambda", !sglang && s.penalty_lambda.is_some())?;
        unused("credit_alpha", !credit && s.credit_alpha.is_some())?;
        unused("credit_gamma", !credit && s.credit_gamma.is_some())?;
        unused("credit_beta", !credit && s.credit_beta.is_some())?;
        let hierarchy = matches!(config, DecoderConfig::Hierarchy { .. });
        unused("low_threshold", !hierarchy && s.low_threshold.is_some())?;
        config.validate()?;
        Ok(config)
    }

    /// The decoder these settings ask for, from `current`: the one they name, when it
    /// is another, with these settings and its own defaults; else `current` with these
    /// settings changed.
    pub fn decoder_from(&self, current: &DecoderConfig) -> Result<DecoderConfig> {
        match self.decoder.as_deref().filter(|&n| n != current.name()) {
            Some(other) => self.decoder_named(other, &DecodeSettings::default()),
            None => self.decoder_named(current.name(), &Self::of_decoder(current)),
        }
    }

    /// The settings of decoder `d`, each one it has as `Some`.
    fn of_decoder(d: &DecoderConfig) -> DecodeSettings {
        let mut s = DecodeSettings {
            threshold: Some(d.threshold()),
            ..Default::default()
        };
        match *d {
            DecoderConfig::Threshold { .. } => {}
            DecoderConfig::Joint {
                editing_threshold,
                max_post_steps,
                ..
            }
            | DecoderConfig::Indel {
                editing_threshold,
                max_post_steps,
                ..
            } => {
                s.editing_threshold = Some(editing_threshold);
                s.max_post_steps = Some(max_post_steps);
            }
            DecoderConfig::JointSglang {
                editing_threshold,
                max_post_steps,
                penalty_lambda,
                ..
            } => {
                s.editing_threshold = Some(editing_threshold);
                s.max_post_steps = Some(max_post_steps);
                s.penalty_lambda = Some(penalty_lambda);
            }
            DecoderConfig::Credit {
                alpha, gamma, beta, ..
            } => {
                s.credit_alpha = Some(alpha);
                s.credit_gamma = Some(gamma);
                s.credit_beta = Some(beta);
            }
            DecoderConfig::Hierarchy { low_threshold, .. } => s.low_threshold = Some(low_threshold),
        }
        s
    }
}

/// The field names serde knows a struct by, read from its `Deserialize` impl (which
/// hands them to the deserializer): the list of keys stays the struct's own.
fn field_names<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    struct Fields(&'static [&'static str]);
    #[derive(Debug)]
    struct Done;
    impl std::fmt::Display for Done {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("field names read")
        }
    }
    impl std::error::Error for Done {}
    impl serde::de::Error for Done {
        fn custom<M: std::fmt::Display>(_: M) -> Self {
            Done
        }
    }
    impl<'de> serde::Deserializer<'de> for &mut Fields {
        type Error = Done;
        fn deserialize_any<V: serde::de::Visitor<'de>>(
            self,
            _: V,
        ) -> std::result::Result<V::Value, Done> {
            Err(Done)
        }
        fn deserialize_struct<V: serde::de::Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> std::result::Result<V::Value, Done> {
            self.0 = fields;
            Err(Done)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }
    let mut fields = Fields(&[]);
    let _ = T::deserialize(&mut fields);
    fields.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The decoder called `name` with `s`'s settings.
    fn named(name: &str, s: &DecodeSettings) -> Result<DecoderConfig> {
        s.decoder_named(name, &DecodeSettings::default())
    }

    fn params() -> GenerateParams {
        GenerateParams::new(7, 8)
    }

    #[test]
    fn keys_are_the_fields() {
        let keys = DecodeSettings::keys();
        assert_eq!(keys.len(), 22);
        assert!(keys.contains(&"editing_threshold") && keys.contains(&"block_cache_refresh"));
    }

    #[test]
    fn parse_reads_by_type_and_names_the_key() {
        let one = |k, v| DecodeSettings::parse(k, v).unwrap();
        assert_eq!(one("block-length", "8").block_length, Some(8));
        assert_eq!(one("decoder", "joint").decoder.as_deref(), Some("joint"));
        assert_eq!(one("eos_early_stop", "true").eos_early_stop, Some(true));
        assert_eq!(one("top-k", "off").top_k, Some(0));
        let err = DecodeSettings::parse("threshold", "high").unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidParam {
                    param: "threshold",
                    ..
                }
            ),
            "{err}"
        );
        assert!(DecodeSettings::parse("steps", "-1").is_err());
        let err = DecodeSettings::parse("thresold", "0.5")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown setting") && err.contains("threshold"),
            "{err}"
        );
    }

    #[test]
    fn apply_changes_only_what_is_given() {
        let mut p = params();
        let s = DecodeSettings {
            block_length: Some(8),
            threshold: Some(0.5),
            ..Default::default()
        };
        s.apply(&mut p).unwrap();
        assert_eq!((p.block_length, p.steps), (8, 8));
        assert_eq!(p.decoder, DecoderConfig::Threshold { threshold: 0.5 });
        assert_eq!(p.gen_length, 128);
        // Another decoder starts from its defaults; a setting it lacks is an error.
        let joint = DecodeSettings {
            decoder: Some("joint".into()),
            ..Default::default()
        };
        joint.apply(&mut p).unwrap();
        assert_eq!(p.decoder.threshold(), 0.7);
        let wrong = DecodeSettings {
            low_threshold: Some(0.2),
            ..Default::default()
        };
        let err = wrong.apply(&mut p).unwrap_err();
        assert!(matches!(
            err,
            Error::InvalidParam {
                param: "low_threshold",
                ..
            }
        ));
        let refresh = DecodeSettings {
            block_cache_refresh: Some(4),
            ..Default::default()
        };
        assert!(refresh.apply(&mut params()).is_err());
        let dual = DecodeSettings {
            block_cache: Some("dual".into()),
            ..refresh
        };
        let mut p = params();
        dual.apply(&mut p).unwrap();
        assert_eq!(p.block_cache, BlockCache::Dual { refresh: 4 });
    }

    #[test]
    fn decoders_are_named_with_their_defaults_and_only_their_settings() {
        let joint = named("joint", &DecodeSettings::default()).unwrap();
        assert_eq!(
            joint,
            DecoderConfig::Joint {
                threshold: 0.7,
                editing_threshold: 0.5,
                max_post_steps: 16
            }
        );
        let s = DecodeSettings {
            editing_threshold: Some(0.3),
            ..Default::default()
        };
        let err = named("threshold", &s).unwrap_err().to_string();
        assert!(err.contains("editing_threshold"), "{err}");
        assert!(named("magic", &DecodeSettings::default()).is_err());
        for name in DECODER_NAMES {
            let d = named(name, &DecodeSettings::default()).unwrap();
            assert_eq!(d.name(), *name);
        }
        let bad = DecodeSettings {
            threshold: Some(1.5),
            ..Default::default()
        };
        assert!(named("credit", &bad).is_err());
        let bad = DecodeSettings {
            credit_beta: Some(f32::NAN),
            ..Default::default()
        };
        assert!(named("credit", &bad).is_err());
    }

    #[test]
    fn settings_change_the_current_decoder_or_switch_to_another() {
        let joint = named("joint", &DecodeSettings::default()).unwrap();
        let changed = DecodeSettings {
            editing_threshold: Some(0.2),
            ..Default::default()
        }
        .decoder_from(&joint)
        .unwrap();
        assert_eq!(
            DecodeSettings::of_decoder(&changed).editing_threshold,
            Some(0.2)
        );
        assert_eq!(changed.threshold(), 0.7);
        let credit = DecodeSettings {
            decoder: Some("credit".into()),
            ..Default::default()
        }
        .decoder_from(&changed)
        .unwrap();
        assert_eq!(credit.name(), "credit");
        assert_eq!(credit.threshold(), 0.9);
        assert!(credit.describe().starts_with("credit"));
    }
}
