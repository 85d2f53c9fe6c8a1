//! The engine against fixtures computed by the official PyTorch LLaDA2.0 code
//! (`../shared/golden/llada2-tiny`, see its README).

mod common;

use candle_core::Tensor;
use common::{fixture_dir, golden, load_fixture};
use llada::{generate, DecoderConfig};

#[test]
fn forward_logits_match_the_reference() {
    let loaded = load_fixture();
    let cases = golden();
    let expected = candle_core::safetensors::load(
        fixture_dir().join("logits.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let forward = cases["forward"].as_array().unwrap();
    assert!(!forward.is_empty());
    for case in forward {
        let ids: Vec<u32> = serde_json::from_value(case["input_ids"].clone()).unwrap();
        let block = case["block_length"].as_u64().unwrap() as usize;
        let name = case["logits"].as_str().unwrap();
        let got = loaded.model.forward_full(&ids, block).unwrap();
        let want: &Tensor = &expected[name];
        assert_eq!(got.dims(), want.dims(), "{name}");
        let diff = (got - want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-4, "{name}: max |diff| = {diff}");
    }
}

#[test]
fn generate_matches_the_reference_with_and_without_cache() {
    let loaded = load_fixture();
    let cases = golden();
    let file_eos = cases["eos_id"].as_u64().unwrap() as u32;
    let mask = cases["mask_id"].as_u64().unwrap() as u32;
    let defaults = loaded.default_params();
    assert_eq!((defaults.mask_id, defaults.eos_id), (mask, file_eos));
    assert!(defaults.extra_stop_ids.is_empty());
    let gen_cases = cases["generate"].as_array().unwrap();
    assert!(gen_cases.len() >= 8);
    for (n, case) in gen_cases.iter().enumerate() {
        let prompt: Vec<u32> = serde_json::from_value(case["prompt_ids"].clone()).unwrap();
        let want: Vec<u32> = serde_json::from_value(case["output_ids"].clone()).unwrap();
        let want_steps = case["denoising_forwards"].as_u64().unwrap() as usize;
        let mut params = loaded.default_params();
        params.gen_length = case["gen_length"].as_u64().unwrap() as usize;
        params.block_length = case["block_length"].as_u64().unwrap() as usize;
        params.steps = case["steps"].as_u64().unwrap() as usize;
        params.decoder = DecoderConfig::Threshold {
            threshold: case["threshold"].as_f64().unwrap() as f32,
        };
        if let Some(eos) = case.get("eos_id").and_then(|v| v.as_u64()) {
            params.eos_id = eos as u32;
        }
        params.eos_early_stop = case
            .get("eos_early_stop")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        for use_cache in [false, true] {
            params.use_cache = use_cache;
            let mut streamed = Vec::new();
            let out = generate(&loaded.model, &prompt, &params, &mut |t| {
                streamed.extend_from_slice(t)
            })
            .unwrap();
            assert_eq!(out.ids, want, "case {n} (cache: {use_cache})");
            assert_eq!(
                out.stats.denoising_steps, want_steps,
                "case {n} (cache: {use_cache}) denoising steps"
            );
            assert_eq!(streamed, out.ids, "case {n}: the stream is the answer");
        }
    }
}
