//! Every bad input a review threw at the binary: each gets a clear error naming the
//! problem and exit status 1; none panics (status 101) or passes silently.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::repo;

fn fixture() -> String {
    common::fixture().to_string_lossy().into_owned()
}

fn llada(args: &[&str], stdin: Option<&str>) -> std::process::Output {
    common::llada(args, &[], stdin)
}

/// Runs `args` and checks it fails cleanly with `needle` in its message.
fn refused<S: AsRef<str> + std::fmt::Debug>(args: &[S], needle: &str) {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    let args = args.as_slice();
    let out = llada(args, None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?} -> {err}");
    assert!(err.contains(needle), "{args:?}: {needle:?} not in {err}");
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    assert!(!err.contains("backtrace"), "{args:?}: {err}");
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn decoding_settings_out_of_range_are_refused() {
    let m = fixture();
    let ids = ["generate", "--model", &m, "--prompt-ids", "1,2,3"];
    let with = |extra: &[&'static str]| -> Vec<String> {
        ids.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    refused(&with(&["--gen-length", "18446744073709551600"]), "context");
    refused(&with(&["--gen-length", "0"]), "--gen-length");
    refused(&with(&["--block-length", "0"]), "--block-length");
    refused(&with(&["--steps", "0"]), "--steps");
    refused(&with(&["--threshold", "2"]), "--threshold");
    refused(&with(&["--threshold", "NaN"]), "--threshold");
    refused(&with(&["--temperature=-1"]), "--temperature");
    refused(&with(&["--temperature", "inf"]), "--temperature");
    refused(&with(&["--top-p", "0"]), "--top-p");
    refused(&with(&["--mask-id", "0", "--eos-id", "0"]), "--mask-id");
    refused(&with(&["--mask-id", "99999"]), "--mask-id");
    refused(
        &["generate", "--model", &m, "--prompt-ids", "1,510,3"],
        "mask token",
    );
    refused(
        &[
            "generate",
            "--prompt",
            "fill <|mask|> in",
            "--gen-length",
            "8",
        ],
        "mask token",
    );
    refused(
        &[
            "bench",
            "--model",
            &m,
            "--gen-length",
            "18446744073709551600",
        ],
        "context",
    );
}

#[test]
fn a_tiny_temperature_still_answers() {
    let m = fixture();
    let out = llada(
        &[
            "generate",
            "--model",
            &m,
            "--prompt-ids",
            "1,2,3",
            "--gen-length",
            "8",
            "--temperature",
            "1e-38",
            "--json",
        ],
        None,
    );
    let v = common::json(&out);
    assert_eq!(v["output_ids"].as_array().unwrap().len(), 8);
}

#[test]
fn chat_settings_are_checked_and_the_repl_goes_on() {
    let out = llada(
        &["chat"],
        Some("/set gen-length 18446744073709551600\nSort: 2 1\n/set threshold 7\n/set temperature x\n/quit\n"),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("context"), "{err}");
    assert!(err.contains("threshold"), "{err}");
    assert!(err.contains("temperature: \"x\""), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn evaluation_inputs_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let text = write(tmp.path(), "t.txt", &"To be or not to be. ".repeat(200));
    let empty = write(tmp.path(), "empty.jsonl", "\n");
    let eval = |extra: &[&'static str]| -> Vec<String> {
        ["eval", "--text", text.as_str()]
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect()
    };
    refused(&eval(&["--block", "0"]), "block");
    refused(&eval(&["--seq-len", "0"]), "sequence length");
    refused(&eval(&["--samples", "0"]), "samples");
    refused(&eval(&["--max-sequences", "0"]), "max sequences");
    refused(&["eval", "--tasks", &empty], "no task items");
    let default_model = repo().join("models/default");
    let out = tmp.path().join("merged");
    refused(
        &[
            "train",
            "merge",
            "--checkpoints",
            default_model.to_str().unwrap(),
            "--validation",
            &text,
            "--seq-len",
            "0",
            "--out",
            out.to_str().unwrap(),
        ],
        "sequence length",
    );
}

#[test]
fn recipe_fields_are_checked_before_training() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = std::fs::read_to_string(repo().join("models/default/recipe.toml")).unwrap();
    for (from, to, needle) in [
        ("block = 32", "block = 0", "block must be at least 1"),
        ("peak = 3e-3", "peak = -3e-3", "lr.peak"),
        (
            "seq_len = 128\ncheckpoint_every = 250",
            "seq_len = 0\ncheckpoint_every = 250",
            "seq_len",
        ),
        ("name = \"ar\"", "name = \"../../escape\"", "names a folder"),
        ("rope_theta = 600000.0", "rope_theta = 0.0", "rope_theta"),
        ("batch_size = 8", "batch_size = 0", "batch_size"),
        (
            "embed_noise_std = 0.1",
            "embed_noise_std = -0.1",
            "embed_noise_std",
        ),
    ] {
        assert!(recipe.contains(from), "{from}");
        let path = write(tmp.path(), "recipe.toml", &recipe.replacen(from, to, 1));
        refused(&["train", "run", &path], needle);
    }
}

#[test]
fn bad_model_folders_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    // A copy of the fixture with one field of one of its JSON files replaced (in a
    // folder whose name does not hold the field, so the error must name it).
    let fixture_with = |case: usize, file: &str, field: &str, value: serde_json::Value| {
        let dir = tmp.path().join(format!("case{case}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["model.safetensors", "config.json", "generation_config.json"] {
            std::fs::copy(Path::new(&fixture()).join(f), dir.join(f)).unwrap();
        }
        let path = dir.join(file);
        let mut json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        json[field] = value;
        std::fs::write(&path, json.to_string()).unwrap();
        dir
    };
    // Each bad value is named (a generation config's with its file).
    let cases: [(&str, &str, serde_json::Value, &str); 3] = [
        ("config.json", "rope_theta", 0.0.into(), "rope_theta"),
        ("config.json", "rms_norm_eps", (-1.0).into(), "rms_norm_eps"),
        (
            "generation_config.json",
            "block_length",
            0.into(),
            "generation_config.json: block_length must be at least 1",
        ),
    ];
    for (case, (file, field, value, needle)) in cases.into_iter().enumerate() {
        let dir = fixture_with(case, file, field, value);
        let model = dir.to_str().unwrap();
        refused(&["generate", "--model", model, "--prompt-ids", "1"], needle);
    }
    refused(
        &["generate", "--model", "org/x@../../..", "--prompt-ids", "1"],
        "not found",
    );
    // A GGUF that is not one is called a GGUF file, without a backtrace.
    let gguf = tmp.path().join("gguf");
    std::fs::create_dir_all(&gguf).unwrap();
    std::fs::copy(
        Path::new(&fixture()).join("config.json"),
        gguf.join("config.json"),
    )
    .unwrap();
    std::fs::write(gguf.join("model.gguf"), b"GGUF\x03\x00").unwrap();
    refused(
        &[
            "generate",
            "--model",
            gguf.to_str().unwrap(),
            "--prompt-ids",
            "1",
        ],
        "GGUF file",
    );
}

#[test]
fn a_chat_template_that_never_ends_is_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let src = repo().join("models/default");
    for f in [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
    ] {
        std::fs::copy(src.join(f), tmp.path().join(f)).unwrap();
    }
    let template =
        "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}";
    std::fs::write(tmp.path().join("chat_template.jinja"), template).unwrap();
    let started = Instant::now();
    refused(
        &[
            "generate",
            "--model",
            tmp.path().to_str().unwrap(),
            "--prompt",
            "hi",
        ],
        "chat template",
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}

/// `--device gpu` where no GPU driver can be found (the Vulkan loader pointed at no
/// driver) is a clear error saying how to get one; a bad device name is refused; `auto`
/// falls back to the CPU and says so.
#[test]
fn a_gpu_asked_for_without_any_adapter_is_a_clear_error() {
    let nowhere = Path::new("/nonexistent/icd.json");
    let no_driver = [
        ("VK_ICD_FILENAMES", nowhere),
        ("VK_DRIVER_FILES", nowhere),
        ("WGPU_BACKEND", Path::new("vulkan")),
    ];
    let fx = fixture();
    // The exit status and stderr of `generate` on the fixture with `extra` flags.
    let run = |extra: &[&str], env: &[(&str, &Path)]| {
        let mut args = vec!["generate", "-m", &fx, "--prompt-ids", "5,6,7"];
        args.extend_from_slice(extra);
        let out = common::llada(&args, env, None);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!err.contains("panicked"), "{err}");
        (out.status.code(), err)
    };
    let (status, err) = run(&["--device", "gpu"], &no_driver);
    assert_eq!(status, Some(1), "{err}");
    assert!(err.contains("no GPU adapter found"), "{err}");
    assert!(err.contains("mesa-vulkan-drivers"), "{err}");

    let (status, err) = run(&[], &no_driver);
    assert_eq!(status, Some(0), "{err}");
    assert!(err.contains("running on CPU"), "{err}");

    // A flag clap refuses: usage error, status 2.
    let (status, err) = run(&["--device", "tpu"], &[]);
    assert_eq!(status, Some(2), "{err}");
    assert!(err.contains("unknown device \"tpu\""), "{err}");

    let (status, err) = run(&[], &[("LLADA_DEVICE", Path::new("tpu"))]);
    assert_eq!(status, Some(1), "{err}");
    assert!(err.contains("LLADA_DEVICE"), "{err}");
}
