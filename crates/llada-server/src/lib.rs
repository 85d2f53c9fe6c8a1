//! llada-server: an OpenAI-compatible HTTP API over the llada engine, with a scheduler
//! that decodes all active requests' blocks in one batched forward pass per step.
//!
//! [`router`] builds the axum app for a loaded model; [`serve`] runs it on a listener.

pub mod api;
pub mod error;
pub mod metrics;
pub mod routes;
pub mod scheduler;
pub mod stop;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;

use llada::{GenerateParams, LoadedModel};

pub use api::Limits;
pub use error::ApiError;
pub use metrics::Metrics;
pub use scheduler::Scheduler;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The name clients pass as `model` (and `GET /v1/models` lists).
    pub model_id: String,
    /// Required as `Authorization: Bearer KEY` on every endpoint but `/health`.
    pub api_key: Option<String>,
    /// Most requests decoded together in one forward pass.
    pub max_batch: usize,
    /// Most requests waiting for a batch slot; more get 429.
    pub max_queue: usize,
    /// From arrival to the last token; longer requests fail with 504.
    pub request_timeout: Duration,
    pub max_body_bytes: usize,
    /// `max_tokens` of requests that do not set it.
    pub default_max_tokens: usize,
    /// Largest `block_length` a request may set.
    pub max_block_length: usize,
}

impl ServerConfig {
    pub fn new(model_id: impl Into<String>) -> Self {
        Self {
            model_id: model_id.into(),
            api_key: None,
            max_batch: 8,
            max_queue: 64,
            request_timeout: Duration::from_secs(300),
            max_body_bytes: 1 << 20,
            default_max_tokens: 256,
            max_block_length: 256,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("the model has no tokenizer.json; the server needs it for text in and out")]
    NoTokenizer,
    #[error("cannot start the scheduler thread: {0}")]
    Thread(#[from] std::io::Error),
    #[error("invalid decoding defaults: {0}")]
    Defaults(String),
}

/// Everything the handlers share.
pub struct AppState {
    pub config: ServerConfig,
    pub model: Arc<LoadedModel>,
    /// Decoding settings of requests that set nothing (the model's defaults).
    pub defaults: GenerateParams,
    pub limits: Limits,
    pub scheduler: Scheduler,
    pub metrics: Arc<Metrics>,
    /// Unix time the server started (the model card's `created`).
    pub started: u64,
    pub fingerprint: String,
}

impl AppState {
    /// Starts the scheduler for `model` with its default decoding settings, ending
    /// answers as soon as their EOS is final.
    pub fn new(config: ServerConfig, model: Arc<LoadedModel>) -> Result<Self, ServerError> {
        let mut defaults = model.default_params();
        defaults.eos_early_stop = true;
        Self::with_defaults(config, model, defaults)
    }

    /// As [`AppState::new`], with the decoding settings of requests that set nothing.
    pub fn with_defaults(
        config: ServerConfig,
        model: Arc<LoadedModel>,
        defaults: GenerateParams,
    ) -> Result<Self, ServerError> {
        if model.tokenizer.is_none() {
            return Err(ServerError::NoTokenizer);
        }
        let cfg = &model.files.config;
        defaults
            .validate(cfg.vocab_size)
            .map_err(|e| ServerError::Defaults(e.to_string()))?;
        let most = config.max_block_length.min(cfg.max_position_embeddings);
        if defaults.block_length > most {
            return Err(ServerError::Defaults(format!(
                "block length {} is over the largest allowed, {most}",
                defaults.block_length
            )));
        }
        let metrics = Arc::new(Metrics::new());
        let scheduler = Scheduler::start(
            model.clone(),
            config.max_batch,
            config.max_queue,
            metrics.clone(),
        )?;
        Ok(Self {
            defaults,
            limits: Limits {
                default_max_tokens: config.default_max_tokens,
                max_block_length: config.max_block_length,
            },
            fingerprint: format!("llada-{}", env!("CARGO_PKG_VERSION")),
            started: routes::unix_now(),
            config,
            model,
            scheduler,
            metrics,
        })
    }
}

/// The HTTP app: OpenAI endpoints, health and metrics, auth, limits, JSON errors.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(routes::chat_completions))
        .route("/v1/completions", post(routes::completions))
        .route("/v1/models", get(routes::models))
        .route("/health", get(routes::health))
        .route("/metrics", get(routes::metrics))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        // Route layers run inside routing, so `track` sees the matched path; it wraps
        // `authorize` so that rejected requests are counted too.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            routes::authorize,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            routes::track,
        ))
        .with_state(state)
}

/// Serves `app` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
