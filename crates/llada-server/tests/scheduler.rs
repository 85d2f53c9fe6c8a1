//! The scheduler: batching, a bounded queue, and freeing slots of departed clients.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::{app_with, model, post};
use llada::{GenerateParams, Generation};
use llada_server::scheduler::{Event, Job, Scheduler, SubmitError};
use llada_server::{Metrics, ServerConfig};
use serde_json::json;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

/// A request that cannot end early: one token per forward pass, stop tokens ignored,
/// 400 tokens.
fn long_job() -> (Job, UnboundedReceiver<Event>) {
    let loaded = model();
    let mut params: GenerateParams = loaded.default_params();
    params.ignore_eos = true;
    params.gen_length = 400;
    params.block_length = 1;
    params.steps = 1;
    let prompt = loaded
        .tokenizer
        .as_ref()
        .unwrap()
        .encode("Reverse: 1 2 3")
        .unwrap();
    let (tx, rx) = unbounded_channel();
    let now = Instant::now();
    let job = Job {
        generation: Generation::new(&loaded.model, &prompt, params).unwrap(),
        stop: Vec::new(),
        received: now,
        deadline: now + Duration::from_secs(600),
        events: tx,
    };
    (job, rx)
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting: {what}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn outcome(metrics: &Metrics, outcome: &str) -> bool {
    metrics.render().contains(&format!(
        "llada_generations_total{{outcome=\"{outcome}\"}} 1"
    ))
}

#[test]
fn a_departed_client_frees_its_slot_and_the_queue_moves_on() {
    let metrics = Arc::new(Metrics::new());
    let scheduler = Scheduler::start(model(), 1, 1, metrics.clone()).unwrap();
    let (first, first_rx) = long_job();
    scheduler.submit(first).unwrap();
    wait_until("the first job is admitted", || scheduler.queued() == 0);
    let (second, mut second_rx) = long_job();
    scheduler.submit(second).unwrap();
    let (third, _third_rx) = long_job();
    assert_eq!(
        scheduler.submit(third),
        Err(SubmitError::Full),
        "batch of 1 busy, queue of 1 full"
    );

    // The first client leaves while its 400 steps are still running.
    drop(first_rx);
    wait_until("the departed request is counted", || {
        outcome(&metrics, "cancelled")
    });
    // Its slot went to the queued request, which runs to the end.
    assert_eq!(scheduler.queued(), 0);
    let last = std::iter::from_fn(|| second_rx.blocking_recv()).last();
    assert!(matches!(last, Some(Event::Done { .. })), "{last:?}");
}

#[test]
fn concurrent_requests_share_forward_passes() {
    let metrics = Arc::new(Metrics::new());
    let scheduler = Scheduler::start(model(), 8, 8, metrics.clone()).unwrap();
    let mut receivers = Vec::new();
    for _ in 0..4 {
        let (job, rx) = long_job();
        scheduler.submit(job).unwrap();
        receivers.push(rx);
    }
    let mut tokens = Vec::new();
    for mut rx in receivers {
        let mut n = 0;
        loop {
            match rx.blocking_recv().unwrap() {
                Event::Text(_) => {}
                Event::Done { usage, .. } => {
                    n += usage.completion_tokens;
                    assert_eq!(usage.forwards, 400);
                    break;
                }
                Event::Failed(e) => panic!("{e:?}"),
            }
        }
        tokens.push(n);
    }
    assert_eq!(tokens, vec![400; 4]);
    let text = metrics.render();
    let forwards: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("llada_forwards_total "))
        .unwrap()
        .parse()
        .unwrap();
    // 4 x 400 sequence steps; batching keeps the number of passes near 400 (the
    // requests may be admitted a few passes apart).
    assert!(
        forwards < 600.0,
        "{forwards} forward passes for 4 x 400 steps"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_and_serving_resumes() {
    let mut config = ServerConfig::new("default");
    config.max_batch = 1;
    config.max_queue = 1;
    let (app, state) = app_with(config);
    let (busy, mut busy_rx) = long_job();
    state.scheduler.submit(busy).unwrap();
    let (queued, queued_rx) = long_job();
    let s = state.clone();
    tokio::task::spawn_blocking(move || wait_until("admitted", || s.scheduler.queued() == 0))
        .await
        .unwrap();
    state.scheduler.submit(queued).unwrap();

    let body = json!({"model": "default", "messages": [{"role": "user", "content": "hi"}]});
    let reply = post(&app, "/v1/chat/completions", &body).await;
    assert_eq!(
        reply.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        reply.text
    );
    assert_eq!(reply.json()["error"]["code"], "rate_limit_exceeded");

    // Both long requests leave; once their slots are free the server serves again.
    assert!(busy_rx.recv().await.is_some());
    drop(busy_rx);
    drop(queued_rx);
    let s = state.clone();
    tokio::task::spawn_blocking(move || {
        wait_until("slots freed", || {
            s.scheduler.queued() == 0 && s.metrics.active.get() == 0
        })
    })
    .await
    .unwrap();
    let reply = post(&app, "/v1/chat/completions", &body).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
}
