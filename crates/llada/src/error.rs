//! One error type for the engine: every variant names the file, field or tensor at fault.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path} is not valid JSON for {what}: {source}")]
    Json {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },

    #[error("config {path}: {message}")]
    Config { path: PathBuf, message: String },

    #[error("unsupported architecture {found:?} in {path} (llada runs LLaDA2MoeModelLM / model_type llada2_moe)")]
    UnsupportedArchitecture { path: PathBuf, found: String },

    #[error("no weights in {dir}: expected model.safetensors or model.safetensors.index.json")]
    NoWeights { dir: PathBuf },

    #[error("{format} file {path} is unreadable (truncated or corrupt?): {message}")]
    CorruptWeights {
        path: PathBuf,
        /// "safetensors" or "GGUF".
        format: &'static str,
        message: String,
    },

    #[error("GGUF file {path}: {message}")]
    Gguf { path: PathBuf, message: String },

    #[error("shard {shard} listed in {index} does not exist")]
    MissingShard { index: PathBuf, shard: PathBuf },

    #[error("tensor {name} is missing from the checkpoint in {dir}")]
    MissingTensor { name: String, dir: PathBuf },

    #[error("tensor {name} has shape {found:?}, but the config implies {expected:?}")]
    ShapeMismatch {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    #[error("tensor {name} has dtype {dtype}; llada loads f32, bf16 and f16 weights")]
    UnsupportedDtype { name: String, dtype: String },

    #[error(
        "no tokenizer at {path}: text prompts need the model's tokenizer.json (or pass token ids)"
    )]
    MissingTokenizer { path: PathBuf },

    #[error("tokenizer {path} cannot be loaded: {message}")]
    Tokenizer { path: PathBuf, message: String },

    #[error("chat template {path}: {message}")]
    ChatTemplate { path: PathBuf, message: String },

    #[error("model {spec:?} not found: {detail}")]
    ModelNotFound { spec: String, detail: String },

    #[error("downloading {repo} failed: {message}")]
    Download { repo: String, message: String },

    /// No usable GPU, or the GPU failed (out of memory, lost device).
    #[error("GPU: {0}")]
    Device(String),

    #[error("invalid request: {0}")]
    InvalidRequest(String),

    /// A setting out of its range; `param` is its name in [`crate::GenerateParams`]
    /// (callers name it as their users know it: a flag, a request field).
    #[error("invalid {param}: {message}")]
    InvalidParam {
        param: &'static str,
        message: String,
    },

    #[error("prompt of {prompt} tokens plus {gen} generated tokens needs {needed} positions, but the model's context is {context} (max_position_embeddings)")]
    ContextOverflow {
        prompt: usize,
        gen: usize,
        needed: usize,
        context: usize,
    },

    #[error("the KV cache of {positions} positions needs {:.2} GiB ({kv}), but only {:.2} GiB of memory is available; use a shorter prompt or answer, or --kv-cache bf16", *needed as f64 / 1073741824.0, *available as f64 / 1073741824.0)]
    CacheTooLarge {
        positions: usize,
        kv: &'static str,
        needed: u64,
        available: u64,
    },

    #[error("token id {id} is outside the vocabulary (size {vocab})")]
    TokenOutOfRange { id: u32, vocab: usize },

    #[error(transparent)]
    Candle(candle_core::Error),
}

/// candle attaches a backtrace to its errors (printed as part of their message, even
/// when empty); users get the message alone.
impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Error::Candle(without_backtrace(e))
    }
}

/// The message of a candle error, without its backtrace.
pub(crate) fn message(e: candle_core::Error) -> String {
    without_backtrace(e).to_string()
}

fn without_backtrace(e: candle_core::Error) -> candle_core::Error {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => without_backtrace(*inner),
        other => other,
    }
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn param(param: &'static str, message: impl Into<String>) -> Self {
        Error::InvalidParam {
            param,
            message: message.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
