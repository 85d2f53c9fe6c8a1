//! Ollama's API, in process, against the default model: answers (whole and as NDJSON)
//! equal to the OpenAI routes', Ollama's timing fields, the model endpoints, and errors
//! in Ollama's shape with the right status.

mod common;

use std::time::Duration;

use axum::http::StatusCode;
use common::{app, app_with, post, send, Reply};
use llada_server::ServerConfig;
use serde_json::{json, Value};

fn chat(content: &str) -> Value {
    json!({
        "model": "default",
        "messages": [{"role": "user", "content": content}],
        "stream": false,
    })
}

fn with(mut body: Value, key: &str, value: Value) -> Value {
    body[key] = value;
    body
}

/// The NDJSON lines of a streamed reply.
fn ndjson(reply: &Reply) -> Vec<Value> {
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.content_type, "application/x-ndjson");
    assert!(reply.text.ends_with('\n'), "{}", reply.text);
    reply
        .text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Checks a last body's Ollama fields; returns its (prompt, answer) token counts.
fn check_done(body: &Value, reason: &str) -> (u64, u64) {
    assert_eq!(body["done"], true, "{body}");
    assert_eq!(body["done_reason"], reason, "{body}");
    let created = body["created_at"].as_str().unwrap();
    assert!(
        created.len() == 30 && created.as_bytes()[10] == b'T' && created.ends_with('Z'),
        "{created}"
    );
    let ns = |k: &str| body[k].as_u64().unwrap_or_else(|| panic!("{k} in {body}"));
    let total = ns("total_duration");
    assert!(total > 0);
    // The wait for a slot and the answer make up the whole; the prompt's evaluation is
    // the answer's first pass.
    assert_eq!(ns("load_duration") + ns("eval_duration"), total, "{body}");
    let prompt = ns("prompt_eval_duration");
    assert!(0 < prompt && prompt <= ns("eval_duration"), "{body}");
    (ns("prompt_eval_count"), ns("eval_count"))
}

#[tokio::test]
async fn chat_and_generate_answer_as_the_openai_routes_do() {
    let app = app();
    let mut openai = chat("Reverse: 1 2 3");
    openai["stream"] = json!(false);
    let openai = post(&app, "/v1/chat/completions", &openai).await.json();
    let answer = openai["choices"][0]["message"]["content"].as_str().unwrap();

    let reply = post(&app, "/api/chat", &chat("Reverse: 1 2 3")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert!(reply.content_type.starts_with("application/json"));
    let body = reply.json();
    assert_eq!(body["model"], "default");
    assert_eq!(body["message"]["role"], "assistant");
    assert_eq!(body["message"]["content"], answer);
    let counts = check_done(&body, "stop");
    assert_eq!(counts.0, openai["usage"]["prompt_tokens"].as_u64().unwrap());
    assert_eq!(
        counts.1,
        openai["usage"]["completion_tokens"].as_u64().unwrap()
    );

    // /api/generate puts the prompt in the chat template as a user message.
    let generate = json!({"model": "default", "prompt": "Reverse: 1 2 3", "stream": false});
    let body = post(&app, "/api/generate", &generate).await.json();
    assert_eq!(body["response"], answer, "{body}");
    assert_eq!(check_done(&body, "stop"), counts);
    let system = "You are a careful assistant that reverses lists of numbers exactly as asked.";
    let system = with(generate.clone(), "system", json!(system));
    let body = post(&app, "/api/generate", &system).await.json();
    assert!(check_done(&body, "stop").0 > counts.0, "{body}");

    // `raw`: the prompt as it is, as /v1/completions takes it.
    let raw = "<role>HUMAN</role>Copy: a b c<|role_end|><role>ASSISTANT</role>";
    let completion = json!({"model": "default", "prompt": raw});
    let completion = post(&app, "/v1/completions", &completion).await.json();
    let generate = json!({"model": "default", "prompt": raw, "raw": true, "stream": false});
    let body = post(&app, "/api/generate", &generate).await.json();
    assert_eq!(body["response"], completion["choices"][0]["text"], "{body}");

    // num_predict is the length; a short one ends the answer with "length".
    let short = with(chat("Reverse: 1 2 3"), "options", json!({"num_predict": 1}));
    let body = post(&app, "/api/chat", &short).await.json();
    assert_eq!(check_done(&body, "length").1, 1);

    let metrics = send(&app, "GET", "/metrics", None, None).await.text;
    for line in [
        "llada_http_requests_total{endpoint=\"/api/chat\",status=\"200\"} 2",
        "llada_http_requests_total{endpoint=\"/api/generate\",status=\"200\"} 3",
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }
}

#[tokio::test]
async fn streams_are_ndjson_ending_with_the_counts() {
    let app = app();
    let whole = post(&app, "/api/chat", &chat("Sort: 9 4 7 1")).await.json();
    // Ollama streams by default.
    let mut body = chat("Sort: 9 4 7 1");
    body.as_object_mut().unwrap().remove("stream");
    let lines = ndjson(&post(&app, "/api/chat", &body).await);
    let (last, pieces) = lines.split_last().unwrap();
    assert!(!pieces.is_empty());
    assert!(pieces
        .iter()
        .all(|l| l["done"] == false && l["message"]["role"] == "assistant"));
    let text: String = pieces
        .iter()
        .map(|l| l["message"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(text, whole["message"]["content"].as_str().unwrap());
    assert_eq!(last["message"]["content"], "");
    assert_eq!(check_done(last, "stop"), check_done(&whole, "stop"));

    let generate = json!({"model": "default", "prompt": "Sort: 9 4 7 1", "stream": true});
    let lines = ndjson(&post(&app, "/api/generate", &generate).await);
    let (last, pieces) = lines.split_last().unwrap();
    let text: String = pieces
        .iter()
        .map(|l| l["response"].as_str().unwrap())
        .collect();
    assert_eq!(text, whole["message"]["content"].as_str().unwrap());
    assert_eq!(last["response"], "");
    check_done(last, "stop");
}

#[tokio::test]
async fn open_webui_style_requests_and_no_effect_options_are_accepted() {
    let app = app();
    let body = json!({
        "model": "default:latest",
        "messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "Copy: x y z"},
            {"role": "assistant", "content": "x y z"},
            {"role": "user", "content": "Copy: a b", "images": []},
        ],
        "stream": true,
        "keep_alive": "5m",
        "format": "",
        "think": false,
        "tools": [],
        "options": {
            "temperature": 0.7, "top_p": 0.9, "top_k": 20, "seed": 7, "stop": ["never"],
            "num_ctx": 2048, "num_thread": 4, "repeat_penalty": 1.0, "min_p": 0.0,
            "block_length": 16, "steps": 16, "decoder": "threshold", "threshold": 0.9,
            "mirostat": 0, "num_predict": -1,
        },
    });
    let a = ndjson(&post(&app, "/api/chat", &body).await);
    assert_eq!(a.last().unwrap()["model"], "default:latest");
    check_done(a.last().unwrap(), "stop");
    let b = ndjson(&post(&app, "/api/chat", &body).await);
    assert_eq!(text(&a), text(&b), "the same seed gives the same answer");
    // The options without effect changed nothing.
    let mut plain = body.clone();
    for key in [
        "num_ctx",
        "num_thread",
        "repeat_penalty",
        "min_p",
        "mirostat",
        "num_predict",
    ] {
        plain["options"].as_object_mut().unwrap().remove(key);
    }
    plain["options"]["seed"] = json!(7);
    assert_eq!(
        text(&ndjson(&post(&app, "/api/chat", &plain).await)),
        text(&a)
    );
    // Ollama's seed -1 is a random seed, as without one.
    plain["options"]["seed"] = json!(-1);
    check_done(
        ndjson(&post(&app, "/api/chat", &plain).await)
            .last()
            .unwrap(),
        "stop",
    );
}

/// A stream's text.
fn text(lines: &[Value]) -> String {
    lines
        .iter()
        .map(|l| l["message"]["content"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn an_empty_request_loads_the_model() {
    let app = app();
    for (path, body) in [
        ("/api/chat", json!({"model": "default", "messages": []})),
        ("/api/chat", json!({"model": "default"})),
        ("/api/generate", json!({"model": "default"})),
        (
            "/api/generate",
            json!({"model": "default", "prompt": "", "stream": true}),
        ),
    ] {
        let reply = post(&app, path, &body).await;
        assert_eq!(reply.status, StatusCode::OK, "{body}: {}", reply.text);
        let reply = reply.json();
        assert_eq!(reply["done"], true, "{reply}");
        assert_eq!(reply["done_reason"], "load", "{reply}");
    }
}

#[tokio::test]
async fn model_endpoints_describe_the_one_model() {
    let app = app();
    let root = send(&app, "GET", "/", None, None).await;
    assert_eq!(
        (root.status, root.text.as_str()),
        (StatusCode::OK, "Ollama is running")
    );
    assert_eq!(
        send(&app, "HEAD", "/", None, None).await.status,
        StatusCode::OK
    );
    let version = send(&app, "GET", "/api/version", None, None).await.json();
    assert_eq!(version, json!({"version": env!("CARGO_PKG_VERSION")}));

    let tags = send(&app, "GET", "/api/tags", None, None).await.json();
    let models = tags["models"].as_array().unwrap();
    assert_eq!(models.len(), 1, "{tags}");
    let model = &models[0];
    assert_eq!(
        (&model["name"], &model["model"]),
        (&json!("default"), &json!("default"))
    );
    assert!(model["size"].as_u64().unwrap() > 1_000_000, "{model}");
    let digest = model["digest"].as_str().unwrap();
    assert!(
        digest.len() == 64 && digest.chars().all(|c| c.is_ascii_hexdigit()),
        "{digest}"
    );
    assert!(model["modified_at"].as_str().unwrap().ends_with('Z'));
    let details = &model["details"];
    assert_eq!(details["format"], "safetensors");
    assert_eq!(details["family"], "llada2");
    assert_eq!(details["families"], json!(["llada2"]));
    assert!(
        details["parameter_size"].as_str().unwrap().ends_with('M'),
        "{details}"
    );
    assert!(details["quantization_level"].is_string());

    let ps = send(&app, "GET", "/api/ps", None, None).await.json();
    let loaded = &ps["models"][0];
    assert_eq!(loaded["name"], "default");
    assert_eq!(loaded["digest"], model["digest"]);
    assert_eq!(loaded["size_vram"], 0, "a CPU model");
    assert_eq!(loaded["context_length"], 512);
    let year: u32 = loaded["expires_at"].as_str().unwrap()[..4].parse().unwrap();
    assert!(year > 2100, "{loaded}");

    for body in [
        json!({"model": "default"}),
        json!({"name": "default:latest"}),
    ] {
        let reply = post(&app, "/api/show", &body).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        let show = reply.json();
        assert_eq!(show["capabilities"], json!(["completion"]));
        assert_eq!(show["details"], *details);
        assert!(
            show["template"].as_str().unwrap().contains("<role>"),
            "{show}"
        );
        let info = &show["model_info"];
        assert_eq!(info["general.architecture"], "llada2");
        assert_eq!(info["llada2.block_count"], 4);
        assert_eq!(info["llada2.context_length"], 512);
        assert_eq!(info["llada2.expert_count"], 8);
        assert!(info["general.parameter_count"].as_u64().unwrap() > 0);
        let parameters = show["parameters"].as_str().unwrap();
        assert!(parameters.contains("block_length 32"), "{parameters}");
        assert!(parameters.contains("decoder threshold"), "{parameters}");
        let modelfile = show["modelfile"].as_str().unwrap();
        assert!(
            modelfile.contains("PARAMETER block_length 32"),
            "{modelfile}"
        );
    }
}

#[tokio::test]
async fn bad_requests_get_ollama_errors_and_the_server_keeps_serving() {
    let app = app();
    let gen = |extra: Value| {
        let mut body = json!({"model": "default", "prompt": "x", "stream": false});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body.to_string()
    };
    let options = |o: Value| with(chat("x"), "options", o).to_string();
    let long = "word ".repeat(600);
    let bad = StatusCode::BAD_REQUEST;
    let cases: Vec<(&str, String, StatusCode, &str)> = vec![
        ("/api/chat", "{\"model\": ".into(), bad, "not valid JSON"),
        ("/api/chat", "[1]".into(), bad, "JSON object"),
        ("/api/chat", json!({"messages": []}).to_string(), bad, "model is required"),
        ("/api/generate", json!({"model": "", "prompt": "x"}).to_string(), bad, "model is required"),
        ("/api/chat", with(chat("x"), "model", json!("llama3")).to_string(), StatusCode::NOT_FOUND, "model 'llama3' not found"),
        ("/api/generate", gen(json!({"model": "default:7b"})), StatusCode::NOT_FOUND, "model 'default:7b' not found"),
        ("/api/show", json!({"model": "llama3"}).to_string(), StatusCode::NOT_FOUND, "model 'llama3' not found"),
        ("/api/chat", options(json!({"num_predict": -3})), bad, "options.num_predict"),
        ("/api/chat", options(json!({"num_predict": 0})), bad, "options.num_predict"),
        ("/api/chat", options(json!({"num_predict": 1000})), bad, "options.num_predict"),
        ("/api/chat", options(json!({"temperature": 5})), bad, "temperature"),
        ("/api/chat", options(json!({"temperature": "hot"})), bad, "options.temperature"),
        ("/api/chat", options(json!({"top_p": 0})), bad, "top_p"),
        ("/api/chat", options(json!({"block_length": 0})), bad, "block_length"),
        ("/api/chat", options(json!({"decoder": "magic"})), bad, "decoder"),
        ("/api/chat", options(json!({"stop": 5})), bad, "options.stop"),
        ("/api/chat", options(json!({"repeat_penalty": 1.3})), bad, "options.repeat_penalty"),
        ("/api/chat", options(json!({"treshold": 0.9})), bad, "unknown option `treshold`"),
        ("/api/chat", options(json!({"gen_length": 8})), bad, "options.num_predict"),
        ("/api/chat", with(chat("x"), "options", json!([1])).to_string(), bad, "options"),
        ("/api/chat", with(chat("x"), "format", json!("json")).to_string(), bad, "`format` is not supported"),
        ("/api/chat", with(chat("x"), "format", json!({"type": "object"})).to_string(), bad, "`format`"),
        ("/api/chat", with(chat("x"), "tools", json!([{"type": "function"}])).to_string(), bad, "`tools`"),
        ("/api/chat", with(chat("x"), "think", json!(true)).to_string(), bad, "`think`"),
        ("/api/chat", with(chat("x"), "stream", json!("yes")).to_string(), bad, "stream"),
        ("/api/chat", json!({"model": "default", "messages": [{"role": "user", "content": "x", "images": ["aGk="]}]}).to_string(), bad, "messages[0].images"),
        ("/api/chat", json!({"model": "default", "messages": [{"role": "tool", "content": "x"}]}).to_string(), bad, "role `tool`"),
        ("/api/chat", json!({"model": "default", "messages": [{"content": "x"}]}).to_string(), bad, "messages[0]"),
        ("/api/chat", chat(&long).to_string(), bad, "context"),
        ("/api/generate", gen(json!({"images": ["aGk="]})), bad, "`images`"),
        ("/api/generate", gen(json!({"template": "{{ .Prompt }}"})), bad, "`template`"),
        ("/api/generate", gen(json!({"suffix": "end"})), bad, "`suffix`"),
        ("/api/generate", gen(json!({"context": [1, 2]})), bad, "`context`"),
        ("/api/generate", gen(json!({"steps": 4})), bad, "options.steps"),
        ("/api/generate", gen(json!({"raw": true, "system": "be brief"})), bad, "`system`"),
        ("/api/generate", gen(json!({"prompt": "fill <|mask|> in"})), bad, "mask token"),
    ];
    for (path, body, status, words) in cases {
        let reply = send(&app, "POST", path, Some(&body), None).await;
        assert_eq!(reply.status, status, "{body} -> {}", reply.text);
        let error = reply.json();
        let message = error["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{body} -> {error}"));
        assert!(message.contains(words), "{body} -> {message}");
        assert_eq!(error.as_object().unwrap().len(), 1, "{error}");
    }

    // Routing's own errors get Ollama's shape on its paths, OpenAI's elsewhere.
    let reply = send(&app, "GET", "/api/chat", None, None).await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(reply.json()["error"].is_string(), "{}", reply.text);
    let reply = send(&app, "POST", "/api/embed", Some("{}"), None).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(reply.json()["error"].is_string(), "{}", reply.text);
    let reply = send(&app, "GET", "/v1/nothing", None, None).await;
    assert!(
        reply.json()["error"]["message"].is_string(),
        "{}",
        reply.text
    );
    let huge = format!(
        "{{\"model\": \"default\", \"prompt\": \"{}\"}}",
        "a".repeat(2 << 20)
    );
    let reply = send(&app, "POST", "/api/generate", Some(&huge), None).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(reply.json()["error"].as_str().unwrap().contains("limit"));

    let ok = post(&app, "/api/chat", &chat("Reverse: 1 2 3")).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
}

#[tokio::test]
async fn an_api_key_guards_ollamas_paths_but_the_probe() {
    let mut config = ServerConfig::new("default");
    config.api_key = Some("sesame".into());
    let (app, _) = app_with(config);
    let body = chat("Reverse: 1 2").to_string();
    for key in [None, Some("wrong")] {
        let reply = send(&app, "POST", "/api/chat", Some(&body), key).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{key:?}");
        assert!(reply.json()["error"].as_str().unwrap().contains("API key"));
        let tags = send(&app, "GET", "/api/tags", None, key).await;
        assert_eq!(tags.status, StatusCode::UNAUTHORIZED);
    }
    let reply = send(&app, "POST", "/api/chat", Some(&body), Some("sesame")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(
        send(&app, "GET", "/", None, None).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_request_past_its_timeout_gets_504_or_an_error_line() {
    let mut config = ServerConfig::new("default");
    config.request_timeout = Duration::ZERO;
    let (app, _) = app_with(config);
    let reply = post(&app, "/api/chat", &chat("Reverse: 1 2 3")).await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT, "{}", reply.text);
    assert!(reply.json()["error"].as_str().unwrap().contains("timeout"));
    let stream = with(chat("Reverse: 1 2 3"), "stream", json!(true));
    let lines = ndjson(&post(&app, "/api/chat", &stream).await);
    let error = lines.last().unwrap();
    assert!(
        error["error"].as_str().unwrap().contains("timeout"),
        "{error}"
    );
}
