//! Long contexts: a prompt prefilled in chunks answers as one prefilled at once (and as
//! the uncached reference computation), an f16/bf16 KV cache stays close to f32, and a
//! cache that cannot fit is refused before it is allocated.

use llada_testing as common;

use common::{fixture_2_2_dir, generate_cases_in, load_fixture_2_2};
use llada::{generate, Error, Generation, KvDtype, LoadedModel};

/// The LLaDA2.2 fixture with a longer context (`max_position_embeddings`).
fn fixture_with_context(dir: &std::path::Path, positions: u64) -> LoadedModel {
    let src = fixture_2_2_dir();
    let mut config = common::read_json(&src.join("config.json"));
    config["max_position_embeddings"] = positions.into();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    for f in ["generation_config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    llada::load_model(dir).unwrap()
}

#[test]
fn a_prompt_prefilled_in_chunks_answers_as_one_prefilled_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let loaded = fixture_with_context(dir.path(), 4096);
    let case = &generate_cases_in(&fixture_2_2_dir(), &loaded)[0];
    // A 300-token prompt: block-routed, spanning many blocks.
    let prompt: Vec<u32> = (0..300).map(|i| (i * 37 % 500) as u32).collect();
    let mut params = case.params.clone();
    params.use_cache = false;
    let reference = generate(&loaded.model, &prompt, &params, &mut |_| {}).unwrap();
    params.use_cache = true;
    for chunk in [1024, 64, 8] {
        params.prefill_chunk = chunk;
        let out = generate(&loaded.model, &prompt, &params, &mut |_| {}).unwrap();
        assert_eq!(out.ids, reference.ids, "prefill chunk {chunk}");
        assert_eq!(out.stats.denoising_steps, reference.stats.denoising_steps);
        // The prompt's whole blocks go in chunks until at most one chunk is left, which
        // rides on the first denoising pass.
        let blocks = 300 / params.block_length * params.block_length;
        let chunk = chunk / params.block_length * params.block_length;
        let extra = blocks.saturating_sub(chunk).div_ceil(chunk);
        assert_eq!(
            out.stats.forwards,
            reference.stats.forwards + extra,
            "prefill chunk {chunk}: passes"
        );
    }
}

#[test]
fn a_half_precision_kv_cache_stays_close_to_f32() {
    let loaded = load_fixture_2_2();
    let cases = generate_cases_in(&fixture_2_2_dir(), &loaded);
    for kv in [KvDtype::F16, KvDtype::Bf16] {
        let mut same = 0;
        for case in &cases {
            let mut params = case.params.clone();
            params.kv_cache = kv;
            let out = generate(&loaded.model, &case.prompt, &params, &mut |_| {}).unwrap();
            same += usize::from(out.ids == case.output_ids);
        }
        // The fixture's confidences sit close together (see tests/quant.rs); most
        // answers survive rounding the cache.
        assert!(same >= 5, "{kv:?}: {same}/8 answers as with f32");
    }
}

#[test]
fn a_cache_that_cannot_fit_is_refused_with_the_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let loaded = fixture_with_context(dir.path(), 1 << 31);
    let mut params = loaded.default_params();
    params.gen_length = 1 << 30;
    params.set_block_length(8);
    let err = Generation::new(&loaded.model, &[1, 2, 3], params.clone())
        .err()
        .expect("refused");
    assert!(matches!(err, Error::CacheTooLarge { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("GiB") && text.contains("f32") && text.contains("available"),
        "{text}"
    );
    let cfg = loaded.model.config();
    let half = cfg.kv_cache_bytes(1000, KvDtype::Bf16);
    assert_eq!(2 * half, cfg.kv_cache_bytes(1000, KvDtype::F32));
    assert_eq!(half, 3 * 2 * 2 * 16 * 1000 * 2);
}
