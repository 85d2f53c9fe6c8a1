//! Approximate block caching (`BlockCache::Dual`): its partial passes reuse keys/values
//! correctly, it degrades to exact decoding when refreshed every step, and it does less
//! work than exact decoding.

use llada_testing as common;

use common::{load_fixture, max_abs_diff};
use llada::{generate, BlockCache, DecoderConfig, KvCache, SeqStep, Wanted};

#[test]
fn a_partial_pass_over_unchanged_tokens_gives_the_full_pass_logits() {
    let loaded = load_fixture();
    let model = &loaded.model;
    let tokens: Vec<u32> = vec![5, 17, 300, 42, 9, 88, 120, 7];
    let all: Vec<usize> = (0..tokens.len()).collect();
    let mut cache = KvCache::new(model.config().num_hidden_layers);
    let mut pass = |logit_rows: &[usize], compute: Option<&[usize]>| {
        model
            .forward(&mut [SeqStep {
                tokens: &tokens,
                start: 0,
                block_length: 8,
                commit: 0,
                logit_rows,
                compute,
                wanted: Wanted::Logits,
                cache: &mut cache,
            }])
            .unwrap()
            .remove(0)
            .unwrap()
            .into_logits()
            .unwrap()
    };
    let full = pass(&all, None);
    // The keys/values of rows 0, 1, 3, 4 and 6 come from the full pass; the tokens did not
    // change, so the computed rows must see exactly what the full pass saw.
    let rows = [2usize, 5, 7];
    let partial = pass(&rows, Some(&rows));
    let idx = candle_core::Tensor::new(&[2u32, 5, 7], full.device()).unwrap();
    let expected = full.index_select(&idx, 0).unwrap();
    let diff = max_abs_diff(&partial, &expected);
    assert!(diff < 1e-4, "partial pass logits differ by {diff}");
}

#[test]
fn partial_passes_that_break_the_rules_are_refused() {
    let loaded = load_fixture();
    let model = &loaded.model;
    let tokens: Vec<u32> = vec![5, 17, 300, 42];
    let mut cache = KvCache::new(model.config().num_hidden_layers);
    let mut step = |commit: usize, logit_rows: &[usize], compute: &[usize], block: usize| {
        model
            .forward(&mut [SeqStep {
                tokens: &tokens,
                start: 0,
                block_length: block,
                commit,
                logit_rows,
                compute: Some(compute),
                wanted: Wanted::Logits,
                cache: &mut cache,
            }])
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    assert!(step(0, &[], &[], 4).contains("increasing rows"));
    assert!(step(0, &[], &[2, 1], 4).contains("increasing rows"));
    assert!(step(0, &[], &[4], 4).contains("increasing rows"));
    assert!(step(1, &[], &[1], 4).contains("one block"));
    assert!(step(0, &[], &[1], 2).contains("one block"));
    assert!(step(0, &[0], &[1], 4).contains("computed rows"));
    // No full pass wrote these positions yet.
    assert!(step(0, &[1], &[1], 4).contains("full pass"));
}

#[test]
fn dual_refreshed_every_step_is_exact_decoding() {
    let loaded = load_fixture();
    for (prompt, threshold, decoder) in [
        (vec![1u32, 2, 3, 4, 5], 0.9f32, "threshold"),
        (
            vec![40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50],
            0.5,
            "threshold",
        ),
        (vec![7, 8, 9], 0.7, "joint"),
    ] {
        let mut params = loaded.default_params();
        params.gen_length = 40;
        params.block_length = 8;
        params.steps = 8;
        let settings = llada::DecodeSettings {
            decoder: Some(decoder.to_string()),
            threshold: Some(threshold),
            ..Default::default()
        };
        params.decoder = settings.decoder_from(&DecoderConfig::default()).unwrap();
        let exact = generate(&loaded.model, &prompt, &params, &mut |_| {}).unwrap();
        params.block_cache = BlockCache::Dual { refresh: 1 };
        let dual = generate(&loaded.model, &prompt, &params, &mut |_| {}).unwrap();
        assert_eq!(dual.ids, exact.ids);
        assert_eq!(dual.stats.forwards, exact.stats.forwards);
        assert_eq!(dual.stats.edits, exact.stats.edits);
    }
}

#[test]
fn dual_does_less_work_and_fills_every_position() {
    let loaded = load_fixture();
    let model = &loaded.model;
    let prompt = vec![11u32, 12, 13, 14, 15, 16];
    let mut params = loaded.default_params();
    params.gen_length = 32;
    params.block_length = 16;
    params.steps = 16;
    // One token per step: a block's later steps leave most positions unchanged.
    params.decoder = DecoderConfig::Threshold { threshold: 1.0 };
    params.ignore_eos = true;
    let macs = |params: &llada::GenerateParams| {
        let before = model.cost().macs;
        let out = generate(model, &prompt, params, &mut |_| {}).unwrap();
        (out, model.cost().macs - before)
    };
    let (exact, exact_macs) = macs(&params);
    params.block_cache = BlockCache::Dual { refresh: 0 };
    let (dual, dual_macs) = macs(&params);
    assert_eq!(dual.ids.len(), 32);
    assert!(!dual.ids.contains(&params.mask_id));
    assert_eq!(dual.stats.forwards, exact.stats.forwards);
    assert!(
        (dual_macs as f64) < 0.75 * exact_macs as f64,
        "dual {dual_macs} MACs vs exact {exact_macs}"
    );
    // A refresh every 4 steps sits in between.
    params.block_cache = BlockCache::Dual { refresh: 4 };
    let (_, refreshed_macs) = macs(&params);
    assert!(dual_macs < refreshed_macs && refreshed_macs < exact_macs);
}

#[test]
fn dual_needs_the_kv_cache() {
    let loaded = load_fixture();
    let mut params = loaded.default_params();
    params.use_cache = false;
    params.block_cache = BlockCache::Dual { refresh: 0 };
    let err = generate(&loaded.model, &[1, 2, 3], &params, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("block_cache"), "{err}");
    assert!(BlockCache::named("fast", 0).is_err());
}
