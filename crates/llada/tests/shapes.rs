//! Nothing about the golden fixture's sizes is assumed: other head counts, groups,
//! expert counts, shared experts, dense layers, rotary fractions, biases, QK-norm off,
//! tied embeddings, dtypes and shard counts
//! give the same logits as an independent naive implementation, and the cached engine
//! decodes exactly as the no-cache reference loop.

use llada_testing as common;

use candle_core::DType;
use common::naive::Naive;
use common::synth::{write_checkpoint, Options, Shape};
use llada::{generate, load_model, DecoderConfig};

fn shapes() -> Vec<(Shape, DType, usize)> {
    let a = Shape {
        vocab: 300,
        hidden: 48,
        layers: 4,
        heads: 6,
        kv_heads: 2,
        head_dim: 12,
        rotary_factor: 1.0,
        intermediate: 80,
        experts: 12,
        experts_per_tok: 3,
        n_group: 3,
        topk_group: 2,
        moe_intermediate: 16,
        shared_experts: 2,
        dense_layers: 2,
        max_positions: 256,
        options: Options::default(),
    };
    let b = Shape {
        vocab: 200,
        hidden: 40,
        layers: 2,
        heads: 4,
        kv_heads: 1,
        head_dim: 20,
        rotary_factor: 0.4,
        intermediate: 64,
        experts: 6,
        experts_per_tok: 1,
        n_group: 1,
        topk_group: 1,
        moe_intermediate: 24,
        shared_experts: 0,
        dense_layers: 0,
        max_positions: 128,
        options: Options::default(),
    };
    let c = Shape {
        heads: 4,
        kv_heads: 4,
        head_dim: 8,
        rotary_factor: 0.5,
        ..b.clone()
    };
    // The switches real checkpoints leave off: biases, no QK-norm, tied embeddings.
    let d = Shape {
        options: Options {
            qkv_bias: true,
            dense_bias: true,
            no_qk_norm: true,
            tied: true,
        },
        ..c.clone()
    };
    vec![
        (a, DType::BF16, 3),
        (b, DType::F16, 1),
        (c, DType::F32, 2),
        (d, DType::F32, 1),
    ]
}

#[test]
fn other_shapes_dtypes_and_shards_match_a_naive_forward() {
    for (n, (shape, dtype, shards)) in shapes().into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = shape.config();
        let mask = shape.vocab as u32 - 1;
        let eos = shape.vocab as u32 - 2;
        let stored = write_checkpoint(
            dir.path(),
            &cfg,
            &shape.tensors(n as u64),
            dtype,
            shards,
            mask,
            eos,
        );
        let loaded = load_model(dir.path()).unwrap();
        let naive = Naive::new(&stored, &cfg);
        let ids: Vec<u32> = (0..23)
            .map(|i| (i * 37 + 5) % (shape.vocab as u32 - 2))
            .collect();
        for block in [1, 4, 8, 32] {
            let got = loaded
                .model
                .forward_full(&ids, block)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            let want = naive.forward(&ids, block);
            for (t, (g, w)) in got.iter().zip(&want).enumerate() {
                for (a, b) in g.iter().zip(w) {
                    let tol = 1e-4 * (1.0 + b.abs());
                    assert!(
                        (a - b).abs() < tol,
                        "shape {n} block {block} pos {t}: {a} vs {b}"
                    );
                }
            }
        }
    }
}

#[test]
fn other_shapes_decode_the_same_with_and_without_cache() {
    for (n, (shape, dtype, shards)) in shapes().into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let mask = shape.vocab as u32 - 1;
        let eos = shape.vocab as u32 - 2;
        write_checkpoint(
            dir.path(),
            &shape.config(),
            &shape.tensors(n as u64),
            dtype,
            shards,
            mask,
            eos,
        );
        let loaded = load_model(dir.path()).unwrap();
        let prompt: Vec<u32> = (0..11).map(|i| (i * 13 + 3) % eos).collect();
        let mut params = loaded.default_params();
        assert_eq!((params.mask_id, params.eos_id), (mask, eos));
        params.gen_length = 20;
        params.block_length = 4;
        params.steps = 3;
        params.decoder = DecoderConfig::Threshold { threshold: 0.6 };
        let cached = generate(&loaded.model, &prompt, &params, &mut |_| {}).unwrap();
        params.use_cache = false;
        let reference = generate(&loaded.model, &prompt, &params, &mut |_| {}).unwrap();
        assert_eq!(cached.ids, reference.ids, "shape {n}");
        assert_eq!(
            cached.stats.denoising_steps,
            reference.stats.denoising_steps
        );
        assert!(!cached.ids.is_empty());
    }
}
