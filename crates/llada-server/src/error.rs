//! Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` with the
//! matching HTTP status, so SDKs raise their usual exception types. Ollama's paths
//! rewrite the same errors as `{"error": "message"}` (`ollama::error_shape`).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApiError {
    #[serde(skip)]
    pub status: StatusCode,
    pub message: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
        }
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// The same error in other words (another API's wording of it).
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = message.into();
        self
    }

    /// 400: the request is malformed or a setting is out of range.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// 400 naming the offending field.
    pub fn invalid_param(param: &str, message: impl Into<String>) -> Self {
        Self::invalid(message).with_param(param)
    }

    pub fn unknown_model(model: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("The model `{model}` does not exist; GET /v1/models lists the served model"),
        )
        .with_param("model")
        .with_code("model_not_found")
    }

    pub fn not_found(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("no endpoint {path}"),
        )
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            "method not allowed for this endpoint",
        )
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "missing or incorrect API key: send it as `Authorization: Bearer KEY`",
        )
        .with_code("invalid_api_key")
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("the request body is larger than the server's limit of {limit} bytes"),
        )
    }

    /// 429: the queue is full; the client should retry later.
    pub fn busy(queue: usize) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            format!("the server is at capacity ({queue} requests waiting); retry shortly"),
        )
        .with_code("rate_limit_exceeded")
    }

    /// 503: the decoding loop is gone (it failed or the server is shutting down).
    pub fn unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "the decoding loop is not running",
        )
    }

    /// 408: the client did not send its whole body in time.
    pub fn body_timeout(seconds: f64) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            format!("the request body did not arrive within {seconds:.0} s"),
        )
    }

    pub fn timeout(seconds: f64) -> Self {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout_error",
            format!("the request did not finish within the server's timeout of {seconds:.0} s"),
        )
        .with_code("request_timeout")
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    /// The `{"error": …}` body.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({ "error": self })
    }
}

impl IntoResponse for ApiError {
    /// The OpenAI-shaped body; the error itself rides along in the response's extensions
    /// so that a layer can write it in another API's shape (Ollama's paths).
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response.extensions_mut().insert(self);
        response
    }
}

impl ApiError {
    /// An engine error as the client sees it: bad settings and prompts are 400s naming
    /// the request field (`gen_length` is the request's `max_tokens_field`), anything
    /// else is the server's fault.
    pub fn from_engine(e: llada::Error, max_tokens_field: &str) -> Self {
        use llada::Error as E;
        match e {
            E::ContextOverflow { .. } => {
                ApiError::invalid(e.to_string()).with_code("context_length_exceeded")
            }
            E::InvalidParam { param, message } => {
                let field = match param {
                    "gen_length" => max_tokens_field,
                    other => other,
                };
                ApiError::invalid_param(field, format!("invalid `{field}`: {message}"))
            }
            E::InvalidRequest(_) | E::TokenOutOfRange { .. } | E::ChatTemplate { .. } => {
                ApiError::invalid(e.to_string())
            }
            other => ApiError::internal(other.to_string()),
        }
    }
}

impl From<llada::Error> for ApiError {
    fn from(e: llada::Error) -> Self {
        Self::from_engine(e, "max_tokens")
    }
}
