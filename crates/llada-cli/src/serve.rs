//! `llada serve`: the OpenAI-compatible HTTP server (see llada-server).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use llada_server::{AppState, ServerConfig};

use crate::args::{DecodeArgs, ModelArgs};

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Decoding defaults for requests that do not set them (`--gen-length` is the
    /// default `max_tokens`).
    #[command(flatten)]
    pub decode: DecodeArgs,
    /// Address to bind: loopback unless told otherwise (0.0.0.0 exposes the server).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0 picks a free one; the address is printed).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` on every endpoint but /health.
    #[arg(long)]
    pub api_key: Option<String>,
    /// Most requests decoded together in one batched forward pass.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_batch: u32,
    /// Most requests waiting for a slot; beyond it requests get 429.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_queue: u32,
    /// Seconds a request may take from arrival to its last token (then 504).
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    pub request_timeout: u64,
    /// Largest accepted request body, in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
    /// The model name clients send as `model` (default: the model folder's name).
    #[arg(long)]
    pub model_name: Option<String>,
    /// Largest block length a request may ask for.
    #[arg(long, default_value_t = 256)]
    pub max_block_length: usize,
    /// Seconds a connection may take to send a request's headers; also how long an idle
    /// keep-alive connection stays open.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub header_timeout: u64,
    /// Seconds a client may take to send a request body (then 408).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub body_timeout: u64,
    /// Allow browsers on this origin to call the API (CORS), e.g. http://localhost:3000;
    /// repeat for several, or * for any.
    #[arg(long)]
    pub cors_origin: Vec<String>,
    /// Read special-token text inside chat messages (e.g. <|role_end|>) as plain text,
    /// so that users cannot forge role turns.
    #[arg(long)]
    pub literal_special_tokens: bool,
}

pub fn run(args: ServeArgs) -> Result<()> {
    let dir = args.model.dir()?;
    let loaded = args.model.load()?;
    let mut config = ServerConfig::new(
        args.model_name
            .clone()
            .unwrap_or_else(|| model_id(&args, dir.as_deref())),
    );
    config.api_key = args.api_key.clone();
    config.max_batch = args.max_batch as usize;
    config.max_queue = args.max_queue as usize;
    config.request_timeout = Duration::from_secs(args.request_timeout);
    config.max_body_bytes = args.max_body_bytes;
    config.max_block_length = args.max_block_length;
    config.header_timeout = Duration::from_secs(args.header_timeout);
    config.body_timeout = Duration::from_secs(args.body_timeout);
    config.cors_origins = args.cors_origin.clone();
    if args.literal_special_tokens {
        config.content_special_tokens = llada::tokenizer::SpecialTokens::AsText;
    }
    let mut defaults = args.decode.params(&loaded)?;
    config.default_max_tokens = defaults.gen_length;
    // The answer is complete once its EOS is final, unless --eos-early-stop false says
    // otherwise (a request may too).
    if args.decode.settings.eos_early_stop.is_none() {
        defaults.eos_early_stop = true;
    }
    let state = Arc::new(AppState::with_defaults(config, Arc::new(loaded), defaults)?);

    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let addr = format!("{}:{}", args.host, args.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let local = listener.local_addr()?;
        eprintln!(
            "llada serve: model {:?} on http://{local} (max batch {}, queue {}{})",
            state.config.model_id,
            state.config.max_batch,
            state.config.max_queue,
            if state.config.api_key.is_some() {
                ", API key required"
            } else {
                ""
            },
        );
        let header_timeout = state.config.header_timeout;
        let app = llada_server::router(state)?;
        let shutdown = async {
            shutdown_signal().await;
            eprintln!("llada serve: shutting down (a second signal stops at once)");
            // Streams in flight get to finish; a second signal does not wait for them.
            tokio::spawn(async {
                shutdown_signal().await;
                std::process::exit(130);
            });
        };
        llada_server::serve(listener, app, header_timeout, shutdown).await?;
        Ok(())
    })
}

/// Ctrl-C, or SIGTERM (what service managers and containers send).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// `--model` as given when it is a repo id, the folder's name for a folder, or
/// "default" for the built-in model.
fn model_id(args: &ServeArgs, dir: Option<&std::path::Path>) -> String {
    match (&args.model.model, dir) {
        (Some(spec), _) if !std::path::Path::new(spec).exists() => spec.clone(),
        (_, Some(dir)) => dir
            .file_name()
            .map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned()),
        (_, None) => "default".into(),
    }
}
