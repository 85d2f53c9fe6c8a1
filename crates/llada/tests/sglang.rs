//! SGLang's decoders against `joint_sglang_cases.json` (LLaDA2.1's `JointThreshold`, on
//! both fixtures) and `indel_cases.json` (LLaDA2.2's `JointThresholdInDel`): ids, forward
//! passes and what was written, with and without the KV cache.

use llada_testing as common;

use common::{fixture_2_2_dir, fixture_dir, load_fixture, load_fixture_2_2, sglang_cases};
use llada::{generate, LoadedModel};

fn check(loaded: &LoadedModel, dir: &std::path::Path, file: &str, counts: &[&str]) {
    let cases = sglang_cases(dir, file, loaded);
    assert_eq!(cases.len(), 16, "{file}");
    for (n, case) in cases.iter().enumerate() {
        let mut params = case.params.clone();
        for use_cache in [false, true] {
            params.use_cache = use_cache;
            let before = loaded.model.cost().sequence_passes as usize;
            let out = generate(&loaded.model, &case.prompt, &params, &mut |_| {}).unwrap();
            let ran = loaded.model.cost().sequence_passes as usize - before;
            let what = format!("{file} case {n} (cache: {use_cache})");
            assert_eq!(out.ids, case.output_ids, "{what}: ids");
            assert_eq!(out.stats.forwards, case.forwards, "{what}: forwards");
            assert_eq!(ran, case.forwards, "{what}: passes the model ran");
            let s = out.stats;
            for &name in counts {
                let got = match name {
                    "fills" => s.fills,
                    "edits" => s.edits,
                    "deletes" => s.deletes,
                    "splits" => s.splits,
                    "substitutions" => s.edits - s.deletes - s.splits,
                    other => panic!("no count {other}"),
                };
                assert_eq!(
                    got as u64,
                    case.counts[name].as_u64().unwrap(),
                    "{what}: {name}"
                );
            }
        }
    }
}

#[test]
fn joint_sglang_matches_sglang_on_llada2_tiny() {
    check(
        &load_fixture(),
        &fixture_dir(),
        "joint_sglang_cases.json",
        &["fills", "edits"],
    );
}

#[test]
fn joint_sglang_matches_sglang_on_llada2_2_tiny() {
    check(
        &load_fixture_2_2(),
        &fixture_2_2_dir(),
        "joint_sglang_cases.json",
        &["fills", "edits"],
    );
}

#[test]
fn indel_matches_sglang_on_llada2_2_tiny() {
    check(
        &load_fixture_2_2(),
        &fixture_2_2_dir(),
        "indel_cases.json",
        &["fills", "substitutions", "deletes", "splits", "edits"],
    );
}

#[test]
fn indel_needs_the_models_edit_tokens() {
    let loaded = load_fixture();
    let mut params = loaded.default_params();
    params.decoder = llada::DecodeSettings {
        decoder: Some("indel".into()),
        ..Default::default()
    }
    .decoder_from(&params.decoder)
    .unwrap();
    let err = generate(&loaded.model, &[1, 2, 3], &params, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("delete_token_id"), "{err}");
}

/// A model's generation_config.json may name its decoder (SGLang's key names too); its
/// settings become the model's defaults, and a bad one is refused naming the file.
#[test]
fn generation_config_names_the_models_decoder() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture_2_2_dir().join(f), dir.path().join(f)).unwrap();
    }
    let write =
        |json: &str| std::fs::write(dir.path().join("generation_config.json"), json).unwrap();
    write(
        r#"{"eos_token_id": 509, "mask_token_id": 510, "decoder": "indel", "threshold": 0.7, "edit_threshold": 0.3, "max_post_edit_steps": 4}"#,
    );
    let loaded = llada::load_model(dir.path()).unwrap();
    assert_eq!(
        loaded.default_params().decoder,
        llada::DecoderConfig::Indel {
            threshold: 0.7,
            editing_threshold: 0.3,
            max_post_steps: 4
        }
    );
    write(r#"{"mask_token_id": 510, "decoder": "threshold", "edit_threshold": 0.3}"#);
    let err = llada::load_model(dir.path()).err().unwrap().to_string();
    assert!(
        err.contains("generation_config.json") && err.contains("editing_threshold"),
        "{err}"
    );
}
