//! Ollama's API next to OpenAI's, for the clients and tools that speak it (the `ollama`
//! libraries, Open WebUI): `POST /api/chat` and `POST /api/generate` (an NDJSON stream by
//! default, one body with `"stream": false`), `GET /api/tags`, `POST /api/show`,
//! `GET /api/ps`, `GET /api/version`, and `GET`/`HEAD /`, which clients probe.
//!
//! A request goes through what the OpenAI routes use: the same settings and checks
//! (`options` is read as [`crate::api::CommonParams`]), prompt encoding, scheduler,
//! limits, timeouts and API key. Only the shapes are Ollama's: its
//! field names, `{"error": "message"}` errors ([`error_shape`]), and its counts and
//! durations (nanoseconds) on the last message.

mod model;
mod request;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::api::{field_errors, CommonParams, Usage};
use crate::error::ApiError;
use crate::routes::JsonBody;
use crate::scheduler::{Event, Timing};
use crate::AppState;

pub use model::{ps, show, tags, Card};
use request::{ChatBody, GenerateBody, Shared};

/// What Ollama answers on `/`, where clients check that a server is there.
pub async fn root() -> &'static str {
    "Ollama is running"
}

/// llada's version: the API is Ollama's, the server is not.
pub async fn version() -> Json<Value> {
    Json(json!({ "version": env!("CARGO_PKG_VERSION") }))
}

pub async fn chat(
    State(state): State<Arc<AppState>>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let shared: Shared = field_errors(&body)?;
    let chat: ChatBody = field_errors(&body)?;
    let model = check_model(&state, shared.model.as_deref())?;
    shared.check()?;
    let messages = chat.messages()?;
    let common = request::settings(&body, shared.stream())?;
    if messages.is_empty() {
        // Ollama's way to load a model; this one is always loaded.
        return Ok(Json(Reply::Chat.last(&model, "", json!("load"), None)).into_response());
    }
    let prompt = state.encode_chat(messages).await?;
    respond(state, prompt, common, Reply::Chat, model).await
}

pub async fn generate(
    State(state): State<Arc<AppState>>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let shared: Shared = field_errors(&body)?;
    let generate: GenerateBody = field_errors(&body)?;
    let model = check_model(&state, shared.model.as_deref())?;
    shared.check()?;
    generate.check()?;
    let common = request::settings(&body, shared.stream())?;
    let text = generate.prompt.unwrap_or_default();
    if text.is_empty() {
        return Ok(Json(Reply::Generate.last(&model, "", json!("load"), None)).into_response());
    }
    let prompt = if generate.raw == Some(true) {
        state.encode_text(text).await?
    } else {
        let system = generate.system.filter(|s| !s.is_empty());
        let mut messages: Vec<_> = system
            .map(|s| llada::Message::new("system", s))
            .into_iter()
            .collect();
        messages.push(llada::Message::new("user", text));
        state.encode_chat(messages).await?
    };
    respond(state, prompt, common, Reply::Generate, model).await
}

/// The served model's name as the request gives it: the server's model id, or the id
/// with Ollama's default tag (`:latest`), which Ollama's clients add to bare names.
fn check_model(state: &AppState, model: Option<&str>) -> Result<String, ApiError> {
    let name = model.unwrap_or_default();
    if name.is_empty() {
        return Err(ApiError::invalid_param("model", "model is required"));
    }
    let id = state.config.model_id.as_str();
    if name == id || name.strip_suffix(":latest") == Some(id) {
        return Ok(name.to_string());
    }
    Err(ApiError::unknown_model(name).with_message(format!("model '{name}' not found")))
}

/// Queues the request and answers with NDJSON lines or one body.
async fn respond(
    state: Arc<AppState>,
    prompt: Vec<u32>,
    common: CommonParams,
    reply: Reply,
    model: String,
) -> Result<Response, ApiError> {
    let run = state.submit(prompt, &common)?;
    if !common.stream() {
        let answer = run.answer().await?;
        let stats = Some((&answer.usage, &answer.timing));
        let body = reply.last(&model, &answer.text, json!(answer.reason), stats);
        return Ok(Json(body).into_response());
    }
    let lines = run.events().map(move |event| {
        let line = match event {
            Event::Text(text) => reply.message(&model, &text, false),
            Event::Done {
                reason,
                usage,
                timing,
            } => reply.last(&model, "", json!(reason), Some((&usage, &timing))),
            // Ollama's clients raise an `error` line as they raise an error response.
            Event::Failed(e) => json!({ "error": e.message }),
        };
        Ok::<_, Infallible>(format!("{line}\n"))
    });
    let ndjson = [(header::CONTENT_TYPE, "application/x-ndjson")];
    Ok((ndjson, Body::from_stream(lines)).into_response())
}

/// Ollama's two answer shapes: `/api/chat`'s `message`, `/api/generate`'s `response`.
#[derive(Clone, Copy)]
enum Reply {
    Chat,
    Generate,
}

impl Reply {
    /// A body with `text`: the whole answer, a streamed piece of it, or nothing (the
    /// last line of a stream).
    fn message(self, model: &str, text: &str, done: bool) -> Value {
        let mut body = json!({
            "model": model,
            "created_at": rfc3339(SystemTime::now()),
            "done": done,
        });
        match self {
            Reply::Chat => body["message"] = json!({"role": "assistant", "content": text}),
            Reply::Generate => body["response"] = json!(text),
        }
        body
    }

    /// The last body: why the answer ended and, for an answer, its counts and
    /// durations. `load_duration` is the time waiting for a batch slot (the model is
    /// loaded once, at start; Ollama counts its wait for a runner there too). The prompt
    /// is evaluated by the request's first denoising pass, which also decodes the
    /// answer's first block (often all of a short answer), so the prompt's and the
    /// answer's times both start when the request joins the batch and overlap by that
    /// pass: each count over its duration is a rate that means something (a split at
    /// the end of the first pass would credit a one-pass answer with no time at all).
    fn last(
        self,
        model: &str,
        text: &str,
        reason: Value,
        stats: Option<(&Usage, &Timing)>,
    ) -> Value {
        let mut body = self.message(model, text, true);
        body["done_reason"] = reason;
        if let Some((usage, t)) = stats {
            let ns =
                |from: Instant, to: Instant| to.saturating_duration_since(from).as_nanos() as u64;
            body["total_duration"] = json!(ns(t.received, t.finished));
            body["load_duration"] = json!(ns(t.received, t.admitted));
            body["prompt_eval_count"] = json!(usage.prompt_tokens);
            body["prompt_eval_duration"] = json!(ns(t.admitted, t.prefilled));
            body["eval_count"] = json!(usage.completion_tokens);
            body["eval_duration"] = json!(ns(t.admitted, t.finished));
        }
        body
    }
}

/// Ollama's clients read errors as `{"error": "message"}`: on Ollama's paths every
/// error (a handler's, the body reader's, authorization's, an unknown path's or method's)
/// is rewritten from OpenAI's shape, keeping its status and headers.
pub async fn error_shape(req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let ollama = path == "/" || path.starts_with("/api/");
    let response = next.run(req).await;
    let error = match response.extensions().get::<ApiError>() {
        Some(error) if ollama => json!({ "error": error.message }),
        _ => return response,
    };
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(error.to_string()))
}

/// `t` in RFC 3339, UTC, with nanoseconds, as Ollama writes times.
fn rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (days, secs) = (since.as_secs() / 86_400, since.as_secs() % 86_400);
    // The civil date of a day count (Howard Hinnant's `civil_from_days`).
    let z = days as i64 + 719_468;
    let (era, doe) = (z.div_euclid(146_097), z.rem_euclid(146_097));
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        since.subsec_nanos()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn times_are_rfc3339_in_utc() {
        let at = |secs: u64, nanos: u32| rfc3339(UNIX_EPOCH + Duration::new(secs, nanos));
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.000000005Z");
        assert_eq!(at(1_709_251_199, 0), "2024-02-29T23:59:59.000000000Z");
        assert_eq!(at(4_102_444_800, 0), "2100-01-01T00:00:00.000000000Z");
    }
}
