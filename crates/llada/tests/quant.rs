//! The accuracy cost of quantization, measured against the f32 engine (which matches the
//! reference) on the golden cases, and the quantized checkpoint round trip.
//!
//! Run with `--nocapture` to see the figures the README quotes.

use llada_testing as common;

use common::{fixture_dir, generate_cases, logits_distance, max_abs_diff};
use llada::{generate, load_model, load_model_with, LoadedModel, Quant};

/// How many golden generate cases give exactly the reference ids.
fn golden_agreement(m: &LoadedModel) -> (usize, usize) {
    let cases = generate_cases(m);
    let agree = cases
        .iter()
        .filter(|c| {
            generate(&m.model, &c.prompt, &c.params, &mut |_| {})
                .unwrap()
                .ids
                == c.output_ids
        })
        .count();
    (agree, cases.len())
}

#[test]
fn quantized_models_stay_close_to_f32_on_the_golden_cases() {
    let f32_model = load_model(&fixture_dir()).unwrap();
    assert_eq!(golden_agreement(&f32_model), (8, 8));
    // The fixture's rows (64, 32, 128 wide) are below q4k's 256-element blocks, so q4k
    // falls back to q8_0 there: both rows measure q8_0 on this checkpoint.
    //
    // Whole generations are a harsh measure on this random-weight fixture: its
    // confidences sit close together, so even quantizing only lm_head (max logit change
    // ~0.1) reorders the top-k fallback and changes most generations after a few
    // tokens. The per-position argmax agreement is the stable figure.
    for quant in [Quant::Q8_0, Quant::Q4k] {
        let q = load_model_with(&fixture_dir(), Some(quant)).unwrap();
        let (max, mean, top1) = logits_distance(&f32_model, &q);
        let (agree, total) = golden_agreement(&q);
        println!(
            "{}: logits max |diff| {max:.4}, mean |diff| {mean:.5}, argmax agreement {:.1}%; golden generate cases identical: {agree}/{total}",
            quant.name(),
            100.0 * top1
        );
        // Just past the README's figures: mean |diff| 0.132, argmax agreement 94.8%,
        // 1 of 8 generations identical.
        assert!(mean < 0.14, "{quant:?}: mean |diff| {mean}");
        assert!(top1 > 0.94, "{quant:?}: argmax agreement {top1}");
        assert!(
            agree >= 1,
            "{quant:?}: {agree}/{total} generations identical"
        );
    }
}

#[test]
fn q4k_on_256_wide_rows_is_close_to_f32() {
    use common::synth::{write_checkpoint, Shape};
    let shape = Shape {
        vocab: 256,
        hidden: 256,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        head_dim: 64,
        rotary_factor: 0.5,
        intermediate: 512,
        experts: 4,
        experts_per_tok: 2,
        n_group: 2,
        topk_group: 1,
        moe_intermediate: 256,
        shared_experts: 1,
        dense_layers: 1,
        max_positions: 128,
        options: Default::default(),
    };
    let dir = tempfile::tempdir().unwrap();
    let mut tensors = shape.tensors(9);
    // Realistic weight scale (~1/sqrt(fan_in)) for a relative-error figure.
    for (name, t) in tensors.iter_mut() {
        if !name.contains("norm") && !name.contains("expert_bias") {
            *t = (t.clone() * 0.1).unwrap();
        }
    }
    write_checkpoint(
        dir.path(),
        &shape.config(),
        &tensors,
        candle_core::DType::F32,
        1,
        255,
        254,
    );
    let ids: Vec<u32> = (0..40).map(|i| (i * 7 + 1) % 250).collect();
    let dense = load_model(dir.path()).unwrap();
    let want = dense.model.forward_full(&ids, 8).unwrap();
    let scale = want
        .abs()
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    for quant in [Quant::Q8_0, Quant::Q4k] {
        let q = load_model_with(dir.path(), Some(quant)).unwrap();
        assert!(q.model.weight_bytes() < dense.model.weight_bytes());
        let got = q.model.forward_full(&ids, 8).unwrap();
        let err = (got - &want)
            .unwrap()
            .abs()
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        println!(
            "{} on 256-wide rows: mean |diff| / mean |logit| = {:.4}",
            quant.name(),
            err / scale
        );
        // Just above the figures the README quotes (q8_0 1.2%, q4k 11.7%).
        let most = match quant {
            Quant::Q8_0 => 0.015,
            Quant::Q4k => 0.125,
        };
        assert!(
            err / scale < most,
            "{quant:?}: relative error {}",
            err / scale
        );
    }
}

#[test]
fn quantized_checkpoint_loads_and_matches_load_time_quantization() {
    let out = tempfile::tempdir().unwrap();
    let report = llada::quantize_checkpoint(&fixture_dir(), out.path(), Quant::Q8_0).unwrap();
    assert!(report.quantized > 0 && report.quantized < report.tensors);
    assert!(out.path().join("config.json").is_file());
    let files: Vec<String> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        files.iter().all(|f| !f.ends_with(".tmp")),
        "temporary files left: {files:?}"
    );
    let from_file = load_model(out.path()).unwrap();
    let at_load = load_model_with(&fixture_dir(), Some(Quant::Q8_0)).unwrap();
    assert_eq!(from_file.model.weight_bytes(), at_load.model.weight_bytes());
    let ids = [5u32, 6, 7, 8, 9, 10, 11, 12, 13];
    let a = from_file.model.forward_full(&ids, 4).unwrap();
    let b = at_load.model.forward_full(&ids, 4).unwrap();
    let d = max_abs_diff(&a, &b);
    assert_eq!(d, 0.0, "same blocks, same logits");
    // A corrupt GGUF is named in the error.
    std::fs::write(out.path().join("model.gguf"), b"GGUF\x03\x00").unwrap();
    let err = load_model(out.path()).err().unwrap().to_string();
    assert!(err.contains("model.gguf"), "{err}");
    assert!(err.contains("GGUF file"), "the format is named: {err}");
    assert!(!err.contains("backtrace"), "{err}");
}
