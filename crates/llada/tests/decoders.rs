//! The decoders beyond the reference rule, end to end on the golden model: LLaDA2.1 joint
//! decoding against fixtures computed with the official modeling code under diffusers'
//! semantics (`joint_cases.json`), and the dInfer decoders' guarantees.

mod common;

use common::{fixture_dir, load_fixture};
use llada::decode::DecoderSettings;
use llada::{generate, DecoderConfig};

#[test]
fn joint_decoding_equals_the_reference_semantics() {
    let loaded = load_fixture();
    let text = std::fs::read_to_string(fixture_dir().join("joint_cases.json")).unwrap();
    let file: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases = file["cases"].as_array().unwrap();
    assert!(cases.len() >= 16);
    let mut edits_seen = 0;
    for (n, case) in cases.iter().enumerate() {
        let num = |k: &str| case[k].as_f64().unwrap();
        let mut params = loaded.default_params();
        params.eos_id = file["eos_id"].as_u64().unwrap() as u32;
        params.mask_id = file["mask_id"].as_u64().unwrap() as u32;
        params.gen_length = num("gen_length") as usize;
        params.block_length = num("block_length") as usize;
        params.steps = num("steps") as usize;
        params.decoder = DecoderConfig::Joint {
            threshold: num("threshold") as f32,
            editing_threshold: num("editing_threshold") as f32,
            max_post_steps: num("max_post_steps") as usize,
        };
        let prompt: Vec<u32> = serde_json::from_value(case["prompt_ids"].clone()).unwrap();
        let want: Vec<u32> = serde_json::from_value(case["output_ids"].clone()).unwrap();
        for use_cache in [false, true] {
            params.use_cache = use_cache;
            let mut streamed = Vec::new();
            let out = generate(&loaded.model, &prompt, &params, &mut |ids| {
                streamed.extend_from_slice(ids)
            })
            .unwrap();
            assert_eq!(out.ids, want, "case {n} (cache {use_cache}): ids");
            assert_eq!(
                out.stats.edits,
                num("edits") as usize,
                "case {n} (cache {use_cache}): edits"
            );
            assert_eq!(
                out.stats.denoising_steps,
                num("forwards") as usize,
                "case {n} (cache {use_cache}): forward passes"
            );
            // Streamed text is final text: what was streamed is the answer.
            assert_eq!(streamed, out.ids, "case {n}: stream");
        }
        edits_seen += num("edits") as usize;
    }
    assert!(edits_seen > 0, "the fixtures exercise editing");
}

#[test]
fn dinfer_decoders_fill_every_block_and_never_emit_the_mask() {
    let loaded = load_fixture();
    for name in ["credit", "hierarchy"] {
        let mut params = loaded.default_params();
        params.decoder = DecoderConfig::named(name, DecoderSettings::default()).unwrap();
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
