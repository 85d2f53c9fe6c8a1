//! Sampled decoding against an independent reference: the same logits and the same
//! uniform numbers through llada's sampler and through a Python implementation of the
//! official pipeline (temperature, top-k, top-p, softmax; `tests/data/sampling_reference.py`,
//! standard library only) must pick the same tokens with the same probabilities.

use llada_testing as common;

use std::path::PathBuf;

use llada::{Sampler, SamplingParams};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn reference(cases: &serde_json::Value) -> Vec<(u32, f64)> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/sampling_reference.py");
    serde_json::from_value(common::python::run_json(&script, cases)).unwrap()
}

#[test]
fn sampled_tokens_equal_the_reference_given_the_same_uniforms() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let settings = [
        (1.0, None, None),
        (0.7, Some(5), None),
        (1.3, None, Some(0.8)),
        (0.5, Some(20), Some(0.9)),
        (2.0, Some(1), None),
        (1e-3, None, None),
    ];
    let mut cases = Vec::new();
    let mut ours = Vec::new();
    for (t, top_k, top_p) in settings {
        let params = SamplingParams {
            temperature: t,
            top_k,
            top_p,
        };
        let rows: Vec<Vec<f32>> = (0..40)
            .map(|_| (0..64).map(|_| rng.random::<f32>() * 8.0 - 4.0).collect())
            .collect();
        let uniforms: Vec<f32> = (0..rows.len()).map(|_| rng.random()).collect();
        let mut sampler = Sampler::with_uniforms(params, uniforms.clone());
        for (row, u) in rows.iter().zip(&uniforms) {
            ours.push(sampler.pick(row));
            cases.push(serde_json::json!({
                "logits": row, "temperature": t, "top_k": top_k, "top_p": top_p, "u": u,
            }));
        }
    }
    let want = reference(&serde_json::json!({ "cases": cases }));
    assert_eq!(want.len(), ours.len());
    let mut distinct = std::collections::HashSet::new();
    for (i, ((tok, prob), (want_tok, want_prob))) in ours.iter().zip(&want).enumerate() {
        assert_eq!(tok, want_tok, "case {i}: {}", cases[i]);
        assert!(
            (*prob as f64 - want_prob).abs() < 1e-5,
            "case {i}: probability {prob} vs {want_prob}"
        );
        distinct.insert(*tok);
    }
    // The cases really sample: many different tokens come out.
    assert!(distinct.len() > 20, "{} distinct tokens", distinct.len());
}
