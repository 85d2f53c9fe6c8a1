//! Quantization on a trained model: the default model's answers to generated task items,
//! quantized at load time, against its f32 answers. (The golden fixture has random,
//! deliberately peaked weights whose confidences sit too close together for this to be
//! a useful yardstick there; see crates/llada/tests/quant.rs.)
//!
//! `cargo test -p llada-train --test quant_agreement -- --nocapture` prints the figures
//! the README quotes.

use std::path::PathBuf;

use llada::{generate, load_model_with, Device, LoadedModel, Quant};

fn default_model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/default")
}

fn answers(m: &LoadedModel, items: &[llada_train::tasks::Task]) -> Vec<Vec<u32>> {
    let tok = m.tokenizer.as_ref().unwrap();
    let mut params = m.default_params();
    params.gen_length = 64;
    items
        .iter()
        .map(|t| {
            let messages = t.messages();
            let prompt = tok
                .encode_chat(&messages[..messages.len() - 1], true)
                .unwrap();
            generate(&m.model, &prompt, &params, &mut |_| {})
                .unwrap()
                .ids
        })
        .collect()
}

#[test]
fn quantized_default_model_answers_like_f32() {
    use llada_train::tasks::{generate, Mix, Split};
    // The shipped model's kinds (short answers).
    let items = generate(40, 4242, Split::HeldOut, Mix::Short).unwrap();
    let f32_model = load_model_with(&default_model(), &Device::Cpu, None).unwrap();
    let want = answers(&f32_model, &items);
    for quant in [Quant::Q8_0, Quant::Q4k] {
        let q = load_model_with(&default_model(), &Device::Cpu, Some(quant)).unwrap();
        let got = answers(&q, &items);
        let same = got.iter().zip(&want).filter(|(a, b)| a == b).count();
        println!(
            "{}: {same}/{} task answers identical to f32 (weights {:.2} MiB vs {:.2} MiB)",
            quant.name(),
            items.len(),
            q.model.weight_bytes() as f64 / (1 << 20) as f64,
            f32_model.model.weight_bytes() as f64 / (1 << 20) as f64,
        );
        // The README quotes 39/40 for both (deterministic: same weights, same code).
        assert!(
            same >= 39,
            "{quant:?}: only {same}/{} identical",
            items.len()
        );
    }
}
