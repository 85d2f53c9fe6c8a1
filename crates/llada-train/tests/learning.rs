//! The training path learns: gradients reach every kind of weight (router included),
//! and a few optimizer steps lower each stage's loss.

use std::path::PathBuf;

use candle_core::Device;
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use llada::{Llada2Config, WeightStore};
use llada_train::loss::{autoregressive_loss, block_diffusion_loss, Weighting};
use llada_train::noise::mask_tokens;
use llada_train::params::TrainableModel;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/golden/llada2-tiny")
}

fn tiny() -> TrainableModel {
    let dir = fixture();
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
    let out = block_diffusion_loss(
        &m.model,
        &clean,
        &noised,
        4,
        None,
        Weighting::InverseT,
        0.0,
        None,
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
        block_diffusion_loss(
            &m.model,
            &clean,
            &noised,
            8,
            None,
            Weighting::InverseT,
            0.0,
            Some((0.1, 3)),
        )
        .unwrap()
        .loss
    });
    assert!(last < 0.5 * first, "block diffusion: {first} -> {last}");
    let (first, last) = train(15, |m| {
        autoregressive_loss(&m.model, &clean, None).unwrap().loss
    });
    assert!(last < 0.5 * first, "AR: {first} -> {last}");
    let (first, last) = train(15, |m| {
        block_diffusion_loss(
            &m.model,
            &clean,
            &noised,
            16,
            None,
            Weighting::MaskedMean,
            2.0,
            None,
        )
        .unwrap()
        .loss
    });
    assert!(last < 0.5 * first, "with CAP: {first} -> {last}");
}
