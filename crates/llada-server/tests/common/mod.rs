//! The default model behind an in-process app, and a small request helper.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use llada::LoadedModel;
use llada_server::{AppState, ServerConfig};
use serde_json::Value;
use tower::ServiceExt;

pub fn default_model_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/default")
}

/// The repository's default model, loaded once per test binary.
pub fn model() -> Arc<LoadedModel> {
    static MODEL: OnceLock<Arc<LoadedModel>> = OnceLock::new();
    MODEL
        .get_or_init(|| Arc::new(llada::load_model(&default_model_dir()).unwrap()))
        .clone()
}

pub fn state(config: ServerConfig) -> Arc<AppState> {
    Arc::new(AppState::new(config, model()).unwrap())
}

pub fn app_with(config: ServerConfig) -> (Router, Arc<AppState>) {
    let state = state(config);
    (llada_server::router(state.clone()).unwrap(), state)
}

pub fn app() -> Router {
    app_with(ServerConfig::new("default")).0
}

pub struct Reply {
    pub status: StatusCode,
    pub content_type: String,
    pub text: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    /// The `data:` payloads of a server-sent event stream.
    pub fn events(&self) -> Vec<String> {
        self.text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(str::to_string)
            .collect()
    }
}

pub async fn send(
    app: &Router,
    method: &str,
    path: &str,
    body: Option<&str>,
    key: Option<&str>,
) -> Reply {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(key) = key {
        req = req.header("authorization", format!("Bearer {key}"));
    }
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let content_type = res
        .headers()
        .get("content-type")
        .map_or(String::new(), |v| v.to_str().unwrap().to_string());
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        content_type,
        text: String::from_utf8(bytes.to_vec()).unwrap(),
    }
}

pub async fn post(app: &Router, path: &str, body: &Value) -> Reply {
    send(app, "POST", path, Some(&body.to_string()), None).await
}
