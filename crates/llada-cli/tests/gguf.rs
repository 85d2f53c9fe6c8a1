//! One GGUF file as a whole model from the command line: `llada quantize --out FILE.gguf`
//! writes llama.cpp's `llada2` layout (checked with llama.cpp's own `gguf` package),
//! and `generate`, `chat` and `bench` run the file.

mod common;

use common::{json, llada, repo};

fn quantize_default(dir: &std::path::Path) -> std::path::PathBuf {
    let file = dir.join("default.gguf");
    let out = llada(
        &[
            "quantize",
            "--quant",
            "q8_0",
            "--out",
            file.to_str().unwrap(),
        ],
        &[],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("default.gguf"));
    file
}

#[test]
fn a_gguf_file_generates_chats_and_benches_like_its_folder() {
    let dir = tempfile::tempdir().unwrap();
    let file = quantize_default(dir.path());
    let file = file.to_str().unwrap();
    let run = |model: Option<&str>| {
        let mut args = vec!["generate", "--prompt", "Reverse: 7 8 9", "--json"];
        let quant = ["--quant", "q8_0"];
        match model {
            Some(m) => args.extend(["--model", m]),
            None => args.extend(quant),
        }
        json(&llada(&args, &[], None))
    };
    let (from_file, at_load) = (run(Some(file)), run(None));
    assert_eq!(from_file["text"], at_load["text"]);
    assert_eq!(from_file["ids"], at_load["ids"]);
    let chat = llada(&["chat", "--model", file], &[], Some("Reverse: 1 2\n"));
    assert!(
        chat.status.success(),
        "{}",
        String::from_utf8_lossy(&chat.stderr)
    );
    assert!(String::from_utf8_lossy(&chat.stdout).contains("2 1"));
    let bench = llada(
        &[
            "bench",
            "--model",
            file,
            "--gen-length",
            "8",
            "--modes",
            "cached",
            "--json",
        ],
        &[],
        None,
    );
    assert!(
        bench.status.success(),
        "{}",
        String::from_utf8_lossy(&bench.stderr)
    );
}

#[test]
fn a_missing_or_foreign_gguf_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.gguf");
    let refused = |model: &std::path::Path| {
        let out = llada(
            &[
                "generate",
                "--model",
                model.to_str().unwrap(),
                "--prompt",
                "hi",
            ],
            &[],
            None,
        );
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = refused(&missing);
    assert!(err.contains("no such GGUF file"), "{err}");
    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"GGUF\x03\x00\x00\x00").unwrap();
    let err = refused(&junk);
    assert!(
        err.contains("junk.gguf") && err.contains("truncated"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
#[ignore = "needs Python with the gguf package; .ci/run runs it with --include-ignored"]
fn written_files_pass_the_gguf_packages_structural_check() {
    let dir = tempfile::tempdir().unwrap();
    let file = quantize_default(dir.path());
    let script = repo().join("crates/llada-cli/tests/python/gguf_layout.py");
    // The checker must accept the published-layout fixture it was written from, and ours.
    let published = repo().join("fixtures/golden/llada2-tiny/gguf/model-q4_0.gguf");
    for (path, extra) in [
        (published.as_path(), None),
        (file.as_path(), Some("--tokenizer")),
    ] {
        let mut args = vec![script.to_str().unwrap(), path.to_str().unwrap()];
        args.extend(extra);
        let out = std::process::Command::new("python3")
            .args(&args)
            .output()
            .expect("python3 runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.trim_end().ends_with("ok"),
            "{}: {stdout}{}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
