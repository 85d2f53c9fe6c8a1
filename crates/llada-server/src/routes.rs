//! The HTTP endpoints of OpenAI's API and the server's own (health, metrics), the
//! middleware every route shares, and what every API's handlers share: reading a body,
//! tokenizing a prompt off the async threads, queueing it (`AppState::submit`) and
//! reading its answer back ([`Run`]).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, MatchedPath, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::{stream, Stream, StreamExt};
use serde_json::{json, Value};
use subtle::ConstantTimeEq;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use llada::Generation;

use crate::api::{
    field_errors, ChatRequest, CommonParams, CompletionRequest, FinishReason, ModelCard, ModelList,
    Prompt, Usage,
};
use crate::error::ApiError;
use crate::metrics::RequestLabels;
use crate::scheduler::{Event, Job, SubmitError, Timing};
use crate::AppState;

/// A JSON object body, read without regard to its content type (curl's `-d` sends a
/// form type). Its parts are then parsed with [`field_errors`] so errors name the field.
pub struct JsonBody(pub Value);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let rules = req
            .extensions()
            .get::<BodyRules>()
            .copied()
            .unwrap_or(BodyRules {
                limit: 0,
                timeout: Duration::from_secs(30),
            });
        // A client that announces more bytes than it sends would hold the request open.
        let read = tokio::time::timeout(rules.timeout, Bytes::from_request(req, state));
        let bytes = read
            .await
            .map_err(|_| ApiError::body_timeout(rules.timeout.as_secs_f64()))?
            .map_err(|e| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::too_large(rules.limit)
                } else {
                    ApiError::invalid(format!("cannot read the request body: {e}"))
                }
            })?;
        let value: Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::invalid(format!("the body is not valid JSON: {e}")))?;
        if !value.is_object() {
            return Err(ApiError::invalid("the body must be a JSON object"));
        }
        Ok(JsonBody(value))
    }
}

/// The body size limit and the time a client has to send it.
#[derive(Clone, Copy)]
pub struct BodyRules {
    pub limit: usize,
    pub timeout: Duration,
}

/// The route a request matched, carried on its response for [`track`].
#[derive(Clone)]
pub struct Endpoint(pub String);

/// Labels a matched route's response with its path template.
pub async fn label(req: Request, next: Next) -> Response {
    let endpoint = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string());
    let mut response = next.run(req).await;
    if let Some(endpoint) = endpoint {
        response.extensions_mut().insert(Endpoint(endpoint));
    }
    response
}

/// Rejects requests without the configured bearer token (constant-time comparison).
/// Health probes stay open: `/health`, and `/`, where Ollama's clients look for a
/// server ("Ollama is running").
pub async fn authorize(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &state.config.api_key {
        if !matches!(req.uri().path(), "/health" | "/") {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("");
            if !bool::from(given.as_bytes().ct_eq(key.as_bytes())) {
                return ApiError::unauthorized().into_response();
            }
        }
    }
    next.run(req).await
}

/// Counts every request by endpoint (`unmatched` for unknown paths) and status, times
/// it to the response head, and writes one access-log line.
pub async fn track(State(state): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let peer = req
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.to_string());
    req.extensions_mut().insert(BodyRules {
        limit: state.config.max_body_bytes,
        timeout: state.config.body_timeout,
    });
    let response = next.run(req).await;
    let seconds = started.elapsed().as_secs_f64();
    let status = response.status().as_u16();
    let endpoint = response
        .extensions()
        .get::<Endpoint>()
        .map_or_else(|| "unmatched".to_string(), |e| e.0.clone());
    let m = &state.metrics;
    m.http_seconds.observe(seconds);
    m.requests
        .get_or_create(&RequestLabels { endpoint, status })
        .inc();
    tracing::info!(
        target: "llada_server::access",
        "{} {method} {path} {status} {:.1} ms",
        peer.as_deref().unwrap_or("-"),
        seconds * 1e3
    );
    response
}

/// 200 while the decoding loop runs, 503 once it has died (so balancers stop sending).
pub async fn health(State(state): State<Arc<AppState>>) -> Response {
    let running = state.scheduler.is_running();
    let status = if running {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if running { "ok" } else { "decoding loop stopped" },
        "model": state.config.model_id,
        "active": state.metrics.active.get(),
        "queued": state.scheduler.queued(),
    });
    (status, Json(body)).into_response()
}

pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

pub async fn models(State(state): State<Arc<AppState>>) -> Json<ModelList> {
    Json(ModelList {
        object: "list",
        data: vec![state.model_card()],
    })
}

/// `GET /v1/models/{id}`: the served model's card, or 404 for any other id.
pub async fn model(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<ModelCard>, ApiError> {
    state.check_model(&id)?;
    Ok(Json(state.model_card()))
}

pub async fn not_found(req: Request) -> ApiError {
    ApiError::not_found(req.uri().path())
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}

pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let req: ChatRequest = field_errors(&body)?;
    let common = CommonParams::from_body(&body)?;
    state.check_model(&req.model)?;
    if req.messages.is_empty() {
        return Err(ApiError::invalid_param(
            "messages",
            "messages must not be empty",
        ));
    }
    let messages = req
        .messages
        .iter()
        .enumerate()
        .map(|(i, m)| m.to_engine(i))
        .collect::<Result<Vec<_>, _>>()?;
    let prompt = state.encode_chat(messages).await?;
    respond(state, prompt, &common, Format::Chat).await
}

pub async fn completions(
    State(state): State<Arc<AppState>>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let req: CompletionRequest = field_errors(&body)?;
    let common = CommonParams::from_body(&body)?;
    state.check_model(&req.model)?;
    if req.echo == Some(true) {
        return Err(ApiError::invalid_param("echo", "echo is not supported"));
    }
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::invalid_param("suffix", "suffix is not supported"));
    }
    let one = || ApiError::invalid_param("prompt", "one prompt per request (n = 1)");
    let text = match req.prompt {
        Prompt::Text(text) => text,
        Prompt::Texts(mut v) if v.len() == 1 => v.remove(0),
        Prompt::Ids(ids) => return respond(state, ids, &common, Format::Completion).await,
        Prompt::IdLists(mut v) if v.len() == 1 => {
            return respond(state, v.remove(0), &common, Format::Completion).await
        }
        Prompt::Texts(_) | Prompt::IdLists(_) => return Err(one()),
    };
    let prompt = state.encode_text(text).await?;
    respond(state, prompt, &common, Format::Completion).await
}

/// Queues the request and answers it as a stream or as one body.
async fn respond(
    state: Arc<AppState>,
    prompt: Vec<u32>,
    common: &CommonParams,
    format: Format,
) -> Result<Response, ApiError> {
    let run = state.submit(prompt, common)?;
    Ok(if common.stream() {
        stream_response(state, run, format, common.include_usage())
    } else {
        whole_response(state, run, format).await?
    })
}

/// An accepted request: its id, creation time and event stream.
pub struct Run {
    pub ticket: Ticket,
    events: UnboundedReceiver<Event>,
    deadline: Instant,
    timeout: Duration,
}

/// What names an accepted request in its responses.
#[derive(Debug, Clone)]
pub struct Ticket {
    pub id: String,
    /// Unix seconds.
    pub created: u64,
}

/// A whole answer.
pub struct Answer {
    pub text: String,
    pub reason: FinishReason,
    pub usage: Usage,
    pub timing: Timing,
}

impl Run {
    /// The next event: a timeout error once the request's time is up (also when the
    /// decoding loop itself is stuck), unavailable if the loop is gone.
    async fn next(&mut self) -> Event {
        match tokio::time::timeout_at(self.deadline.into(), self.events.recv()).await {
            Ok(Some(event)) => event,
            Ok(None) => Event::Failed(ApiError::unavailable()),
            Err(_) => Event::Failed(ApiError::timeout(self.timeout.as_secs_f64())),
        }
    }

    /// Waits for the whole answer.
    pub async fn answer(mut self) -> Result<Answer, ApiError> {
        let mut text = String::new();
        loop {
            match self.next().await {
                Event::Text(piece) => text.push_str(&piece),
                Event::Done {
                    reason,
                    usage,
                    timing,
                } => {
                    return Ok(Answer {
                        text,
                        reason,
                        usage,
                        timing,
                    })
                }
                Event::Failed(e) => return Err(e),
            }
        }
    }

    /// The events as they come, ending with a `Done` or `Failed`: what every API's
    /// stream writes in its own shape. A client that goes away drops the stream, which
    /// the scheduler sees at its next step.
    pub fn events(self) -> impl Stream<Item = Event> + Send + 'static {
        stream::unfold(Some(self), |run| async move {
            let mut run = run?;
            let event = run.next().await;
            let more = matches!(event, Event::Text(_));
            Some((event, more.then_some(run)))
        })
    }
}

impl AppState {
    /// Rejects text that cannot fit the context whatever its tokens, before any work:
    /// no token is longer than the vocabulary's longest, so `bytes` of text are at least
    /// `bytes / longest` tokens.
    fn check_length(&self, bytes: usize, param: &str) -> Result<(), ApiError> {
        let context = self.model.files.config.max_position_embeddings;
        let fewest_tokens = bytes / self.longest_token_bytes.max(1);
        if fewest_tokens > context {
            return Err(ApiError::invalid_param(
                param,
                format!(
                    "the text ({bytes} bytes) is at least {fewest_tokens} tokens, more than the model's context of {context}"
                ),
            )
            .with_code("context_length_exceeded"));
        }
        Ok(())
    }

    /// The chat prompt of `messages` (contents' special tokens read as the server is
    /// configured), after the early length check.
    pub(crate) async fn encode_chat(
        self: &Arc<Self>,
        messages: Vec<llada::Message>,
    ) -> Result<Vec<u32>, ApiError> {
        let text_bytes = messages.iter().map(|m| m.content.len()).sum();
        self.check_length(text_bytes, "messages")?;
        self.off_async(move |state| {
            let specials = state.config.content_special_tokens;
            state
                .tokenizer()
                .encode_chat_with(&messages, true, specials)
        })
        .await
    }

    /// A prompt as plain text (no template), after the early length check; never empty.
    pub(crate) async fn encode_text(self: &Arc<Self>, text: String) -> Result<Vec<u32>, ApiError> {
        self.check_length(text.len(), "prompt")?;
        let prompt = self
            .off_async(move |state| state.tokenizer().encode(&text))
            .await?;
        if prompt.is_empty() {
            return Err(ApiError::invalid_param("prompt", "the prompt is empty"));
        }
        Ok(prompt)
    }

    /// Runs tokenizer work (template rendering, tokenizing) on the blocking pool, so a
    /// large prompt does not stall the threads that serve every other connection.
    async fn off_async<T: Send + 'static>(
        self: &Arc<Self>,
        work: impl FnOnce(&AppState) -> llada::Result<T> + Send + 'static,
    ) -> Result<T, ApiError> {
        let state = self.clone();
        tokio::task::spawn_blocking(move || work(&state))
            .await
            .map_err(|_| ApiError::internal("tokenization failed"))?
            .map_err(ApiError::from)
    }

    fn check_model(&self, model: &str) -> Result<(), ApiError> {
        if model == self.config.model_id {
            Ok(())
        } else {
            Err(ApiError::unknown_model(model))
        }
    }

    pub(crate) fn tokenizer(&self) -> &llada::Tokenizer {
        self.model
            .tokenizer
            .as_ref()
            .expect("checked when the server started")
    }

    pub(crate) fn model_card(&self) -> ModelCard {
        ModelCard {
            id: self.config.model_id.clone(),
            object: "model",
            created: self.started,
            owned_by: "llada",
            context_length: self.model.files.config.max_position_embeddings,
        }
    }

    /// Checks the request's settings against the model and queues it.
    pub(crate) fn submit(&self, prompt: Vec<u32>, common: &CommonParams) -> Result<Run, ApiError> {
        let config = &self.model.files.config;
        let params = common.to_params(&self.defaults, config, &self.limits, prompt.len())?;
        let stop = common.stop_strings()?;
        let generation = Generation::new(&self.model.model, &prompt, params)?;
        let (tx, rx) = unbounded_channel();
        let received = Instant::now();
        let timeout = self.config.request_timeout;
        let deadline = received
            .checked_add(timeout)
            .unwrap_or_else(|| received + Duration::from_secs(365 * 86_400));
        let job = Job {
            generation,
            stop,
            received,
            deadline,
            events: tx,
        };
        match self.scheduler.submit(job) {
            Ok(()) => Ok(Run {
                ticket: Ticket {
                    id: new_id(),
                    created: unix_now(),
                },
                events: rx,
                deadline,
                timeout,
            }),
            Err(SubmitError::Full) => Err(ApiError::busy(self.scheduler.max_queue())),
            Err(SubmitError::Stopped) => Err(ApiError::unavailable()),
        }
    }
}

fn new_id() -> String {
    format!("{:024x}", rand::random::<u128>() >> 32)
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

/// The two OpenAI response shapes.
#[derive(Clone, Copy)]
enum Format {
    Chat,
    Completion,
}

impl Format {
    fn id(self, id: &str) -> String {
        match self {
            Format::Chat => format!("chatcmpl-{id}"),
            Format::Completion => format!("cmpl-{id}"),
        }
    }

    fn envelope(self, state: &AppState, ticket: &Ticket, stream: bool, choices: Value) -> Value {
        let object = match (self, stream) {
            (Format::Chat, false) => "chat.completion",
            (Format::Chat, true) => "chat.completion.chunk",
            (Format::Completion, _) => "text_completion",
        };
        json!({
            "id": self.id(&ticket.id),
            "object": object,
            "created": ticket.created,
            "model": state.config.model_id,
            "system_fingerprint": state.fingerprint,
            "choices": choices,
        })
    }

    fn choice(self, text: &str, finish: Option<FinishReason>) -> Value {
        match self {
            Format::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": null,
                "finish_reason": finish,
            }),
            Format::Completion => json!({
                "index": 0, "text": text, "logprobs": null, "finish_reason": finish,
            }),
        }
    }

    fn delta(self, text: Option<&str>, first: bool, finish: Option<FinishReason>) -> Value {
        match self {
            Format::Chat => {
                let mut delta = serde_json::Map::new();
                if first {
                    delta.insert("role".into(), json!("assistant"));
                }
                if let Some(text) = text {
                    delta.insert("content".into(), json!(text));
                }
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
            }
            Format::Completion => json!({
                "index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish,
            }),
        }
    }
}

/// Waits for the whole answer.
async fn whole_response(
    state: Arc<AppState>,
    run: Run,
    format: Format,
) -> Result<Response, ApiError> {
    let ticket = run.ticket.clone();
    let answer = run.answer().await?;
    let choices = json!([format.choice(&answer.text, Some(answer.reason))]);
    let mut body = format.envelope(&state, &ticket, false, choices);
    body["usage"] = json!(answer.usage);
    Ok(Json(body).into_response())
}

/// Server-sent events: a first chunk at once (chat), then text as it becomes final, a
/// last chunk with the finish reason, optionally a usage chunk, and `[DONE]`.
fn stream_response(
    state: Arc<AppState>,
    run: Run,
    format: Format,
    include_usage: bool,
) -> Response {
    let ticket = run.ticket.clone();
    let first = matches!(format, Format::Chat).then(|| {
        let delta = json!([format.delta(Some(""), true, None)]);
        data(&format.envelope(&state, &ticket, true, delta))
    });
    let chunks = run.events().flat_map(move |event| {
        let chunk = |choices: Value| format.envelope(&state, &ticket, true, choices);
        let events = match event {
            Event::Text(text) => {
                vec![data(&chunk(json!([format.delta(
                    Some(&text),
                    false,
                    None
                )])))]
            }
            Event::Done { reason, usage, .. } => {
                let last = json!([format.delta(None, false, Some(reason))]);
                let mut events = vec![data(&chunk(last))];
                if include_usage {
                    let mut c = chunk(json!([]));
                    c["usage"] = json!(usage);
                    events.push(data(&c));
                }
                events.push(SseEvent::default().data("[DONE]"));
                events
            }
            Event::Failed(e) => vec![data(&e.body()), SseEvent::default().data("[DONE]")],
        };
        stream::iter(events)
    });
    let events = stream::iter(first).chain(chunks).map(Ok::<_, Infallible>);
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

fn data(value: &Value) -> SseEvent {
    SseEvent::default().data(value.to_string())
}
