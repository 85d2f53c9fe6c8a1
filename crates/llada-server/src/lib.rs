//! llada-server: HTTP APIs over the llada engine, OpenAI's ([`routes`]) and Ollama's
//! ([`ollama`]), with a scheduler that decodes all active requests' blocks in one
//! batched forward pass per step. Both APIs read a request into the same settings
//! ([`api::CommonParams`]) and share the scheduler, limits, timeouts and API key.
//!
//! [`router`] builds the axum app for a loaded model; [`serve`] runs it on a listener.

pub mod api;
pub mod error;
pub mod metrics;
pub mod ollama;
pub mod routes;
pub mod scheduler;
mod serve;
pub mod stop;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, Method};
use axum::routing::{get, post};
use axum::Router;
use tower_http::cors::{AllowOrigin, CorsLayer};

use llada::tokenizer::SpecialTokens;
use llada::{GenerateParams, LoadedModel};

pub use api::Limits;
pub use error::ApiError;
pub use metrics::Metrics;
pub use scheduler::Scheduler;
pub use serve::serve;

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
    /// A connection that sends no complete request header within this long is closed
    /// (new connections and idle keep-alive ones alike).
    pub header_timeout: Duration,
    /// Time a client has to send a request's whole body (then 408).
    pub body_timeout: Duration,
    /// Origins a browser may call the API from (CORS); `*` allows any. Empty: no CORS
    /// headers, so browsers refuse cross-origin calls.
    pub cors_origins: Vec<String>,
    /// How special-token text inside chat message contents is tokenized.
    /// [`SpecialTokens::AsText`] stops users from forging role turns.
    pub content_special_tokens: SpecialTokens,
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
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            cors_origins: Vec::new(),
            content_special_tokens: SpecialTokens::Parse,
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
    #[error("invalid CORS origin {0:?} (give a URL such as https://example.com, or *)")]
    CorsOrigin(String),
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
    /// The vocabulary's longest token in bytes (for the early length check).
    pub longest_token_bytes: usize,
    /// What Ollama's model endpoints report (sizes and times of the weight files).
    pub card: ollama::Card,
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
        let Some(tokenizer) = model.tokenizer.as_ref() else {
            return Err(ServerError::NoTokenizer);
        };
        // Normalizers can shrink text before it is tokenized: allow four times the
        // longest token per token, so the early check never refuses a prompt that fits.
        let longest_token_bytes = 4 * tokenizer.longest_token_bytes();
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
            longest_token_bytes,
            card: ollama::Card::of(&model),
            started: routes::unix_now(),
            config,
            model,
            scheduler,
            metrics,
        })
    }
}

/// The HTTP app: OpenAI and Ollama endpoints, health and metrics, auth, limits, CORS,
/// JSON errors (in Ollama's shape on its paths), metrics and an access log line for
/// every request.
pub fn router(state: Arc<AppState>) -> Result<Router, ServerError> {
    let cors = cors_layer(&state.config.cors_origins)?;
    let mut app = Router::new()
        .route("/v1/chat/completions", post(routes::chat_completions))
        .route("/v1/completions", post(routes::completions))
        .route("/v1/models", get(routes::models))
        .route("/v1/models/{id}", get(routes::model))
        .route("/health", get(routes::health))
        .route("/metrics", get(routes::metrics))
        .route("/", get(ollama::root))
        .route("/api/chat", post(ollama::chat))
        .route("/api/generate", post(ollama::generate))
        .route("/api/tags", get(ollama::tags))
        .route("/api/show", post(ollama::show))
        .route("/api/ps", get(ollama::ps))
        .route("/api/version", get(ollama::version))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        // Route layers run inside routing: `label` records the matched path for
        // `track`, which wraps everything (unknown paths and refused keys are counted).
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            routes::authorize,
        ))
        .route_layer(axum::middleware::from_fn(routes::label))
        // Around everything but `track`, so that errors from routing and authorization
        // get Ollama's shape too.
        .layer(axum::middleware::from_fn(ollama::error_shape))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            routes::track,
        ))
        .with_state(state);
    // Outermost, so that preflight requests are answered before authorization.
    if let Some(cors) = cors {
        app = app.layer(cors);
    }
    Ok(app)
}

fn cors_layer(origins: &[String]) -> Result<Option<CorsLayer>, ServerError> {
    if origins.is_empty() {
        return Ok(None);
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let parsed = origins
            .iter()
            .map(|o| {
                let ok =
                    (o.starts_with("http://") || o.starts_with("https://")) && !o.ends_with('/');
                ok.then(|| HeaderValue::from_str(o).ok())
                    .flatten()
                    .ok_or_else(|| ServerError::CorsOrigin(o.clone()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        AllowOrigin::list(parsed)
    };
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
            .allow_headers([
                axum::http::header::AUTHORIZATION,
                axum::http::header::CONTENT_TYPE,
            ])
            .max_age(Duration::from_secs(3600)),
    ))
}
