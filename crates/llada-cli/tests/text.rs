//! Text prompts, chat, the Hugging Face cache and quantized loading through the binary,
//! on a random-weight model that carries the small test tokenizer.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::llada;

fn tokenizer_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../llada/tests/data/tokenizer")
}

fn golden() -> PathBuf {
    common::fixture()
}

/// A random LLaDA2 model whose vocabulary is the test tokenizer's.
fn chat_model(dir: &Path) {
    let tok = llada::Tokenizer::from_dir(&tokenizer_dir()).unwrap();
    let vocab = tok.vocab_size();
    let config = serde_json::json!({
        "architectures": ["LLaDA2MoeModelLM"], "model_type": "llada2_moe",
        "vocab_size": vocab, "hidden_size": 32, "intermediate_size": 48,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 8, "num_experts": 4, "num_experts_per_tok": 2, "n_group": 2,
        "topk_group": 1, "moe_intermediate_size": 16, "num_shared_experts": 1,
        "first_k_dense_replace": 1, "max_position_embeddings": 512, "use_bias": false,
    });
    let mask = tok.mask_id().unwrap();
    let eos = tok.eos_id().unwrap();
    llada::synthetic::write_random_checkpoint(dir, &config, mask, eos, 3).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(tokenizer_dir().join(f), dir.join(f)).unwrap();
    }
}

#[test]
fn text_prompt_uses_the_chat_template_and_reports_text() {
    let tmp = tempfile::tempdir().unwrap();
    chat_model(tmp.path());
    let model = tmp.path().to_str().unwrap();
    let out = llada(
        &[
            "generate",
            "--model",
            model,
            "--prompt",
            "What is 12 plus 30?",
            "--system",
            "Be brief.",
            "--gen-length",
            "12",
            "--block-length",
            "4",
            "--steps",
            "4",
            "--json",
        ],
        &[],
        None,
    );
    let v = common::json(&out);
    let tok = llada::Tokenizer::from_dir(tmp.path()).unwrap();
    let messages = [
        llada::Message::new("system", "Be brief."),
        llada::Message::new("user", "What is 12 plus 30?"),
    ];
    let expected_prompt = tok.encode_chat(&messages, true).unwrap();
    assert_eq!(v["prompt_tokens"], expected_prompt.len());
    let ids: Vec<u32> = serde_json::from_value(v["output_ids"].clone()).unwrap();
    assert_eq!(v["text"].as_str().unwrap(), tok.decode(&ids, true).unwrap());

    // --raw skips the template: fewer prompt tokens.
    let raw = llada(
        &[
            "generate",
            "--model",
            model,
            "--prompt",
            "What is 12 plus 30?",
            "--raw",
            "--gen-length",
            "4",
            "--json",
        ],
        &[],
        None,
    );
    let v: serde_json::Value = serde_json::from_slice(&raw.stdout).unwrap();
    assert_eq!(
        v["prompt_tokens"],
        tok.encode("What is 12 plus 30?").unwrap().len()
    );
}

#[test]
fn chat_repl_keeps_history_and_takes_commands() {
    let tmp = tempfile::tempdir().unwrap();
    chat_model(tmp.path());
    let script = "/help\nhello there\n/set threshold 0.5\n/set nonsense 1\n/set block-cache-refresh 2\n/set block-cache dual\n/set block-cache-refresh 2\n/set block-cache fast\n/show\nand again\n/unmask on\nthird\n/reset\n/quit\n";
    let out = llada(
        &[
            "chat",
            "--model",
            tmp.path().to_str().unwrap(),
            "--gen-length",
            "8",
            "--block-length",
            "4",
            "--steps",
            "4",
        ],
        &[],
        Some(script),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(err.matches("tokens/forward]").count(), 3, "{err}");
    assert!(err.contains("threshold 0.5"), "{err}");
    assert!(err.contains("unknown setting \"nonsense\""), "{err}");
    assert!(
        err.contains("invalid block-cache-refresh: needs the dual block cache"),
        "{err}"
    );
    assert!(
        err.contains("block cache dual, refresh every 2 steps"),
        "{err}"
    );
    assert!(err.contains("unknown block cache \"fast\""), "{err}");
    assert!(err.contains("[block "), "unmasking display: {err}");
    assert!(err.contains("conversation reset"), "{err}");
}

#[test]
fn chat_without_tokenizer_fails_clearly() {
    let out = llada(
        &["chat", "--model", golden().to_str().unwrap()],
        &[],
        Some("hi\n"),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("tokenizer.json"));
}

#[test]
fn repo_ids_resolve_in_the_hf_cache() {
    let cache = tempfile::tempdir().unwrap();
    let root = cache.path().join("models--acme--llada2-tiny");
    let snap = root.join("snapshots/0123abcd");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(root.join("refs")).unwrap();
    std::fs::write(root.join("refs/main"), "0123abcd").unwrap();
    for f in ["config.json", "generation_config.json", "model.safetensors"] {
        std::fs::copy(golden().join(f), snap.join(f)).unwrap();
    }
    let env = [("HF_HUB_CACHE", cache.path())];
    let args = [
        "generate",
        "--model",
        "acme/llada2-tiny",
        "--prompt-ids",
        "1,2,3",
        "--gen-length",
        "8",
        "--json",
    ];
    let out = llada(&args, &env, None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = llada(
        &["generate", "--model", "acme/missing", "--prompt-ids", "1"],
        &env,
        None,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("llada download acme/missing"), "{err}");
}

#[test]
fn quantized_loading_runs() {
    let model = golden();
    for quant in ["q8_0", "q4k"] {
        let out = llada(
            &[
                "generate",
                "--model",
                model.to_str().unwrap(),
                "--quant",
                quant,
                "--prompt-ids",
                "1,2,3",
                "--gen-length",
                "8",
                "--json",
            ],
            &[],
            None,
        );
        assert!(
            out.status.success(),
            "{quant}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = llada(
        &[
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--quant",
            "q3",
            "--prompt-ids",
            "1",
        ],
        &[],
        None,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("q3"));
}

#[test]
fn quantize_writes_a_folder_that_generate_loads() {
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("tiny-q8");
    let model = golden();
    let q = llada(
        &[
            "quantize",
            "--model",
            model.to_str().unwrap(),
            "--quant",
            "q8_0",
            "--out",
            dest.to_str().unwrap(),
        ],
        &[],
        None,
    );
    assert!(q.status.success(), "{}", String::from_utf8_lossy(&q.stderr));
    assert!(String::from_utf8_lossy(&q.stdout).contains("quantized to q8_0"));
    let run = |m: &str, extra: &[&str]| {
        let mut args = vec![
            "generate",
            "--model",
            m,
            "--prompt-ids",
            "4,5,6",
            "--gen-length",
            "8",
            "--json",
        ];
        args.extend_from_slice(extra);
        let o = llada(&args, &[], None);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["output_ids"].clone()
    };
    assert_eq!(
        run(dest.to_str().unwrap(), &[]),
        run(model.to_str().unwrap(), &["--quant", "q8_0"])
    );
}

#[test]
fn synthetic_bench_rejects_unknown_models() {
    let o = llada(
        &["bench", "--synthetic", "llada9-giant", "--runs", "1"],
        &[],
        None,
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("llada2-mini"));
}

#[test]
fn eval_reports_task_accuracy_and_nelbo() {
    let tmp = tempfile::tempdir().unwrap();
    chat_model(tmp.path());
    let tasks = tmp.path().join("tasks.jsonl");
    std::fs::write(
        &tasks,
        "{\"kind\":\"add\",\"messages\":[{\"role\":\"user\",\"content\":\"What is 1 plus 2?\"},{\"role\":\"assistant\",\"content\":\"3\"}]}\n",
    )
    .unwrap();
    let text = tmp.path().join("held-out.txt");
    std::fs::write(
        &text,
        "The quick brown fox jumps over the lazy dog. ".repeat(20),
    )
    .unwrap();
    let o = llada(
        &[
            "eval",
            "--model",
            tmp.path().to_str().unwrap(),
            "--tasks",
            tasks.to_str().unwrap(),
            "--text",
            text.to_str().unwrap(),
            "--seq-len",
            "32",
            "--block",
            "8",
            "--gen-length",
            "8",
            "--block-length",
            "8",
            "--steps",
            "8",
            "--json",
        ],
        &[],
        None,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["tasks"]["items"], 1);
    assert!(v["tasks"]["tokens_per_forward"].as_f64().unwrap() > 0.0);
    let bits = v["nelbo"]["bits_per_token"].as_f64().unwrap();
    assert!(bits.is_finite() && bits > 0.0, "{bits}");
}

#[test]
fn the_default_model_answers_offline_in_the_chat_format() {
    // No --model: the model compiled into the binary. A copy of the binary in an empty
    // folder, run from there, answers: nothing is read from the source tree.
    let tmp = tempfile::tempdir().unwrap();
    let binary = tmp.path().join("llada");
    std::fs::copy(env!("CARGO_BIN_EXE_llada"), &binary).unwrap();
    let out = Command::new(&binary)
        .args([
            "generate",
            "--prompt",
            "Sort: 3 1 2",
            "--gen-length",
            "32",
            "--json",
        ])
        .current_dir(tmp.path())
        .env_remove("LLADA_DEFAULT_MODEL")
        .output()
        .unwrap();
    let v = common::json(&out);
    let ids: Vec<u32> = serde_json::from_value(v["output_ids"].clone()).unwrap();
    // The answer ends its turn (<|role_end|> = 2 or EOS = 0) well before gen_length.
    assert!(ids.len() < 32, "{ids:?}");
    assert!(matches!(ids.last(), Some(0) | Some(2)), "{ids:?}");
    assert!(!v["text"].as_str().unwrap().trim().is_empty());
}

#[test]
fn the_shipped_ar_baseline_decodes_one_token_per_forward_by_default() {
    // models/default-ar's generation_config.json says block_length 1: without decoding
    // flags it runs autoregressively, as it was trained, and answers a task.
    let model = common::repo().join("models/default-ar");
    let out = Command::new(env!("CARGO_BIN_EXE_llada"))
        .args([
            "generate",
            "--prompt",
            "Reverse: 4 9 2",
            "--json",
            "--model",
        ])
        .arg(&model)
        .output()
        .unwrap();
    let v = common::json(&out);
    assert_eq!(v["text"].as_str().unwrap().trim(), "2 9 4", "{v}");
    assert_eq!(v["tokens_per_forward"].as_f64().unwrap(), 1.0, "{v}");
}
