//! LLaDA2.2's block routing against `fixtures/golden/llada2_2-tiny` (the official
//! modeling code with its MoE gate patched to route by block; see
//! `fixtures/golden/README.md`).

use llada_testing as common;

use candle_core::{Device, Tensor};
use common::{fixture_2_2_dir, generate_cases_in, golden_in, load_fixture_2_2, max_abs_diff};
use llada::{generate, Llada2Config};

fn expected() -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture_2_2_dir().join("logits.safetensors"), &Device::Cpu)
        .unwrap()
}

#[test]
fn the_config_carries_block_routing() {
    let cfg = load_fixture_2_2().model.config().clone();
    assert_eq!(cfg.expert_capacity, 4);
    assert_eq!(cfg.routing_block(), 4);
    assert_eq!(
        (cfg.delete_token_id, cfg.split_token_id),
        (Some(507), Some(508))
    );
    assert!(cfg.check_block_length(8).is_ok());
    let err = cfg.check_block_length(6).unwrap_err().to_string();
    assert!(
        err.contains("block_length") && err.contains("routing block (4"),
        "{err}"
    );
}

#[test]
fn forward_logits_match_the_reference() {
    let loaded = load_fixture_2_2();
    let cases = golden_in(&fixture_2_2_dir());
    let expected = expected();
    let forward = cases["forward"].as_array().unwrap();
    assert_eq!(forward.len(), 3);
    for case in forward {
        let ids: Vec<u32> = serde_json::from_value(case["input_ids"].clone()).unwrap();
        let block = case["block_length"].as_u64().unwrap() as usize;
        let name = case["logits"].as_str().unwrap();
        let got = loaded.model.forward_full(&ids, block).unwrap();
        let diff = max_abs_diff(&got, &expected[name]);
        assert!(diff < 1e-4, "{name}: max |diff| = {diff}");
    }
}

/// The experts each token is routed to, read back through the CPU model's router: the
/// routing itself, not only its effect on the logits.
#[test]
fn tokens_take_the_reference_experts() {
    let loaded = load_fixture_2_2();
    let cases = golden_in(&fixture_2_2_dir());
    let expected = expected();
    let llada::Model::Cpu(model) = &loaded.model else {
        panic!("the fixture loads on the CPU")
    };
    for case in cases["forward"].as_array().unwrap() {
        let ids: Vec<u32> = serde_json::from_value(case["input_ids"].clone()).unwrap();
        let block = case["block_length"].as_u64().unwrap() as usize;
        let routes = model.expert_choices(&ids, block).unwrap();
        for (layer, name) in case["experts"].as_object().unwrap() {
            let layer: usize = layer.parse().unwrap();
            let want: Vec<Vec<i64>> = expected[name.as_str().unwrap()].to_vec2().unwrap();
            let got: Vec<Vec<i64>> = routes[layer]
                .iter()
                .map(|experts| {
                    let mut e: Vec<i64> = experts.iter().map(|&e| e as i64).collect();
                    e.sort();
                    e
                })
                .collect();
            assert_eq!(got, want, "{name}");
        }
    }
}

#[test]
fn generate_matches_the_reference_with_and_without_cache() {
    let loaded = load_fixture_2_2();
    let cases = generate_cases_in(&fixture_2_2_dir(), &loaded);
    assert_eq!(cases.len(), 8);
    for (n, case) in cases.into_iter().enumerate() {
        let mut params = case.params;
        for use_cache in [false, true] {
            params.use_cache = use_cache;
            let out = generate(&loaded.model, &case.prompt, &params, &mut |_| {}).unwrap();
            assert_eq!(out.ids, case.output_ids, "case {n} (cache: {use_cache})");
            assert_eq!(
                out.stats.denoising_steps, case.denoising_forwards,
                "case {n} (cache: {use_cache})"
            );
        }
    }
}

#[test]
fn bad_block_routing_configs_are_refused() {
    let text = std::fs::read_to_string(fixture_2_2_dir().join("config.json")).unwrap();
    let base: serde_json::Value = serde_json::from_str(&text).unwrap();
    let refuse = |key: &str, value: serde_json::Value, needle: &str| {
        let mut cfg = base.clone();
        cfg[key] = value;
        let err = Llada2Config::from_json(cfg, std::path::Path::new("config.json"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{key}: {err}");
    };
    refuse("expert_capacity", 9.into(), "expert_capacity (9)");
    refuse("expert_capacity", 1.into(), "expert_capacity (1)");
    refuse("block_size", serde_json::Value::Null, "block_size");
    refuse("delete_token_id", 512.into(), "delete_token_id 512");
    refuse("split_token_id", 600.into(), "split_token_id 600");
}

/// Block routing in the batched path: the cases decoded together answer as alone.
#[test]
fn batched_decoding_routes_each_sequence_by_its_own_blocks() {
    let loaded = load_fixture_2_2();
    let cases = generate_cases_in(&fixture_2_2_dir(), &loaded);
    let mut gens: Vec<llada::Generation> = cases
        .iter()
        .map(|c| llada::Generation::new(&loaded.model, &c.prompt, c.params.clone()).unwrap())
        .collect();
    llada::run_batch(&loaded.model, &mut gens, &mut |_, _| {}).unwrap();
    for (n, (g, case)) in gens.into_iter().zip(&cases).enumerate() {
        assert_eq!(g.finish().ids, case.output_ids, "case {n}");
    }
}

/// The dual block cache (refreshing every pass: no approximation left) and load-time
/// quantization run with block routing. Whole generations on this random-weight fixture
/// are too close to ties for q8_0 to keep (as on `llada2-tiny`); per-position argmaxes
/// are the stable figure.
#[test]
fn dual_cache_and_quantized_weights_run_with_block_routing() {
    let loaded = load_fixture_2_2();
    let cases = generate_cases_in(&fixture_2_2_dir(), &loaded);
    for (n, case) in cases.iter().enumerate() {
        let mut params = case.params.clone();
        params.block_cache = llada::BlockCache::Dual { refresh: 1 };
        let out = generate(&loaded.model, &case.prompt, &params, &mut |_| {}).unwrap();
        assert_eq!(out.ids, case.output_ids, "case {n} (dual cache, refresh 1)");
    }
    let q8 = llada::load_model_with(&fixture_2_2_dir(), Some(llada::Quant::Q8_0)).unwrap();
    let (mut same, mut positions) = (0, 0);
    for case in golden_in(&fixture_2_2_dir())["forward"].as_array().unwrap() {
        let ids: Vec<u32> = serde_json::from_value(case["input_ids"].clone()).unwrap();
        let block = case["block_length"].as_u64().unwrap() as usize;
        let argmax = |m: &llada::Model| -> Vec<u32> {
            let logits = m.forward_full(&ids, block).unwrap();
            logits.argmax(1).unwrap().to_vec1().unwrap()
        };
        let (a, b) = (argmax(&loaded.model), argmax(&q8.model));
        same += a.iter().zip(&b).filter(|(x, y)| x == y).count();
        positions += a.len();
    }
    let share = same as f64 / positions as f64;
    assert!(share > 0.9, "q8_0 argmax agreement {share:.3}");
}
