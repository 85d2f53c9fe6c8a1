//! `train_tokenizer` writes a folder that llada and transformers both load, with the
//! special tokens and chat format of LLaDA2.

use llada_testing::python;

use std::path::PathBuf;

use llada::{Message, Tokenizer};
use llada_train::tokenizer::{train_tokenizer, TokenizerTraining, SPECIAL_TOKENS};

fn corpus(dir: &std::path::Path) -> PathBuf {
    let path = dir.join("corpus.txt");
    let text = "To be, or not to be, that is the question:\n\
                Whether 'tis nobler in the mind to suffer\n\
                The slings and arrows of outrageous fortune,\n\
                What is 12 plus 30? The answer is 42. Café — naïve.\n";
    std::fs::write(&path, text.repeat(20)).unwrap();
    path
}

#[test]
fn trained_tokenizer_round_trips_and_knows_the_special_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("tok");
    let opts = TokenizerTraining {
        vocab_size: 320,
        min_frequency: 2,
        ..TokenizerTraining::default()
    };
    train_tokenizer(&[corpus(tmp.path())], &opts, &out).unwrap();
    let tok = Tokenizer::from_dir(&out).unwrap();
    assert!(tok.vocab_size() <= 320 && tok.vocab_size() > 261);
    for (id, name) in SPECIAL_TOKENS.iter().enumerate() {
        assert_eq!(tok.token_id(name), Some(id as u32), "{name}");
    }
    assert_eq!(tok.eos_id(), Some(0));
    assert_eq!(tok.mask_id(), Some(1));
    assert_eq!(tok.role_end_id(), Some(2));
    let text = "The answer is 42. Café — naïve, 你好";
    let ids = tok.encode(text).unwrap();
    assert_eq!(tok.decode(&ids, true).unwrap(), text);
    let prompt = tok
        .render_chat(&[Message::new("user", "hi")], true)
        .unwrap();
    assert!(prompt.ends_with("<role>HUMAN</role>hi<|role_end|><role>ASSISTANT</role>"));
    // Special tokens in the rendered prompt are single ids.
    let ids = tok.encode(&prompt).unwrap();
    assert_eq!(ids.iter().filter(|&&i| i == 2).count(), 2);
    // Numbers are split into digits even where the corpus repeats them ("12", "42"):
    // a space stays with the digit after it.
    let ids = tok.encode(" 12 plus 30 is 42").unwrap();
    let pieces: Vec<String> = ids
        .iter()
        .map(|&i| tok.decode(&[i], false).unwrap())
        .filter(|p| p.chars().any(|c| c.is_ascii_digit()))
        .collect();
    assert_eq!(pieces, [" 1", "2", " 3", "0", " 4", "2"]);
}

#[test]
#[ignore = "needs Python with transformers; .ci/run runs it with --include-ignored"]
fn transformers_loads_the_trained_tokenizer_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("tok");
    train_tokenizer(
        &[corpus(tmp.path())],
        &TokenizerTraining {
            vocab_size: 300,
            min_frequency: 2,
            ..TokenizerTraining::default()
        },
        &out,
    )
    .unwrap();
    let convs = vec![vec![Message::new(
        "user",
        "To be, or not to be? 12 plus 30 is 42.",
    )]];
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../llada/tests/data/chat_ids.py");
    let request = serde_json::json!({ "dir": out, "conversations": convs });
    let want: Vec<Vec<u32>> = serde_json::from_value(python::run_json(&script, &request)).unwrap();
    let tok = Tokenizer::from_dir(&out).unwrap();
    assert_eq!(tok.encode_chat(&convs[0], true).unwrap(), want[0]);
}

#[test]
fn bad_inputs_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("tok");
    let small = TokenizerTraining {
        vocab_size: 100,
        min_frequency: 1,
        ..TokenizerTraining::default()
    };
    let err = train_tokenizer(&[corpus(tmp.path())], &small, &out)
        .unwrap_err()
        .to_string();
    assert!(err.contains("vocab size 100"), "{err}");
    let missing = tmp.path().join("nope.txt");
    let err = train_tokenizer(&[missing], &TokenizerTraining::default(), &out)
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope.txt"), "{err}");
}
