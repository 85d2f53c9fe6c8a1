//! The server with its model on the GPU backend: concurrent requests, decoded together in
//! shared forward passes on the device, get the answers the CPU gives. Needs a GPU
//! adapter (lavapipe in `.ci/run`), so a plain `cargo test` leaves it out.

mod common;

use std::sync::Arc;

use axum::http::StatusCode;
use common::{default_model_dir, post};
use llada::DeviceChoice;
use llada_server::{AppState, ServerConfig};
use serde_json::json;

fn app_on(device: DeviceChoice) -> axum::Router {
    let loaded = llada::load_model_on(&default_model_dir(), None, device).unwrap();
    let state = Arc::new(AppState::new(ServerConfig::new("default"), Arc::new(loaded)).unwrap());
    llada_server::router(state).unwrap()
}

fn chat(question: &str) -> serde_json::Value {
    json!({
        "model": "default",
        "messages": [{"role": "user", "content": question}],
        "max_tokens": 32,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a GPU adapter (lavapipe in .ci/run)"]
async fn concurrent_requests_on_the_gpu_get_the_cpu_answers() {
    let questions = [
        "Reverse: 1 2 3",
        "Sort: 9 4 7 1",
        "Add: 23 + 58",
        "Copy: a b c d",
    ];
    let gpu = app_on(DeviceChoice::Gpu);
    let cpu = app_on(DeviceChoice::Cpu);
    let replies = futures_join(&gpu, &questions).await;
    for (q, reply) in questions.iter().zip(replies) {
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        let want = post(&cpu, "/v1/chat/completions", &chat(q)).await;
        assert_eq!(
            reply.json()["choices"][0]["message"],
            want.json()["choices"][0]["message"],
            "{q}"
        );
    }
}

/// The requests sent at once, so the scheduler batches them.
async fn futures_join(app: &axum::Router, questions: &[&str]) -> Vec<common::Reply> {
    let tasks: Vec<_> = questions
        .iter()
        .map(|q| {
            let (app, body) = (app.clone(), chat(q));
            tokio::spawn(async move { post(&app, "/v1/chat/completions", &body).await })
        })
        .collect();
    let mut replies = Vec::new();
    for t in tasks {
        replies.push(t.await.unwrap());
    }
    replies
}
