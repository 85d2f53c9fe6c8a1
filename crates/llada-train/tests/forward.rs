//! The training forward is the engine's model on a backend with gradients: it gives the
//! reference's logits, and after a training step the inference forward reads the
//! updated weights as the training forward computed with them.

use llada_testing as common;

use candle_core::{Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use llada::{Llada2Config, WeightSource, WeightStore};
use llada_train::forward::{forward, TrainModel};
use llada_train::loss::{loss_of, LossRow, Weighting};
use llada_train::noise::mask_tokens;
use llada_train::params::{save_weights, TrainableModel};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// The additive block-causal mask of `n` tokens in blocks of `block`.
fn block_causal(n: usize, block: usize) -> Tensor {
    let mask: Vec<f32> = (0..n * n)
        .map(|i| {
            if (i % n) / block <= (i / n) / block {
                0.0
            } else {
                f32::NEG_INFINITY
            }
        })
        .collect();
    Tensor::from_vec(mask, (n, n), &Device::Cpu).unwrap()
}

fn train_forward(model: &TrainModel, ids: &[u32], block: usize) -> Tensor {
    let positions: Vec<u32> = (0..ids.len() as u32).collect();
    forward(
        model,
        ids,
        &positions,
        &block_causal(ids.len(), block),
        None,
    )
    .unwrap()
}

fn fixture() -> (Llada2Config, WeightStore) {
    let dir = common::fixture_dir();
    let cfg = Llada2Config::from_file(&dir.join("config.json")).unwrap();
    let store = WeightStore::open(&dir, &Device::Cpu, candle_core::DType::F32).unwrap();
    (cfg, store)
}

#[test]
fn training_forward_matches_the_reference() {
    // The differentiable ops (fused norms, softmax and SwiGLU with a backward, explicit
    // positions and mask) compute the reference's function.
    let (cfg, store) = fixture();
    let model = TrainableModel::new(&cfg, &store).unwrap();
    let expected = candle_core::safetensors::load(
        common::fixture_dir().join("logits.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    for case in common::golden()["forward"].as_array().unwrap() {
        let ids: Vec<u32> = serde_json::from_value(case["input_ids"].clone()).unwrap();
        let block = case["block_length"].as_u64().unwrap() as usize;
        let got = train_forward(&model.model, &ids, block);
        let want = &expected[case["logits"].as_str().unwrap()];
        let diff = common::max_abs_diff(&got, want);
        assert!(diff < 1e-4, "max |diff| = {diff}");
    }
}

#[test]
fn after_a_training_step_inference_computes_the_training_logits() {
    let (cfg, store) = fixture();
    let m = TrainableModel::new(&cfg, &store).unwrap();
    let ids: Vec<u32> = (0..12).map(|i| (i * 37 + 5) % 500).collect();
    let before = train_forward(&m.model, &ids, 4);

    // One optimizer step on a block-diffusion loss, large enough to move every logit.
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let noised = mask_tokens(&ids, 0.5, 510, None, &mut rng);
    let row = LossRow::block_diffusion(
        &m.model,
        &ids,
        &noised,
        4,
        None,
        Weighting::InverseT,
        0.0,
        None,
    )
    .unwrap();
    let loss = loss_of(&m.model, row).unwrap().loss;
    let params = ParamsAdamW {
        lr: 1e-2,
        ..Default::default()
    };
    let mut opt = AdamW::new(m.vars(), params).unwrap();
    opt.backward_step(&loss).unwrap();
    let trained = train_forward(&m.model, &ids, 4);
    let moved = common::max_abs_diff(&trained, &before);
    assert!(moved > 1e-2, "the step changed the logits by {moved} only");

    // The updated weights as a model folder, read by the inference path.
    let dir = tempfile::tempdir().unwrap();
    let buffers = store
        .tensor_shapes()
        .into_iter()
        .filter(|(name, _)| name.ends_with("expert_bias"))
        .map(|(name, shape)| {
            let t = store.get(&name, &shape).unwrap();
            (name, t)
        })
        .collect();
    save_weights(dir.path(), &m.tensors(&buffers)).unwrap();
    llada::files::copy_companion_files(&common::fixture_dir(), dir.path()).unwrap();
    let loaded = llada::load_model(dir.path()).unwrap();
    let inference = loaded.model.forward_full(&ids, 4).unwrap();
    let diff = common::max_abs_diff(&inference, &trained);
    assert!(
        diff < 1e-4,
        "inference vs training logits: max |diff| = {diff}"
    );
}
