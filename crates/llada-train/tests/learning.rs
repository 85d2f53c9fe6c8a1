//! The training path learns: gradients reach every kind of weight (router included),
//! and a few optimizer steps lower each stage's loss.

// The helpers of llada's tests (tests of different crates share no module).
use llada_testing as common;

use candle_core::Device;
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use llada::{Llada2Config, WeightStore};
use llada_train::loss::{loss_of, losses, LossRow, Weighting};
use llada_train::noise::mask_tokens;
use llada_train::params::TrainableModel;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn tiny() -> TrainableModel {
    let dir = common::fixture_dir();
    let cfg = Llada2Config::from_file(&dir.join("config.json")).unwrap();
    let store = WeightStore::open(&dir, &Device::Cpu, candle_core::DType::F32).unwrap();
    TrainableModel::new(&cfg, &store).unwrap()
}

#[test]
fn gradients_reach_embeddings_attention_router_experts_and_head() {
    let m = tiny();
    let clean: Vec<u32> = (0..16).map(|i| (i * 31 + 7) % 500).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let noised = mask_tokens(&clean, 0.5, 510, None, &mut rng);
    let out = loss_of(
        &m.model,
        LossRow::block_diffusion(
            &m.model,
            &clean,
            &noised,
            4,
            None,
            Weighting::InverseT,
            0.0,
            None,
        )
        .unwrap(),
    )
    .unwrap();
    let grads = out.loss.backward().unwrap();
    for name in [
        "model.word_embeddings.weight",
        "model.layers.0.attention.query_key_value.weight",
        "model.layers.0.attention.query_layernorm.weight",
        "model.layers.0.mlp.gate_proj.weight",
        "model.layers.1.mlp.gate.weight",
        "model.layers.2.mlp.shared_experts.down_proj.weight",
        "model.norm.weight",
        "lm_head.weight",
    ] {
        let (_, var) = m.params.iter().find(|(n, _)| n == name).unwrap();
        let g = grads
            .get(var)
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let norm = g
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(norm > 0.0 && norm.is_finite(), "{name}: |g|^2 = {norm}");
    }
    assert!(!m.params.iter().any(|(n, _)| n.ends_with("expert_bias")));
}

fn train(steps: usize, mut loss: impl FnMut(&TrainableModel) -> candle_core::Tensor) -> (f32, f32) {
    let m = tiny();
    let mut opt = AdamW::new(
        m.vars(),
        ParamsAdamW {
            lr: 3e-3,
            ..Default::default()
        },
    )
    .unwrap();
    let first = loss(&m).to_scalar::<f32>().unwrap();
    let mut last = first;
    for _ in 0..steps {
        let l = loss(&m);
        last = l.to_scalar::<f32>().unwrap();
        opt.backward_step(&l).unwrap();
    }
    (first, last)
}

#[test]
fn block_diffusion_and_ar_losses_fall() {
    let clean: Vec<u32> = (0..16).map(|i| (i * 17 + 3) % 500).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let noised = mask_tokens(&clean, 0.5, 510, None, &mut rng);
    let (first, last) = train(15, |m| {
        loss_of(
            &m.model,
            LossRow::block_diffusion(
                &m.model,
                &clean,
                &noised,
                8,
                None,
                Weighting::InverseT,
                0.0,
                Some((0.1, 3)),
            )
            .unwrap(),
        )
        .unwrap()
        .loss
    });
    assert!(last < 0.5 * first, "block diffusion: {first} -> {last}");
    let (first, last) = train(15, |m| {
        loss_of(&m.model, LossRow::autoregressive(&clean, None).unwrap())
            .unwrap()
            .loss
    });
    assert!(last < 0.5 * first, "AR: {first} -> {last}");
    let (first, last) = train(15, |m| {
        loss_of(
            &m.model,
            LossRow::block_diffusion(
                &m.model,
                &clean,
                &noised,
                16,
                None,
                Weighting::MaskedMean,
                2.0,
                None,
            )
            .unwrap(),
        )
        .unwrap()
        .loss
    });
    assert!(last < 0.5 * first, "with CAP: {first} -> {last}");
}

/// A step's rows run in one forward pass: each row's loss and gradients equal those of
/// the row alone (rows of different lengths and kinds, one with embedding noise).
#[test]
fn rows_in_one_forward_pass_equal_rows_alone() {
    let m = tiny();
    let a: Vec<u32> = (0..16).map(|i| (i * 17 + 3) % 500).collect();
    let b: Vec<u32> = (0..12).map(|i| (i * 29 + 11) % 500).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let noised_a = mask_tokens(&a, 0.5, 510, None, &mut rng);
    let noised_b = mask_tokens(&b, 0.7, 510, None, &mut rng);
    let rows = || {
        vec![
            LossRow::block_diffusion(
                &m.model,
                &a,
                &noised_a,
                4,
                None,
                Weighting::InverseT,
                0.0,
                Some((0.1, 5)),
            )
            .unwrap(),
            LossRow::autoregressive(&b, None).unwrap(),
            LossRow::block_diffusion(
                &m.model,
                &b,
                &noised_b,
                3,
                None,
                Weighting::MaskedMean,
                1.0,
                None,
            )
            .unwrap(),
        ]
    };
    let together = losses(&m.model, &rows()).unwrap();
    let alone: Vec<_> = rows()
        .into_iter()
        .map(|r| loss_of(&m.model, r).unwrap())
        .collect();
    let sum = |outs: &[llada_train::loss::LossOutput]| {
        let parts: Vec<_> = outs.iter().map(|o| o.loss.clone()).collect();
        candle_core::Tensor::stack(&parts, 0)
            .unwrap()
            .sum_all()
            .unwrap()
    };
    for (x, y) in together.iter().zip(&alone) {
        let (x, y) = (
            x.loss.to_scalar::<f32>().unwrap(),
            y.loss.to_scalar::<f32>().unwrap(),
        );
        assert!((x - y).abs() < 1e-5 * y.abs().max(1.0), "{x} vs {y}");
    }
    let (g_together, g_alone) = (
        sum(&together).backward().unwrap(),
        sum(&alone).backward().unwrap(),
    );
    for (name, var) in m.params.iter().take(6) {
        let (x, y) = (g_together.get(var).unwrap(), g_alone.get(var).unwrap());
        let diff = common::max_abs_diff(x, y);
        assert!(diff < 1e-5, "{name}: gradients differ by {diff}");
    }
}
