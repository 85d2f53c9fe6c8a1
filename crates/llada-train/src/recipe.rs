//! The recipe: one TOML file that records everything needed to reproduce a run —
//! model shape, tokenizer, data, and the stages with their schedules and seeds.
//!
//! ```toml
//! name = "tiny"
//! seed = 0
//! out = "runs/tiny"            # relative paths are relative to the recipe file
//! tokenizer = "tokenizer"      # folder with tokenizer.json
//!
//! [model]                      # config.json fields of LLaDA2MoeModelLM
//! hidden_size = 64
//! # ...
//!
//! [[stage]]
//! name = "ar"
//! kind = "ar"                  # ar | wsd | sft | sft_ar
//! data = ["corpus.txt"]        # text files (ar, wsd) or one JSONL file (sft)
//! steps = 100
//! batch_size = 4
//! seq_len = 64
//! checkpoint_every = 50
//! lr = { kind = "cosine", peak = 3e-3, min_lr = 3e-4, warmup = 10, total = 100 }
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use llada::Llada2Config;

use crate::optim::AdamWConfig;
use crate::params::SpecialIds;
use crate::schedule::{LrSchedule, WsdBlockSchedule};
use crate::{Result, TrainError};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageKind {
    /// Causal next-token pre-training (the autoregressive model to convert).
    Ar,
    /// Block-diffusion continual pre-training with a WSD block-size schedule.
    Wsd,
    /// Supervised fine-tuning on chat data.
    Sft,
    /// Autoregressive supervised fine-tuning on chat data (the baseline a diffusion model
    /// is compared with): every answer token is masked and predicted from the clean
    /// tokens before it (block 1), the form llada decodes with `--block-length 1`.
    /// Mixed-in text rows are trained the same way.
    SftAr,
}

impl StageKind {
    /// Whether the stage trains on chat examples (one JSONL file).
    pub fn is_chat(&self) -> bool {
        matches!(self, StageKind::Sft | StageKind::SftAr)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    pub name: String,
    pub kind: StageKind,
    /// Start from the final checkpoint of this earlier stage instead of the previous
    /// stage's (the AR baseline branches off the AR pre-training).
    #[serde(default)]
    pub from: Option<String>,
    pub data: Vec<PathBuf>,
    pub steps: usize,
    pub batch_size: usize,
    pub seq_len: usize,
    pub lr: LrSchedule,
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: usize,
    #[serde(default)]
    pub optimizer: AdamWConfig,
    /// wsd: the block-size schedule (its `seq_len` must equal the stage's).
    #[serde(default)]
    pub block_schedule: Option<WsdBlockSchedule>,
    /// sft (and the block size wsd reports after its schedule): the target block.
    #[serde(default = "default_block")]
    pub block: usize,
    /// wsd: smallest mask rate, t ~ U(eps, 1).
    #[serde(default = "default_eps")]
    pub eps: f32,
    /// wsd: Gaussian noise (std) on masked-token embeddings during the first steps.
    #[serde(default)]
    pub embed_noise_std: f64,
    #[serde(default)]
    pub embed_noise_steps: usize,
    /// sft: mask-rate range.
    #[serde(default = "default_sft_t")]
    pub t_range: (f32, f32),
    /// sft: also train on the complementary mask of each example.
    #[serde(default = "default_true")]
    pub complementary: bool,
    /// sft: weight of the CAP confidence loss (0: off).
    #[serde(default)]
    pub cap_weight: f64,
    /// sft: LLaDA2.1-style editing data. Each answer position left visible gets, with
    /// this probability, another token of the same answer in place of its own, and the
    /// loss covers every visible answer position (restore the corrupted ones, keep the
    /// right ones), so that a decoder that edits committed tokens has a trained signal.
    #[serde(default)]
    pub edit_rate: f64,
    /// sft: leave the EOS padding past the block that holds the answer's end clean and
    /// out of the loss. Under the block-causal mask nothing before that block sees it,
    /// and decoding stops after the block where EOS appears, so only easy "EOS after
    /// EOS" predictions go. It trims nothing when the answer ends in the row's last
    /// block (here every task row at 64 tokens; the third block at 96).
    #[serde(default)]
    pub trim_padding: bool,
    /// sft: plain-text corpora mixed into the batches (block-diffusion loss on packed
    /// text, as in wsd) so that fine-tuning does not erase language modelling.
    #[serde(default)]
    pub text_data: Vec<PathBuf>,
    /// sft: the share of batch rows drawn from `text_data`.
    #[serde(default)]
    pub text_fraction: f64,
}

impl Stage {
    fn check(&self, context: usize) -> std::result::Result<(), String> {
        for (field, value) in [
            ("steps", self.steps),
            ("batch_size", self.batch_size),
            ("checkpoint_every", self.checkpoint_every),
            ("block", self.block),
        ] {
            if value == 0 {
                return Err(format!("{field} must be at least 1"));
            }
        }
        if self.seq_len < 2 || self.seq_len > context {
            return Err(format!(
                "seq_len must be in [2, {context}] (the model's max_position_embeddings), got {}",
                self.seq_len
            ));
        }
        if self.block > self.seq_len {
            return Err(format!(
                "block {} is longer than seq_len {}",
                self.block, self.seq_len
            ));
        }
        if self.data.is_empty() {
            return Err("data must name at least one file".into());
        }
        self.lr.validate()?;
        self.optimizer.validate()?;
        if !(self.eps > 0.0 && self.eps < 1.0) {
            return Err(format!("eps must be in (0, 1), got {}", self.eps));
        }
        let (lo, hi) = self.t_range;
        if !(lo > 0.0 && lo <= hi && hi <= 1.0) {
            return Err(format!(
                "t_range must satisfy 0 < lo <= hi <= 1, got ({lo}, {hi})"
            ));
        }
        for (field, v) in [
            ("embed_noise_std", self.embed_noise_std),
            ("cap_weight", self.cap_weight),
            ("edit_rate", self.edit_rate),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("{field} must be a finite number >= 0, got {v}"));
            }
        }
        match (&self.kind, &self.block_schedule) {
            (StageKind::Wsd, Some(b)) if b.seq_len != self.seq_len => {
                return Err(format!(
                    "block_schedule.seq_len {} != seq_len {}",
                    b.seq_len, self.seq_len
                ))
            }
            (StageKind::Wsd, Some(b)) => b.validate()?,
            (StageKind::Wsd, None) => return Err("wsd needs a block_schedule".into()),
            _ => {}
        }
        if self.kind.is_chat() && self.data.len() != 1 {
            return Err("sft and sft_ar take one JSONL file".into());
        }
        if self.edit_rate > 1.0 || (self.edit_rate > 0.0 && self.kind != StageKind::Sft) {
            return Err(format!(
                "edit_rate is a probability for sft stages, got {}",
                self.edit_rate
            ));
        }
        if self.trim_padding && self.kind != StageKind::Sft {
            return Err("trim_padding is for sft stages".into());
        }
        if !(0.0..1.0).contains(&self.text_fraction) {
            return Err(format!(
                "text_fraction must be in [0, 1), got {}",
                self.text_fraction
            ));
        }
        let mixes = self.text_fraction > 0.0 || !self.text_data.is_empty();
        if mixes && (!self.kind.is_chat() || self.text_data.is_empty() || self.text_fraction == 0.0)
        {
            return Err(
                "text mixing is for sft stages and needs both text_data and text_fraction > 0"
                    .into(),
            );
        }
        Ok(())
    }
}

fn default_checkpoint_every() -> usize {
    100
}
fn default_block() -> usize {
    32
}
fn default_eps() -> f32 {
    1e-3
}
fn default_sft_t() -> (f32, f32) {
    (0.3, 0.8)
}
fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub name: String,
    #[serde(default)]
    pub seed: u64,
    pub out: PathBuf,
    pub tokenizer: PathBuf,
    /// `config.json` fields of the model (architecture fields are filled in).
    pub model: toml::Table,
    /// Start the first stage from this HF model folder instead of a random init.
    #[serde(default)]
    pub init_from: Option<PathBuf>,
    #[serde(rename = "stage")]
    pub stages: Vec<Stage>,
}

impl Recipe {
    /// Reads and checks a recipe; relative paths become relative to its folder.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| TrainError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and checks recipe text as if read from `path` (relative paths in it are
    /// relative to `path`'s folder).
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let mut recipe: Recipe = toml::from_str(text)
            .map_err(|e| TrainError::Invalid(format!("{}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let rebase = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        rebase(&mut recipe.out);
        rebase(&mut recipe.tokenizer);
        if let Some(p) = recipe.init_from.as_mut() {
            rebase(p);
        }
        for stage in &mut recipe.stages {
            stage.data.iter_mut().for_each(rebase);
            stage.text_data.iter_mut().for_each(rebase);
        }
        recipe.check()?;
        Ok(recipe)
    }

    /// Every field checked before anything runs: a recipe that loads trains without a
    /// panic. Errors name the stage and field.
    fn check(&self) -> Result<()> {
        let bad = |m: String| Err(TrainError::Invalid(format!("recipe {}: {m}", self.name)));
        if self.stages.is_empty() {
            return bad("no [[stage]]".into());
        }
        let config = Llada2Config::from_json(self.config_json(), &self.out.join("config.json"))?;
        let mut names = std::collections::HashSet::new();
        for s in &self.stages {
            // The name is a folder under `out`.
            let safe = !s.name.is_empty()
                && s.name != "."
                && s.name != ".."
                && s.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            if !safe {
                return bad(format!(
                    "stage name {:?} must be letters, digits, '-', '_' or '.' (it names a folder)",
                    s.name
                ));
            }
            if let Some(from) = &s.from {
                if !names.contains(from.as_str()) {
                    return bad(format!(
                        "stage {}: from = {from:?} names no earlier stage",
                        s.name
                    ));
                }
            }
            if !names.insert(s.name.as_str()) {
                return bad(format!("two stages are named {}", s.name));
            }
            if let Err(m) = s.check(config.max_position_embeddings) {
                return bad(format!("stage {}: {m}", s.name));
            }
        }
        Ok(())
    }

    /// The model's `config.json`.
    pub fn config_json(&self) -> serde_json::Value {
        let mut cfg = serde_json::to_value(&self.model).expect("TOML table is JSON");
        cfg["architectures"] = serde_json::json!(["LLaDA2MoeModelLM"]);
        cfg["model_type"] = serde_json::json!("llada2_moe");
        cfg
    }

    /// `config.json` of a checkpoint: the model's config completed for the official code
    /// (`params::complete_official_config`).
    pub fn checkpoint_config_json(&self, ids: SpecialIds) -> Result<serde_json::Value> {
        let mut cfg = self.config_json();
        crate::params::complete_official_config(&mut cfg, ids, &self.out.join("config.json"))?;
        Ok(cfg)
    }
}
