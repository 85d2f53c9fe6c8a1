//! llada-train: turning text into LLaDA2-style block-diffusion models.
//!
//! A [`recipe::Recipe`] (TOML) names the model, tokenizer, data and stages; the
//! [`trainer`] runs its stages (autoregressive pre-training, WSD conversion to block
//! diffusion, SFT), resumably, writing HF-layout checkpoints; [`eval`] scores models
//! (task accuracy, held-out NELBO) and [`merge`] averages the best checkpoints.

pub mod checkpoint;
pub mod data;
pub mod eval;
pub mod forward;
mod fused;
pub mod loss;
pub mod merge;
pub mod noise;
mod objective;
pub mod optim;
pub mod params;
pub mod recipe;
pub mod schedule;
pub mod tasks;
pub mod tokenizer;
pub mod trainer;

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("tokenizer training failed: {0}")]
    Tokenizer(String),
    #[error("invalid training input: {0}")]
    Invalid(String),
    #[error(transparent)]
    Engine(#[from] llada::Error),
}

impl From<candle_core::Error> for TrainError {
    fn from(e: candle_core::Error) -> Self {
        TrainError::Engine(llada::Error::Candle(e))
    }
}

pub type Result<T> = std::result::Result<T, TrainError>;

/// Reads and parses a JSON file; errors name the file.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|source| TrainError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| TrainError::Invalid(format!("{}: {e}", path.display())))
}
