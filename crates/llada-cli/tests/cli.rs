//! The `llada` binary end to end on the golden fixture.

mod common;

use common::fixture;

fn llada(args: &[&str]) -> std::process::Output {
    common::llada(args, &[], None)
}

#[test]
fn generate_json_reports_the_reference_answer_and_stats() {
    let flags = ["--block-length", "8", "--steps", "8", "--threshold", "0.95"];
    let v = generate_json("476,212,72,111,54", "24", &flags);
    let ids: Vec<u32> = serde_json::from_value(v["output_ids"].clone()).unwrap();
    assert_eq!(
        ids,
        [
            148, 412, 45, 197, 197, 412, 98, 197, 197, 197, 197, 223, 423, 98, 36, 197, 36, 36,
            223, 423, 36, 36, 36, 36
        ]
    );
    assert_eq!(v["denoising_steps"], 27);
    assert_eq!(v["forwards"], 27);
    assert_eq!(v["tokens"], 24);
    for key in ["seconds", "tokens_per_second", "tokens_per_forward"] {
        assert!(v[key].as_f64().unwrap() > 0.0, "{key}");
    }
}

#[test]
fn a_block_length_without_steps_comes_with_as_many_steps() {
    // Threshold 1.0 fills only the schedule's tokens: at most one per step with 64 steps
    // for a 64-token block, two with 32 steps (about half the forwards).
    let run = |extra: &[&str]| {
        let mut args = vec!["--block-length", "64", "--threshold", "1.0"];
        args.extend_from_slice(extra);
        let v = generate_json("476,212,72,111,54", "64", &args);
        (v["output_ids"].clone(), v["forwards"].as_u64().unwrap())
    };
    let alone = run(&[]);
    assert_eq!(alone, run(&["--steps", "64"]));
    let with_32 = run(&["--steps", "32"]);
    assert!(with_32.1 < alone.1, "{} vs {}", with_32.1, alone.1);
}

/// `llada generate --json` on the golden fixture with `extra` flags.
fn generate_json(prompt_ids: &str, gen_length: &str, extra: &[&str]) -> serde_json::Value {
    let model = fixture();
    let mut args = vec![
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt-ids",
        prompt_ids,
        "--gen-length",
        gen_length,
        "--json",
    ];
    args.extend_from_slice(extra);
    common::json(&llada(&args))
}

#[test]
fn no_cache_and_sampling_flags_work() {
    let run = |extra: &[&str]| generate_json("1,2,3", "16", extra)["output_ids"].clone();
    assert_eq!(run(&[]), run(&["--no-cache"]));
    let sampled = [
        "--temperature",
        "0.8",
        "--top-k",
        "20",
        "--top-p",
        "0.9",
        "--seed",
        "5",
    ];
    assert_eq!(run(&sampled), run(&sampled));
    assert_eq!(
        run(&["--block-length", "1", "--steps", "1"])
            .as_array()
            .unwrap()
            .len(),
        16
    );
}

#[test]
fn text_prompt_without_tokenizer_and_missing_model_fail_clearly() {
    let model = fixture();
    let out = llada(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "hello",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("tokenizer"));

    let out = llada(&["generate", "--model", "/no/such/model", "--prompt-ids", "1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/no/such/model") && !err.contains("panicked"),
        "{err}"
    );
}

#[test]
fn bench_prints_cached_and_baseline_rows() {
    let model = fixture();
    let out = llada(&[
        "bench",
        "--model",
        model.to_str().unwrap(),
        "--gen-length",
        "16",
        "--block-length",
        "8",
        "--steps",
        "8",
        "--runs",
        "1",
        "--json",
    ]);
    let report = common::json(&out);
    let rows = &report["rows"];
    let modes: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["mode"].as_str().unwrap())
        .collect();
    assert_eq!(
        modes,
        ["cached", "no-cache (reference loop)", "AR: block 1, cached"]
    );
    for r in rows.as_array().unwrap() {
        assert!(r["tokens_per_second"].as_f64().unwrap() > 0.0);
        // Equal work in every row: exactly --gen-length tokens.
        assert_eq!(r["tokens"], 16, "{r}");
    }
    let b = &report["break_even"];
    let ratio = b["block_forward_ms"].as_f64().unwrap() / b["ar_step_ms"].as_f64().unwrap();
    assert!(
        (b["break_even_tpf"].as_f64().unwrap() - ratio).abs() < 1e-9,
        "{b}"
    );
    assert!(b["measured_tpf"].as_f64().unwrap() >= 1.0, "{b}");
}

#[test]
fn train_tokenizer_writes_a_loadable_tokenizer() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("text.txt");
    std::fs::write(&corpus, "Now is the winter of our discontent\n".repeat(30)).unwrap();
    let out = tmp.path().join("tok");
    let o = llada(&[
        "train",
        "tokenizer",
        "--input",
        corpus.to_str().unwrap(),
        "--vocab-size",
        "300",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.join("tokenizer.json").is_file() && out.join("tokenizer_config.json").is_file());
    let o = llada(&[
        "train",
        "tokenizer",
        "--input",
        "/no/such.txt",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("/no/such.txt"));
}
