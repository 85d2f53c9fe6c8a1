//! Property: the cached engine returns exactly what the no-cache reference loop returns,
//! for any prompt and decoding settings (greedy or seeded sampling).

use llada_testing as common;

use common::load_fixture;
use llada::{generate, DecoderConfig, SamplingParams};
use proptest::prelude::*;

proptest! {
    // A fixed seed keeps CI deterministic; PROPTEST_RNG_SEED explores other inputs.
    #![proptest_config(ProptestConfig {
        cases: 48,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x11ada),
        ..ProptestConfig::default()
    })]

    #[test]
    fn cached_equals_no_cache(
        prompt in prop::collection::vec(0u32..509, 1..40),
        gen_length in 1usize..48,
        block_length in 1usize..17,
        steps in 1usize..17,
        threshold in 0.3f32..1.0,
        temperature in prop::sample::select(vec![0.0f32, 0.7, 1.0]),
        top_k in prop::option::of(1usize..50),
        top_p in prop::option::of(0.5f32..1.0),
        seed in any::<u64>(),
        eos_id in prop::sample::select(vec![509u32, 88, 98, 36]),
        eos_early_stop in any::<bool>(),
    ) {
        let loaded = load_fixture();
        let mut params = loaded.default_params();
        params.gen_length = gen_length;
        params.block_length = block_length;
        params.steps = steps;
        params.decoder = DecoderConfig::Threshold { threshold };
        params.sampling = SamplingParams { temperature, top_k, top_p };
        params.seed = seed;
        params.eos_id = eos_id;
        params.eos_early_stop = eos_early_stop;
        let cached = generate(&loaded.model, &prompt, &params, &mut |_| {}).unwrap();
        params.use_cache = false;
        let reference = generate(&loaded.model, &prompt, &params, &mut |_| {}).unwrap();
        prop_assert_eq!(&cached.ids, &reference.ids);
        prop_assert_eq!(cached.stats.denoising_steps, reference.stats.denoising_steps);
        prop_assert!(cached.ids.len() <= gen_length);
        if let Some(pos) = cached.ids.iter().position(|&t| t == eos_id) {
            prop_assert_eq!(pos + 1, cached.ids.len(), "answer ends at its first EOS");
        }
        prop_assert!(!cached.ids.contains(&params.mask_id));
    }
}
