//! A stage's folder on disk: checkpoints (HF-layout model + optimizer + trainer state,
//! written under a temporary name and renamed into place), the `latest` pointer that a
//! resumed run starts from, and `metrics.jsonl`.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::optim::AdamW;
use crate::params::save_weights;
use crate::{read_json, Result, TrainError};

/// Where a stage stands, saved with every checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainerState {
    pub stage: String,
    pub step: usize,
    pub optimizer_t: u64,
    pub loss: f32,
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepMetrics {
    pub stage: String,
    pub step: usize,
    pub loss: f32,
    /// Mean cross-entropy over supervised tokens (nats).
    pub ce: f32,
    pub lr: f64,
    pub grad_norm: f64,
    pub block: usize,
    pub tokens_per_second: f64,
}

fn write_err(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Write {
        path: path.to_path_buf(),
        source,
    }
}

/// The checkpoint a resumed stage starts from (the one `latest` names) and its state.
pub fn latest(stage_dir: &Path) -> Result<Option<(PathBuf, TrainerState)>> {
    let Ok(name) = std::fs::read_to_string(stage_dir.join("latest")) else {
        return Ok(None);
    };
    let dir = stage_dir.join(name.trim());
    let state = read_json(&dir.join("trainer_state.json"))?;
    Ok(Some((dir, state)))
}

/// Loads the optimizer moments saved in checkpoint `dir` into `opt`.
pub fn restore_optimizer(dir: &Path, opt: &mut AdamW, state: &TrainerState) -> Result<()> {
    let moments = candle_core::safetensors::load(dir.join("optimizer.safetensors"), &Device::Cpu)?;
    opt.load_state(&moments, state.optimizer_t)
}

/// What a checkpoint holds besides the weights.
pub struct CheckpointFiles<'a> {
    pub config: &'a serde_json::Value,
    pub generation_config: &'a serde_json::Value,
    /// The tokenizer folder: its files are copied in, so the checkpoint is a model folder.
    pub tokenizer: &'a Path,
}

/// Writes `stage_dir/name`: an HF-layout folder (loadable by `llada generate/chat`) plus
/// optimizer and trainer state, under a temporary name renamed into place. Every
/// checkpoint but `final` becomes the `latest` one.
pub fn write(
    stage_dir: &Path,
    name: &str,
    files: &CheckpointFiles<'_>,
    weights: &HashMap<String, Tensor>,
    opt: &AdamW,
    state: &TrainerState,
) -> Result<PathBuf> {
    let target = stage_dir.join(name);
    let tmp = stage_dir.join(format!(".tmp-{name}"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(write_err(&tmp))?;
    }
    llada::files::copy_companion_files(files.tokenizer, &tmp)?;
    save_weights(&tmp, weights)?;
    llada::files::save_safetensors(&tmp.join("optimizer.safetensors"), &opt.state())?;
    let json = |v: &serde_json::Value| serde_json::to_string_pretty(v).expect("JSON");
    llada::files::write_atomic(&tmp.join("config.json"), json(files.config).as_bytes())?;
    llada::files::write_atomic(
        &tmp.join("generation_config.json"),
        json(files.generation_config).as_bytes(),
    )?;
    let state = serde_json::to_string_pretty(state).expect("state JSON");
    llada::files::write_atomic(&tmp.join("trainer_state.json"), state.as_bytes())?;
    if target.exists() {
        std::fs::remove_dir_all(&target).map_err(write_err(&target))?;
    }
    std::fs::rename(&tmp, &target).map_err(write_err(&target))?;
    if name != "final" {
        llada::files::write_atomic(&stage_dir.join("latest"), name.as_bytes())?;
    }
    Ok(target)
}

/// `metrics.jsonl` of a stage, one line per optimizer step.
pub struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsLog {
    /// Opens the log of a stage that starts (or resumes) at `start`: lines of steps after
    /// `start`, written before an interruption and about to be redone, are dropped, so
    /// every step appears once.
    pub fn open(stage_dir: &Path, start: usize) -> Result<Self> {
        let path = stage_dir.join("metrics.jsonl");
        if let Ok(text) = std::fs::read_to_string(&path) {
            let kept: String = text
                .lines()
                .filter(|line| {
                    serde_json::from_str::<StepMetrics>(line).is_ok_and(|m| m.step <= start)
                })
                .map(|line| format!("{line}\n"))
                .collect();
            if kept.len() != text.len() {
                llada::files::write_atomic(&path, kept.as_bytes())?;
            }
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(write_err(&path))?;
        Ok(Self { path, file })
    }

    pub fn append(&mut self, m: &StepMetrics) -> Result<()> {
        let line = serde_json::to_string(m).expect("metrics JSON");
        writeln!(self.file, "{line}").map_err(write_err(&self.path))
    }
}
