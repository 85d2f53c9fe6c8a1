//! Every endpoint and error path, in process (no sockets), against the default model.

mod common;

use std::time::Duration;

use axum::http::StatusCode;
use common::{app, app_with, model, post, send};
use llada_server::ServerConfig;
use serde_json::{json, Value};

fn chat(content: &str) -> Value {
    json!({"model": "default", "messages": [{"role": "user", "content": content}]})
}

/// The engine's own answer for a chat prompt with the server's defaults.
fn engine_answer(content: &str) -> String {
    let loaded = model();
    let tok = loaded.tokenizer.as_ref().unwrap();
    let prompt = tok
        .encode_chat(&[llada::Message::new("user", content)], true)
        .unwrap();
    let mut params = loaded.default_params();
    params.eos_early_stop = true;
    params.gen_length = 256;
    let out = llada::generate(&loaded.model, &prompt, &params, &mut |_| {}).unwrap();
    tok.decode(&out.ids, true).unwrap()
}

#[tokio::test]
async fn health_models_and_metrics() {
    let app = app();
    let health = send(&app, "GET", "/health", None, None).await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.json()["status"], "ok");

    let models = send(&app, "GET", "/v1/models", None, None).await.json();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "default");
    assert_eq!(models["data"][0]["context_length"], 512);

    post(&app, "/v1/chat/completions", &chat("Reverse: 1 2 3")).await;
    let metrics = send(&app, "GET", "/metrics", None, None).await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert!(metrics
        .content_type
        .starts_with("application/openmetrics-text"));
    for name in [
        "llada_http_requests_total{endpoint=\"/v1/chat/completions\",status=\"200\"} 1",
        "llada_generations_total{outcome=\"stop\"} 1",
        "llada_forwards_total",
        "llada_tokens_per_forward",
        "llada_queue_depth 0",
        "llada_time_to_first_token_seconds_bucket",
        "llada_generation_seconds_count 1",
    ] {
        assert!(
            metrics.text.contains(name),
            "{name} missing from\n{}",
            metrics.text
        );
    }
}

#[tokio::test]
async fn chat_completion_is_the_engines_answer_with_usage() {
    let app = app();
    let reply = post(&app, "/v1/chat/completions", &chat("Reverse: 1 2 3")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let body = reply.json();
    assert_eq!(body["object"], "chat.completion");
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    let choice = &body["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(
        choice["message"]["content"],
        engine_answer("Reverse: 1 2 3")
    );
    assert_eq!(choice["finish_reason"], "stop");
    let usage = &body["usage"];
    let (p, c) = (
        usage["prompt_tokens"].as_u64().unwrap(),
        usage["completion_tokens"].as_u64().unwrap(),
    );
    assert!(p > 0 && c > 0);
    assert_eq!(usage["total_tokens"].as_u64().unwrap(), p + c);
    assert!(usage["forwards"].as_u64().unwrap() >= 1);

    // Without early stop the block is decoded to its end: same answer, more passes.
    let mut body = chat("Reverse: 1 2 3");
    body["eos_early_stop"] = json!(false);
    let full = post(&app, "/v1/chat/completions", &body).await.json();
    assert_eq!(full["choices"][0]["message"], choice["message"]);
    assert!(full["usage"]["forwards"].as_u64() >= usage["forwards"].as_u64());
}

#[tokio::test]
async fn streaming_sends_the_same_text_in_chunks_then_done() {
    let app = app();
    let mut body = chat("Sort: 9 4 7 1");
    let whole = post(&app, "/v1/chat/completions", &body).await.json();
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let reply = post(&app, "/v1/chat/completions", &body).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.content_type.starts_with("text/event-stream"));
    let events = reply.events();
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(
        text,
        whole["choices"][0]["message"]["content"].as_str().unwrap()
    );
    let last_choice = &chunks[chunks.len() - 2]["choices"][0];
    assert_eq!(last_choice["finish_reason"], "stop");
    let usage = &chunks[chunks.len() - 1];
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"], whole["usage"]);
}

#[tokio::test]
async fn completions_take_text_or_token_ids() {
    let app = app();
    let loaded = model();
    let prompt = "<role>HUMAN</role>Copy: a b c<|role_end|><role>ASSISTANT</role>";
    let ids = loaded.tokenizer.as_ref().unwrap().encode(prompt).unwrap();
    let by_text = post(
        &app,
        "/v1/completions",
        &json!({"model": "default", "prompt": prompt}),
    )
    .await;
    assert_eq!(by_text.status, StatusCode::OK, "{}", by_text.text);
    let by_ids = post(
        &app,
        "/v1/completions",
        &json!({"model": "default", "prompt": ids}),
    )
    .await;
    let (a, b) = (by_text.json(), by_ids.json());
    assert_eq!(a["object"], "text_completion");
    assert_eq!(a["choices"][0]["text"], b["choices"][0]["text"]);
    assert!(!a["choices"][0]["text"].as_str().unwrap().is_empty());

    let mut stream = json!({"model": "default", "prompt": prompt, "stream": true});
    let events = post(&app, "/v1/completions", &stream).await.events();
    let text: String = events[..events.len() - 1]
        .iter()
        .map(|e| {
            serde_json::from_str::<Value>(e).unwrap()["choices"][0]["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(text, a["choices"][0]["text"].as_str().unwrap());
    stream["max_tokens"] = json!(1);
    stream["stream"] = json!(false);
    let short = post(&app, "/v1/completions", &stream).await.json();
    assert_eq!(short["usage"]["completion_tokens"], 1);
    assert_eq!(short["choices"][0]["finish_reason"], "length");
}

#[tokio::test]
async fn stop_sequences_cut_the_text_and_end_the_answer() {
    let app = app();
    let full = post(&app, "/v1/chat/completions", &chat("Reverse: 1 2 3 4 5"))
        .await
        .json();
    let full = full["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    let cut = full.find(' ').expect("a multi-word answer");
    let stop = full[cut..cut + 2].to_string();
    for stream in [false, true] {
        let mut body = chat("Reverse: 1 2 3 4 5");
        body["stop"] = json!([stop, "never-appears"]);
        body["stream"] = json!(stream);
        let reply = post(&app, "/v1/chat/completions", &body).await;
        let text = if stream {
            let events = reply.events();
            events[..events.len() - 1]
                .iter()
                .filter_map(|e| {
                    serde_json::from_str::<Value>(e).unwrap()["choices"][0]["delta"]["content"]
                        .as_str()
                        .map(str::to_string)
                })
                .collect::<String>()
        } else {
            reply.json()["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_string()
        };
        assert_eq!(text, full[..cut], "stream: {stream}");
    }
}

#[tokio::test]
async fn diffusion_settings_are_extra_body_fields() {
    let app = app();
    let mut body = chat("Copy: x y z");
    body["block_length"] = json!(1);
    body["steps"] = json!(1);
    body["threshold"] = json!(0.5);
    body["decoder"] = json!("threshold");
    body["temperature"] = json!(0.7);
    body["top_p"] = json!(0.9);
    body["top_k"] = json!(20);
    body["seed"] = json!(7);
    body["user"] = json!("someone");
    let a = post(&app, "/v1/chat/completions", &body).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let a = a.json();
    // Block length 1: one token per forward pass.
    assert_eq!(a["usage"]["forwards"], a["usage"]["completion_tokens"]);
    let b = post(&app, "/v1/chat/completions", &body).await.json();
    assert_eq!(
        a["choices"], b["choices"],
        "the same seed gives the same answer"
    );
    // The approximate block cache, per request.
    let mut dual = chat("Copy: x y z");
    dual["block_cache"] = json!("dual");
    dual["block_cache_refresh"] = json!(2);
    let d = post(&app, "/v1/chat/completions", &dual).await;
    assert_eq!(d.status, StatusCode::OK, "{}", d.text);
}

#[tokio::test]
async fn bad_requests_get_openai_errors_and_the_server_keeps_serving() {
    let app = app();
    let long_prompt = "word ".repeat(600);
    let cases: Vec<(&str, String, StatusCode, Option<&str>)> = vec![
        (
            "/v1/chat/completions",
            "{\"model\": ".into(),
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            "/v1/chat/completions",
            "[1, 2]".into(),
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            "/v1/chat/completions",
            json!({"model": "default"}).to_string(),
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            "/v1/chat/completions",
            json!({"messages": []}).to_string(),
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            "/v1/chat/completions",
            json!({"model": "default", "messages": []}).to_string(),
            StatusCode::BAD_REQUEST,
            Some("messages"),
        ),
        (
            "/v1/chat/completions",
            json!({"model": "default", "messages": "hi"}).to_string(),
            StatusCode::BAD_REQUEST,
            Some("messages"),
        ),
        (
            "/v1/chat/completions",
            json!({"model": "default", "messages": [{"role": "user", "content": 5}]}).to_string(),
            StatusCode::BAD_REQUEST,
            Some("messages[0].content"),
        ),
        (
            "/v1/chat/completions",
            json!({"model": "default", "messages": [{"role": "tool", "content": "x"}]}).to_string(),
            StatusCode::BAD_REQUEST,
            Some("messages[0].role"),
        ),
        (
            "/v1/chat/completions",
            json!({"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]}).to_string(),
            StatusCode::NOT_FOUND,
            Some("model"),
        ),
        (
            "/v1/chat/completions",
            with(chat(&long_prompt), "max_tokens", json!(16)),
            StatusCode::BAD_REQUEST,
            Some("max_tokens"),
        ),
        (
            "/v1/chat/completions",
            with(chat("x"), "max_tokens", json!(1000)),
            StatusCode::BAD_REQUEST,
            Some("max_tokens"),
        ),
        (
            "/v1/chat/completions",
            with(chat("x"), "max_tokens", json!(0)),
            StatusCode::BAD_REQUEST,
            Some("max_tokens"),
        ),
        (
            "/v1/chat/completions",
            with(chat("x"), "max_tokens", json!(-3)),
            StatusCode::BAD_REQUEST,
            Some("max_tokens"),
        ),
        (
            "/v1/chat/completions",
            with(chat("x"), "temperature", json!("hot")),
            StatusCode::BAD_REQUEST,
            Some("temperature"),
        ),
        (
            "/v1/chat/completions",
            with(chat("x"), "temperature", json!(3.0)),
            StatusCode::BAD_REQUEST,
            Some("temperature"),
        ),
        (
            "/v1/chat/completions",
            with(chat("x"), "top_p", json!(0)),
            StatusCode::BAD_REQUEST,
            Some("top_p"),
        ),
        (
            "/v1/chat/completions",
            with(chat("x"), "threshold", json!(1.5)),
            StatusCode::BAD_REQUEST,
            Some("threshold"),
        ),
        (
            "/v1/chat/completions",
            with(chat("x"), "block_length", json!(0)),
            StatusCode::BAD_REQUEST,
            Some("block_length"),
        ),
        (
            "/v1/chat/completions",
            with(chat("x"), "steps", json!(0)),
            StatusCode::BAD_REQUEST,
            Some("steps"),
        ),
        (
            "/v1/chat/completions",
            with(chat("x"), "n", json!(2)),
            StatusCode::BAD_REQUEST,
            Some("n"),
        ),
        (
            "/v1/chat/completions",
            with(chat("x"), "decoder", json!("magic")),
            StatusCode::BAD_REQUEST,
            Some("decoder"),
        ),
        (
            "/v1/chat/completions",
            with(with_value(chat("x"), "decoder", json!("joint")), "editing_threshold", json!(1.5)),
            StatusCode::BAD_REQUEST,
            Some("editing_threshold"),
        ),
        (
            "/v1/chat/completions",
            with(chat("x"), "editing_threshold", json!(0.3)),
            StatusCode::BAD_REQUEST,
            Some("editing_threshold"),
        ),
        (
            "/v1/chat/completions",
            with(with_value(chat("x"), "decoder", json!("credit")), "credit_beta", json!(2.0)),
            StatusCode::BAD_REQUEST,
            Some("credit_beta"),
        ),
        (
            "/v1/chat/completions",
            with(with_value(chat("x"), "decoder", json!("hierarchy")), "low_threshold", json!(-0.1)),
            StatusCode::BAD_REQUEST,
            Some("low_threshold"),
        ),
        (
            "/v1/chat/completions",
            with(with_value(chat("x"), "decoder", json!("joint")), "max_post_steps", json!(-1)),
            StatusCode::BAD_REQUEST,
            Some("max_post_steps"),
        ),
        (
            "/v1/chat/completions",
            with(chat("x"), "stop", json!(["a", "b", "c", "d", "e"])),
            StatusCode::BAD_REQUEST,
            Some("stop"),
        ),
        (
            "/v1/chat/completions",
            with(chat("x"), "stream", json!("yes")),
            StatusCode::BAD_REQUEST,
            Some("stream"),
        ),
        (
            "/v1/completions",
            json!({"model": "default", "prompt": ""}).to_string(),
            StatusCode::BAD_REQUEST,
            Some("prompt"),
        ),
        (
            "/v1/completions",
            json!({"model": "default", "prompt": ["a", "b"]}).to_string(),
            StatusCode::BAD_REQUEST,
            Some("prompt"),
        ),
        (
            "/v1/completions",
            json!({"model": "default", "prompt": [5, 99999]}).to_string(),
            StatusCode::BAD_REQUEST,
            None,
        ),
        ("/v1/completions", json!({"model": "default", "prompt": [5, 1, 6]}).to_string(), StatusCode::BAD_REQUEST, Some("prompt")),
        ("/v1/chat/completions", chat("fill <|mask|> in").to_string(), StatusCode::BAD_REQUEST, Some("prompt")),
        ("/v1/chat/completions", with(chat("x"), "block_length", json!(300)), StatusCode::BAD_REQUEST, Some("block_length")),
        ("/v1/chat/completions", with(chat("x"), "gen_length", json!(8)), StatusCode::BAD_REQUEST, Some("gen_length")),
        ("/v1/chat/completions", with(chat("x"), "block_cache", json!("fast")), StatusCode::BAD_REQUEST, Some("block_cache")),
        ("/v1/chat/completions", with(chat("x"), "block_cache_refresh", json!(2)), StatusCode::BAD_REQUEST, Some("block_cache_refresh")),
        ("/v1/chat/completions", with(chat("x"), "logprobs", json!(true)), StatusCode::BAD_REQUEST, Some("logprobs")),
        ("/v1/chat/completions", with(chat("x"), "tools", json!([{"type": "function"}])), StatusCode::BAD_REQUEST, Some("tools")),
        ("/v1/chat/completions", with(chat("x"), "response_format", json!({"type": "json_object"})), StatusCode::BAD_REQUEST, Some("response_format")),
        ("/v1/chat/completions", json!({"model": "default", "messages": [{"role": "user", "content": [{"type": "text"}]}]}).to_string(), StatusCode::BAD_REQUEST, Some("messages[0].content")),
        (
            "/v1/completions",
            json!({"model": "default", "prompt": "x", "echo": true}).to_string(),
            StatusCode::BAD_REQUEST,
            Some("echo"),
        ),
    ];
    for (path, body, status, param) in cases {
        let reply = send(&app, "POST", path, Some(&body), None).await;
        assert_eq!(reply.status, status, "{body} -> {}", reply.text);
        let error = &reply.json()["error"];
        assert!(!error["message"].as_str().unwrap().is_empty(), "{body}");
        assert!(error["type"].is_string(), "{body}");
        assert_eq!(error["param"].as_str(), param, "{body} -> {}", reply.text);
    }
    let overflow = post(
        &app,
        "/v1/chat/completions",
        &with_value(chat(&long_prompt), "max_tokens", json!(16)),
    )
    .await;
    assert_eq!(overflow.json()["error"]["code"], "context_length_exceeded");

    let huge = format!(
        "{{\"model\": \"default\", \"prompt\": \"{}\"}}",
        "a".repeat(2 << 20)
    );
    let reply = send(&app, "POST", "/v1/completions", Some(&huge), None).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("limit"));

    let reply = send(&app, "GET", "/v1/nothing", None, None).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(reply.json()["error"]["message"].is_string());
    let reply = send(&app, "GET", "/v1/chat/completions", None, None).await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(reply.json()["error"]["message"].is_string());

    // Still serving; nulls and the neutral values of refused options are accepted.
    let mut body = chat("Reverse: 1 2 3");
    for key in [
        "stream",
        "stop",
        "seed",
        "logprobs",
        "tools",
        "response_format",
        "n",
        "user",
    ] {
        body[key] = Value::Null;
    }
    body["stream_options"] = json!({"include_usage": null});
    let ok = post(&app, "/v1/chat/completions", &body).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
    body["logprobs"] = json!(false);
    body["tools"] = json!([]);
    body["response_format"] = json!({"type": "text"});
    let ok = post(&app, "/v1/chat/completions", &body).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
}

#[test]
fn invalid_server_defaults_are_refused_at_start() {
    let mut defaults = model().default_params();
    defaults.block_length = 0;
    let err =
        llada_server::AppState::with_defaults(ServerConfig::new("default"), model(), defaults)
            .err()
            .expect("block length 0 is refused");
    assert!(err.to_string().contains("block_length"), "{err}");
    let mut defaults = model().default_params();
    defaults.block_length = 512;
    assert!(
        llada_server::AppState::with_defaults(ServerConfig::new("default"), model(), defaults)
            .is_err()
    );
}

fn with_value(mut body: Value, key: &str, value: Value) -> Value {
    body[key] = value;
    body
}

fn with(body: Value, key: &str, value: Value) -> String {
    with_value(body, key, value).to_string()
}

#[tokio::test]
async fn every_decoder_answers_and_joint_reports_its_edits() {
    let app = app();
    for decoder in ["threshold", "joint", "credit", "hierarchy"] {
        let mut body = chat("Reverse: 1 2 3");
        body["decoder"] = json!(decoder);
        if decoder == "joint" {
            body["editing_threshold"] = json!(0.3);
            body["max_post_steps"] = json!(4);
        }
        let reply = post(&app, "/v1/chat/completions", &body).await;
        assert_eq!(reply.status, StatusCode::OK, "{decoder}: {}", reply.text);
        let v = reply.json();
        assert!(v["usage"]["edits"].is_u64(), "{decoder}: {v}");
        assert!(!v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .trim()
            .is_empty());
    }
}

#[tokio::test]
async fn an_api_key_guards_everything_but_health() {
    let mut config = ServerConfig::new("default");
    config.api_key = Some("sesame".into());
    let (app, _) = app_with(config);
    let body = chat("Reverse: 1 2").to_string();
    for key in [None, Some("wrong"), Some("sesam"), Some("sesame!")] {
        let reply = send(&app, "POST", "/v1/chat/completions", Some(&body), key).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{key:?}");
        assert_eq!(reply.json()["error"]["type"], "authentication_error");
        let models = send(&app, "GET", "/v1/models", None, key).await;
        assert_eq!(models.status, StatusCode::UNAUTHORIZED);
    }
    let reply = send(
        &app,
        "POST",
        "/v1/chat/completions",
        Some(&body),
        Some("sesame"),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        send(&app, "GET", "/health", None, None).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_request_past_its_timeout_gets_504() {
    let mut config = ServerConfig::new("default");
    config.request_timeout = Duration::ZERO;
    let (app, state) = app_with(config);
    let reply = post(&app, "/v1/chat/completions", &chat("Reverse: 1 2 3")).await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT, "{}", reply.text);
    assert_eq!(reply.json()["error"]["code"], "request_timeout");
    let mut body = chat("Reverse: 1 2 3");
    body["stream"] = json!(true);
    let events = post(&app, "/v1/chat/completions", &body).await.events();
    let error: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(error["error"]["code"], "request_timeout");
    wait_for_idle(&state).await;
    let metrics = state.metrics.render();
    assert!(
        metrics.contains("llada_generations_total{outcome=\"timeout\"} 2"),
        "{metrics}"
    );
}

async fn wait_for_idle(state: &llada_server::AppState) {
    for _ in 0..1000 {
        if state.metrics.active.get() == 0 && state.scheduler.queued() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("requests still hold slots");
}
