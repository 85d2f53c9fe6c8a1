//! Tokenizer, chat template and streaming detokenization on a small byte-level BPE
//! tokenizer with LLaDA2's special tokens (`tests/data/tokenizer`).

use llada_testing as common;

use std::path::PathBuf;

use llada::{Message, Tokenizer};

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

fn tokenizer() -> Tokenizer {
    Tokenizer::from_dir(&data_dir().join("tokenizer")).unwrap()
}

fn conversations() -> Vec<Vec<Message>> {
    vec![
        vec![Message::new("user", "What is 12 plus 30?")],
        vec![
            Message::new("system", "  You are terse.  "),
            Message::new("user", "Reverse the word hello."),
        ],
        vec![
            Message::new("user", "Sort: 5 3 9 1"),
            Message::new("assistant", " 1 3 5 9 "),
            Message::new("user", "Café? 你好 🙂"),
        ],
    ]
}

/// transformers' `apply_chat_template` ids for the same folder and conversations.
fn python_ids(dir: &std::path::Path, convs: &[Vec<Message>]) -> Vec<Vec<u32>> {
    let request = serde_json::json!({ "dir": dir, "conversations": convs });
    let ids = common::python::run_json(&data_dir().join("chat_ids.py"), &request);
    serde_json::from_value(ids).unwrap()
}

#[test]
#[ignore = "needs Python with transformers; .ci/run runs it with --include-ignored"]
fn chat_prompt_ids_equal_transformers_apply_chat_template() {
    let dir = data_dir().join("tokenizer");
    let tok = tokenizer();
    let convs = conversations();
    let want = python_ids(&dir, &convs);
    for (conv, want) in convs.iter().zip(want) {
        assert_eq!(tok.encode_chat(conv, true).unwrap(), want, "{conv:?}");
    }
}

#[test]
fn special_tokens_resolve_by_name() {
    let tok = tokenizer();
    assert_eq!(tok.eos_id(), tok.token_id("<|endoftext|>"));
    assert!(tok.mask_id().is_some());
    assert!(tok.role_end_id().is_some());
    assert_ne!(tok.role_end_id(), tok.eos_id());
}

#[test]
fn streaming_never_splits_a_utf8_character() {
    let tok = tokenizer();
    let text = "Café, déjà vu — 你好，世界。 🙂 The answer is 42.";
    let ids = tok.encode(text).unwrap();
    assert!(ids.len() > 10);
    let mut stream = tok.stream_decoder(true);
    let mut pieces = Vec::new();
    for id in &ids {
        let piece = stream.push(&[*id]).unwrap();
        assert!(
            !piece.contains('\u{FFFD}'),
            "half a character emitted: {piece:?}"
        );
        pieces.push(piece);
    }
    assert_eq!(pieces.concat(), text);
    // Some tokens are partial characters, so some pushes must have emitted nothing.
    assert!(pieces.iter().any(|p| p.is_empty()));
}

#[test]
fn a_template_file_overrides_the_config_and_no_template_falls_back() {
    let tmp = tempfile::tempdir().unwrap();
    let src = data_dir().join("tokenizer/tokenizer.json");
    std::fs::copy(&src, tmp.path().join("tokenizer.json")).unwrap();
    let tok = Tokenizer::from_dir(tmp.path()).unwrap();
    assert!(tok.chat_template().is_fallback());
    let msgs = [Message::new("user", "hi")];
    assert_eq!(
        tok.render_chat(&msgs, true).unwrap(),
        "<role>SYSTEM</role>detailed thinking off<|role_end|><role>HUMAN</role>hi<|role_end|><role>ASSISTANT</role>"
    );
    std::fs::write(
        tmp.path().join("chat_template.jinja"),
        "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}",
    )
    .unwrap();
    let tok = Tokenizer::from_dir(tmp.path()).unwrap();
    assert_eq!(tok.render_chat(&msgs, true).unwrap(), "[user]hi[assistant]");
}

#[test]
fn missing_tokenizer_and_broken_template_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let err = Tokenizer::from_dir(tmp.path()).err().unwrap().to_string();
    assert!(err.contains("tokenizer.json"), "{err}");
    std::fs::copy(
        data_dir().join("tokenizer/tokenizer.json"),
        tmp.path().join("tokenizer.json"),
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("tokenizer_config.json"),
        r#"{"chat_template": "{% if %}"}"#,
    )
    .unwrap();
    let err = Tokenizer::from_dir(tmp.path()).err().unwrap().to_string();
    assert!(
        err.contains("tokenizer_config.json") && err.contains("compile"),
        "{err}"
    );
}
