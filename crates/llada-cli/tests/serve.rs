//! `llada serve` over real sockets: the official OpenAI and Ollama Python clients and a
//! load test (scripts/load_test.py: 32 clients, random disconnects) against the default
//! model.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

const KEY: &str = "test-key";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A running server on a free port; killed on drop.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_llada"))
            .args(["serve", "--port", "0", "--api-key", KEY])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("llada serve starts");
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let url = loop {
            let line = lines
                .next()
                .expect("llada serve printed its address")
                .unwrap();
            if let Some(at) = line.find("http://") {
                let addr = line[at..].split_whitespace().next().unwrap();
                break addr.to_string();
            }
        };
        // Keep draining stderr so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self { child, url }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn python(args: &[&str]) -> std::process::Output {
    let out = Command::new("python3")
        .args(args)
        .output()
        .expect("python3 runs");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    out
}

/// Runs `tests/python/{script}` against a fresh server at its URL plus `path`; the
/// script prints "ok" last. Without its Python package it fails (ImportError), never
/// skips.
fn client_check(script: &str, path: &str) {
    let server = Server::start(&[]);
    let script = repo().join("crates/llada-cli/tests/python").join(script);
    let url = format!("{}{path}", server.url);
    let out = python(&[script.to_str().unwrap(), &url, KEY]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(out.status.success(), "{script:?} failed:\n{stdout}");
    assert!(stdout.trim_end().ends_with("ok"));
}

#[test]
#[ignore = "needs Python with the openai package; .ci/run runs it with --include-ignored"]
fn the_openai_python_client_works_against_the_server() {
    client_check("openai_client.py", "/v1");
}

#[test]
#[ignore = "needs Python with the ollama package; .ci/run runs it with --include-ignored"]
fn the_ollama_python_client_works_against_the_server() {
    client_check("ollama_client.py", "");
}

#[test]
fn load_test_with_disconnects_checks_every_response() {
    let server = Server::start(&["--max-batch", "8", "--max-queue", "64"]);
    let script = repo().join("scripts/load_test.py");
    let out = python(&[
        script.to_str().unwrap(),
        "--url",
        &server.url,
        "--api-key",
        KEY,
        "--clients",
        "32",
        "--requests",
        "200",
        "--disconnect",
        "0.15",
        "--json",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let result: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("load test printed no result ({e}):\n{stdout}"));
    println!("{}", serde_json::to_string_pretty(&result).unwrap());
    assert_eq!(result["failures"], serde_json::json!([]), "{result}");
    assert!(out.status.success());
    let checked = result["load_ok"].as_u64().unwrap();
    let dropped = result["load_disconnected"].as_u64().unwrap();
    assert_eq!(checked + dropped, 200);
    assert!(dropped > 0, "the mix must include disconnects");
    assert!(result["single_stream_tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(result["concurrent_tokens_per_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn serve_explains_what_keeps_it_from_starting() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_llada"))
            .arg("serve")
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(&["--model", "/nonexistent/model-dir"]);
    assert!(err.contains("/nonexistent/model-dir"), "{err}");
    let err = run(&["--host", "256.0.0.1", "--port", "0"]);
    assert!(err.contains("cannot listen on 256.0.0.1:0"), "{err}");
    let err = run(&["--block-length", "0", "--port", "0"]);
    assert!(err.contains("--block-length"), "{err}");
    let err = run(&["--max-batch", "0"]);
    assert!(err.contains("--max-batch"), "{err}");
}
