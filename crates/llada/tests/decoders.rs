//! The decoders beyond the reference rule, end to end on the golden model: LLaDA2.1 joint
//! decoding against fixtures computed with the official modeling code under diffusers'
//! semantics (`joint_cases.json`), and the dInfer decoders' guarantees.

use llada_testing as common;

use common::{joint_cases, load_fixture};
use llada::{generate, DecodeSettings, DecoderConfig};

#[test]
fn joint_decoding_equals_the_reference_semantics() {
    let loaded = load_fixture();
    let cases = joint_cases(&loaded);
    assert!(cases.len() >= 16);
    let mut edits_seen = 0;
    for (n, case) in cases.into_iter().enumerate() {
        let mut params = case.params;
        for use_cache in [false, true] {
            params.use_cache = use_cache;
            let mut streamed = Vec::new();
            let out = generate(&loaded.model, &case.prompt, &params, &mut |ids| {
                streamed.extend_from_slice(ids)
            })
            .unwrap();
            assert_eq!(
                out.ids, case.output_ids,
                "case {n} (cache {use_cache}): ids"
            );
            assert_eq!(
                out.stats.edits, case.edits,
                "case {n} (cache {use_cache}): edits"
            );
            assert_eq!(
                out.stats.denoising_steps, case.forwards,
                "case {n} (cache {use_cache}): forward passes"
            );
            // Streamed text is final text: what was streamed is the answer.
            assert_eq!(streamed, out.ids, "case {n}: stream");
        }
        edits_seen += case.edits;
    }
    assert!(edits_seen > 0, "the fixtures exercise editing");
}

#[test]
fn dinfer_decoders_fill_every_block_and_never_emit_the_mask() {
    let loaded = load_fixture();
    for name in ["credit", "hierarchy"] {
        let mut params = loaded.default_params();
        let named = DecodeSettings {
            decoder: Some(name.to_string()),
            ..Default::default()
        };
        params.decoder = named.decoder_from(&DecoderConfig::default()).unwrap();
        params.gen_length = 40;
        params.block_length = 8;
        params.steps = 8;
        for use_cache in [true, false] {
            params.use_cache = use_cache;
            let out = generate(&loaded.model, &[5, 6, 7, 8, 9], &params, &mut |_| {}).unwrap();
            assert!(!out.ids.is_empty(), "{name}");
            assert!(!out.ids.contains(&params.mask_id), "{name}: {:?}", out.ids);
            // Every step fills at least one position: no more steps than masked positions.
            let masked = params.positions_needed(5) - 5;
            assert!(
                out.stats.denoising_steps <= masked,
                "{name}: {}",
                out.stats.denoising_steps
            );
        }
    }
}

/// Joint decoding written out plainly from diffusers' semantics, over the naive forward
/// (whole prefix every step, no cache): an implementation that shares nothing with the
/// engine's block loop or decoders.
fn naive_joint(
    naive: &common::naive::Naive,
    prompt: &[u32],
    gen: usize,
    block: usize,
    steps: usize,
    (threshold, editing, max_post): (f32, f32, usize),
    mask: u32,
) -> (Vec<u32>, usize) {
    let p = prompt.len();
    let total = (p + gen).div_ceil(block) * block;
    let mut x = prompt.to_vec();
    x.resize(total, mask);
    let steps = steps.min(gen);
    let schedule: Vec<usize> = (0..steps)
        .map(|i| block / steps + usize::from(i < block % steps))
        .collect();
    let mut edits = 0;
    for b in p / block..total / block {
        let (bs, be) = (b * block, (b + 1) * block);
        let (mut step, mut post) = (0, 0);
        loop {
            let masks_remaining = x[bs..be].contains(&mask);
            if !masks_remaining {
                post += 1;
            }
            let logits = naive.forward(&x[..be], block);
            let pick = |i: usize| {
                let row = &logits[i];
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let best = row.iter().position(|&v| v == max).unwrap();
                let sum: f64 = row.iter().map(|&v| ((v - max) as f64).exp()).sum();
                (best as u32, (1.0 / sum) as f32)
            };
            let mut fill = Vec::new();
            if masks_remaining {
                let n = schedule[step.min(schedule.len() - 1)];
                let masked: Vec<usize> = (bs..be).filter(|&i| x[i] == mask).collect();
                let confident: Vec<usize> = masked
                    .iter()
                    .copied()
                    .filter(|&i| pick(i).1 > threshold)
                    .collect();
                fill = if confident.len() >= n {
                    confident
                } else {
                    let mut order = masked.clone();
                    order.sort_by(|&a, &c| pick(c).1.total_cmp(&pick(a).1).then(a.cmp(&c)));
                    order.truncate(n);
                    order
                };
            }
            let edit: Vec<usize> = (bs..be)
                .filter(|&i| i >= p && x[i] != mask)
                .filter(|&i| {
                    let (t, c) = pick(i);
                    t != x[i] && c > editing
                })
                .collect();
            for &i in fill.iter().chain(&edit) {
                x[i] = pick(i).0;
            }
            edits += edit.len();
            if masks_remaining {
                step += 1;
            }
            let stop = if masks_remaining {
                step >= schedule.len()
            } else {
                edit.is_empty() || post > max_post
            };
            if stop {
                break;
            }
        }
    }
    (x[p..p + gen].to_vec(), edits)
}

#[test]
fn joint_decoding_equals_a_plain_implementation_on_other_shapes() {
    use common::naive::Naive;
    use common::synth::{write_checkpoint, Options, Shape};
    let shape = Shape {
        vocab: 96,
        hidden: 32,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        head_dim: 8,
        rotary_factor: 0.5,
        intermediate: 40,
        experts: 6,
        experts_per_tok: 2,
        n_group: 3,
        topk_group: 2,
        moe_intermediate: 12,
        shared_experts: 1,
        dense_layers: 1,
        max_positions: 128,
        options: Options::default(),
    };
    let mut total_edits = 0;
    for seed in 0..3u64 {
        let dir = tempfile::tempdir().unwrap();
        let cfg = shape.config();
        // The tensors scaled down so that confidences spread and editing happens.
        let tensors: std::collections::HashMap<_, _> = shape
            .tensors(seed)
            .into_iter()
            .map(|(k, v)| {
                let v = if k.contains("norm") {
                    v
                } else {
                    (v * 0.6).unwrap()
                };
                (k, v)
            })
            .collect();
        let (mask, eos) = (95, 94);
        let stored = write_checkpoint(
            dir.path(),
            &cfg,
            &tensors,
            candle_core::DType::F32,
            1,
            mask,
            eos,
        );
        let loaded = llada::load_model(dir.path()).unwrap();
        let naive = Naive::new(&stored, &cfg);
        let prompt: Vec<u32> = (0..7)
            .map(|i| (i * 11 + seed as u32 * 5 + 3) % 90)
            .collect();
        for (block, steps, settings) in [(8, 8, (0.5, 0.3, 2)), (4, 2, (0.3, 0.2, 16))] {
            let (want, want_edits) = naive_joint(&naive, &prompt, 24, block, steps, settings, mask);
            let mut params = loaded.default_params();
            params.ignore_eos = true;
            params.gen_length = 24;
            params.block_length = block;
            params.steps = steps;
            params.decoder = DecoderConfig::Joint {
                threshold: settings.0,
                editing_threshold: settings.1,
                max_post_steps: settings.2,
            };
            for use_cache in [true, false] {
                params.use_cache = use_cache;
                let out = generate(&loaded.model, &prompt, &params, &mut |_| {}).unwrap();
                assert_eq!(out.ids, want, "seed {seed} block {block} cache {use_cache}");
                assert_eq!(out.stats.edits, want_edits, "seed {seed} block {block}");
            }
            total_edits += want_edits;
        }
    }
    assert!(total_edits > 0, "the shapes exercise editing");
}
