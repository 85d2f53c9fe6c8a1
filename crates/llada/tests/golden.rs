//! The engine against fixtures computed by the official PyTorch LLaDA2.0 code
//! (`fixtures/golden/llada2-tiny`, see `fixtures/golden/README.md`).

use llada_testing as common;

use candle_core::Tensor;
use common::{fixture_dir, generate_cases, golden, load_fixture, max_abs_diff};
use llada::generate;

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
        let diff = max_abs_diff(&got, want);
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
    let gen_cases = generate_cases(&loaded);
    assert!(gen_cases.len() >= 8);
    for (n, case) in gen_cases.into_iter().enumerate() {
        let (prompt, want, want_steps) = (case.prompt, case.output_ids, case.denoising_forwards);
        let mut params = case.params;
        for use_cache in [false, true] {
            params.use_cache = use_cache;
            let mut streamed = Vec::new();
            let before = loaded.model.cost().sequence_passes as usize;
            let out = generate(&loaded.model, &prompt, &params, &mut |t| {
                streamed.extend_from_slice(t)
            })
            .unwrap();
            let ran = loaded.model.cost().sequence_passes as usize - before;
            assert_eq!(out.ids, want, "case {n} (cache: {use_cache})");
            assert_eq!(
                out.stats.denoising_steps, want_steps,
                "case {n} (cache: {use_cache}) denoising steps"
            );
            // Counted where the model runs: the cache adds no pass of its own (its
            // commits ride on the next block's first step), so both modes make exactly
            // the reference's number of forward passes.
            assert_eq!(ran, want_steps, "case {n} (cache: {use_cache}): passes");
            assert_eq!(out.stats.forwards, ran, "case {n}: forwards reported");
            assert_eq!(streamed, out.ids, "case {n}: the stream is the answer");
        }
    }
}
