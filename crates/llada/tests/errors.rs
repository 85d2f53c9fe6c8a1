//! Bad input gets a clear error that names the problem, never a panic.

use llada_testing as common;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use common::fixture_dir;
use common::synth::{write_checkpoint, Shape};
use llada::{generate, load_model, DecoderConfig, Error};

fn small() -> Shape {
    Shape {
        vocab: 64,
        hidden: 16,
        layers: 2,
        heads: 2,
        kv_heads: 1,
        head_dim: 8,
        rotary_factor: 0.5,
        intermediate: 24,
        experts: 4,
        experts_per_tok: 2,
        n_group: 2,
        topk_group: 1,
        moe_intermediate: 8,
        shared_experts: 1,
        dense_layers: 1,
        max_positions: 40,
        options: Default::default(),
    }
}

fn write(
    dir: &Path,
    shape: &Shape,
    edit: impl FnOnce(&mut std::collections::HashMap<String, Tensor>),
) {
    let mut tensors = shape.tensors(1);
    edit(&mut tensors);
    write_checkpoint(dir, &shape.config(), &tensors, DType::F32, 1, 63, 62);
}

fn load_err(dir: &Path) -> String {
    match load_model(dir) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_folder_and_config_are_named() {
    let msg = load_err(Path::new("/nonexistent/llada-model"));
    assert!(msg.contains("/nonexistent/llada-model"), "{msg}");
    let dir = tempfile::tempdir().unwrap();
    let msg = load_err(dir.path());
    assert!(msg.contains("config.json"), "{msg}");
}

#[test]
fn unsupported_architecture_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small().config();
    cfg["architectures"] = serde_json::json!(["LlamaForCausalLM"]);
    cfg["model_type"] = serde_json::json!("llama");
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    let msg = load_err(dir.path());
    assert!(msg.contains("LlamaForCausalLM"), "{msg}");
}

#[test]
fn inconsistent_config_fields_are_named() {
    let cases = [
        (
            "num_key_value_heads",
            serde_json::json!(3),
            "num_key_value_heads",
        ),
        ("n_group", serde_json::json!(3), "n_group"),
        (
            "num_experts_per_tok",
            serde_json::json!(9),
            "num_experts_per_tok",
        ),
        ("hidden_act", serde_json::json!("gelu"), "hidden_act"),
        ("vocab_size", serde_json::json!("big"), "config.json"),
    ];
    for (field, value, needle) in cases {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = small().config();
        cfg[field] = value;
        std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
        let msg = load_err(dir.path());
        assert!(msg.contains(needle), "{field}: {msg}");
    }
}

#[test]
fn missing_weights_file_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), small().config().to_string()).unwrap();
    let msg = load_err(dir.path());
    assert!(msg.contains("model.safetensors"), "{msg}");
}

#[test]
fn missing_tensor_is_named() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), &small(), |t| {
        t.remove("model.layers.1.mlp.experts.2.up_proj.weight");
    });
    let msg = load_err(dir.path());
    assert!(
        msg.contains("model.layers.1.mlp.experts.2.up_proj.weight"),
        "{msg}"
    );
}

#[test]
fn wrong_shape_is_named() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), &small(), |t| {
        let bad = Tensor::zeros((5, 16), DType::F32, &Device::Cpu).unwrap();
        t.insert("model.layers.0.attention.dense.weight".into(), bad);
    });
    let msg = load_err(dir.path());
    assert!(
        msg.contains("model.layers.0.attention.dense.weight"),
        "{msg}"
    );
    assert!(msg.contains("[5, 16]") && msg.contains("[16, 16]"), "{msg}");
}

#[test]
fn unsupported_dtype_is_named() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), &small(), |t| {
        let ints = Tensor::zeros(16, DType::I64, &Device::Cpu).unwrap();
        t.insert("model.norm.weight".into(), ints);
    });
    let msg = load_err(dir.path());
    assert!(
        msg.contains("model.norm.weight") && msg.contains("I64"),
        "{msg}"
    );
}

#[test]
fn truncated_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), &small(), |_| {});
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let msg = load_err(dir.path());
    assert!(
        msg.contains("model.safetensors") && msg.contains("truncated"),
        "{msg}"
    );
}

#[test]
fn missing_shard_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let shape = small();
    write_checkpoint(
        dir.path(),
        &shape.config(),
        &shape.tensors(1),
        DType::F32,
        2,
        63,
        62,
    );
    std::fs::remove_file(dir.path().join("model-00002-of-00002.safetensors")).unwrap();
    let msg = load_err(dir.path());
    assert!(msg.contains("model-00002-of-00002.safetensors"), "{msg}");
}

#[test]
fn bad_requests_are_rejected_with_reasons() {
    let loaded = load_model(&fixture_dir()).unwrap();
    let base = loaded.default_params();
    let run = |prompt: &[u32], p: &llada::GenerateParams| {
        generate(&loaded.model, prompt, p, &mut |_| {}).unwrap_err()
    };
    // 1024 positions of context: a prompt of 1000 plus 100 new tokens does not fit.
    let long: Vec<u32> = vec![5; 1000];
    let mut p = base.clone();
    p.gen_length = 100;
    assert!(matches!(
        run(&long, &p),
        Error::ContextOverflow { context: 1024, .. }
    ));
    assert!(matches!(
        run(&[600], &base),
        Error::TokenOutOfRange {
            id: 600,
            vocab: 512
        }
    ));
    assert!(run(&[], &base).to_string().contains("empty"));
    for (edit, needle) in [
        (
            (|p: &mut llada::GenerateParams| p.block_length = 0) as fn(&mut _),
            "block_length",
        ),
        (|p| p.steps = 0, "steps"),
        (|p| p.gen_length = 0, "gen_length"),
        (|p| p.sampling.temperature = -1.0, "temperature"),
        (|p| p.sampling.top_p = Some(1.5), "top_p"),
        (|p| p.sampling.temperature = f32::NAN, "temperature"),
        (|p| p.sampling.temperature = 2.5, "temperature"),
        (|p| p.mask_id = 9999, "mask_id"),
        (|p| p.eos_id = p.mask_id, "mask_id"),
        (|p| p.extra_stop_ids.push(600), "stop_ids"),
        (
            |p| p.decoder = DecoderConfig::Threshold { threshold: 2.0 },
            "threshold",
        ),
        (
            |p| {
                p.decoder = DecoderConfig::Threshold {
                    threshold: f32::NAN,
                }
            },
            "threshold",
        ),
        // An answer longer than any context overflows no arithmetic.
        (|p| p.gen_length = usize::MAX - 15, "context"),
        (|p| p.block_length = usize::MAX, "context"),
    ] {
        let mut p = base.clone();
        edit(&mut p);
        let msg = run(&[1, 2, 3], &p).to_string();
        assert!(msg.contains(needle), "{needle}: {msg}");
    }
    // A mask token in the prompt would be decoded over.
    let msg = run(&[1, base.mask_id, 3], &base).to_string();
    assert!(msg.contains("mask token"), "{msg}");
}

#[test]
fn a_tiny_temperature_samples_the_greedy_answer() {
    // logits / 1e-38 overflows f32; sampling must still pick the argmax, not NaN. At
    // such a temperature every pick has probability 1, so each block is filled in one
    // step: what greedy decoding with threshold 0 does.
    let loaded = load_model(&fixture_dir()).unwrap();
    let mut greedy = loaded.default_params();
    greedy.decoder = DecoderConfig::Threshold { threshold: 0.0 };
    let mut tiny = loaded.default_params();
    tiny.sampling.temperature = 1e-38;
    let prompt = [1, 2, 3, 4, 5];
    let want = generate(&loaded.model, &prompt, &greedy, &mut |_| {}).unwrap();
    let got = generate(&loaded.model, &prompt, &tiny, &mut |_| {}).unwrap();
    assert!(!got.ids.is_empty());
    assert_eq!(got.ids, want.ids);
}
