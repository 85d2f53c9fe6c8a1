//! llada-train: turning text into LLaDA2-style block-diffusion models.
//!
//! So far: the byte-level BPE tokenizer a new model starts from, and the noising and
//! attention masks of block-diffusion training.

pub mod data;
pub mod eval;
pub mod init;
pub mod loss;
pub mod merge;
pub mod noise;
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

/// Writes `bytes` to `path` through a temporary file and a rename, so a crash never
/// leaves a half-written file under the final name.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    let err = |source| TrainError::Write {
        path: path.to_path_buf(),
        source,
    };
    std::fs::write(&tmp, bytes).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}
