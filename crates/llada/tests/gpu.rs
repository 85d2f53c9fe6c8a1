//! The GPU backend against the golden fixtures and the CPU backend. They need a GPU
//! adapter (on a machine without a GPU: Mesa's lavapipe, `apt-get install libvulkan1
//! mesa-vulkan-drivers`), so a plain `cargo test` leaves them out (`#[ignore]`); `.ci/run`
//! installs the driver and runs them, and without one they fail rather than skip.

use llada_testing as common;

use candle_core::Tensor;
use common::{
    fixture_dir, generate_cases, golden, joint_cases, load_fixture, load_fixture_on_gpu,
    max_abs_diff,
};
use llada::{
    generate, load_model_on, load_synthetic_on, run_batch, DecodeSettings, DeviceChoice,
    Generation, LoadedModel, Message, Quant,
};

#[test]
#[ignore = "needs a GPU adapter (lavapipe in .ci/run)"]
fn gpu_forward_logits_match_the_reference_and_the_cpu() {
    let gpu = load_fixture_on_gpu();
    let cpu = load_fixture();
    let expected = candle_core::safetensors::load(
        fixture_dir().join("logits.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let forward = golden()["forward"].as_array().unwrap().clone();
    assert!(!forward.is_empty());
    for case in &forward {
        let ids: Vec<u32> = serde_json::from_value(case["input_ids"].clone()).unwrap();
        let block = case["block_length"].as_u64().unwrap() as usize;
        let name = case["logits"].as_str().unwrap();
        let got = gpu.model.forward_full(&ids, block).unwrap();
        let want: &Tensor = &expected[name];
        assert_eq!(got.dims(), want.dims(), "{name}");
        // f32 throughout with another summation order than the CPU's: within 1e-4 of
        // the reference, as the CPU path is.
        let diff = max_abs_diff(&got, want);
        assert!(diff < 1e-4, "{name}: max |diff| to the reference = {diff}");
        let on_cpu = cpu.model.forward_full(&ids, block).unwrap();
        let diff = max_abs_diff(&got, &on_cpu);
        assert!(diff < 1e-4, "{name}: max |diff| to the CPU = {diff}");
    }
}

#[test]
#[ignore = "needs a GPU adapter (lavapipe in .ci/run)"]
fn gpu_generate_matches_the_reference_with_and_without_cache() {
    let loaded = load_fixture_on_gpu();
    let cases = generate_cases(&loaded);
    assert!(cases.len() >= 8);
    for (n, case) in cases.into_iter().enumerate() {
        let mut params = case.params;
        for use_cache in [false, true] {
            params.use_cache = use_cache;
            let out = generate(&loaded.model, &case.prompt, &params, &mut |_| {}).unwrap();
            assert_eq!(out.ids, case.output_ids, "case {n} (cache: {use_cache})");
            assert_eq!(
                out.stats.denoising_steps, case.denoising_forwards,
                "case {n} (cache: {use_cache}) denoising steps"
            );
        }
    }
}

/// LLaDA2.2's block routing on the device (selection runs on the host from the device's
/// router logits): the fixture's logits and generate cases.
#[test]
#[ignore = "needs a GPU adapter (lavapipe in .ci/run)"]
fn gpu_block_routing_matches_the_reference() {
    let dir = common::fixture_2_2_dir();
    let gpu = load_model_on(&dir, None, DeviceChoice::Gpu).unwrap();
    assert!(matches!(gpu.model, llada::Model::Gpu(_)));
    let expected =
        candle_core::safetensors::load(dir.join("logits.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    for case in common::golden_in(&dir)["forward"].as_array().unwrap() {
        let ids: Vec<u32> = serde_json::from_value(case["input_ids"].clone()).unwrap();
        let block = case["block_length"].as_u64().unwrap() as usize;
        let name = case["logits"].as_str().unwrap();
        let diff = max_abs_diff(
            &gpu.model.forward_full(&ids, block).unwrap(),
            &expected[name],
        );
        assert!(diff < 1e-4, "{name}: max |diff| to the reference = {diff}");
    }
    for (n, case) in common::generate_cases_in(&dir, &gpu)
        .into_iter()
        .enumerate()
    {
        let mut params = case.params;
        for use_cache in [false, true] {
            params.use_cache = use_cache;
            let out = generate(&gpu.model, &case.prompt, &params, &mut |_| {}).unwrap();
            assert_eq!(out.ids, case.output_ids, "case {n} (cache: {use_cache})");
        }
    }
}

/// SGLang's decoders on the device (they read whole logit rows): the first cases of
/// each file give SGLang's ids, forwards and edits.
#[test]
#[ignore = "needs a GPU adapter (lavapipe in .ci/run)"]
fn gpu_sglang_decoders_match_sglang() {
    let dir = common::fixture_2_2_dir();
    let gpu = load_model_on(&dir, None, DeviceChoice::Gpu).unwrap();
    for file in ["joint_sglang_cases.json", "indel_cases.json"] {
        for (n, case) in common::sglang_cases(&dir, file, &gpu)
            .iter()
            .take(4)
            .enumerate()
        {
            let out = generate(&gpu.model, &case.prompt, &case.params, &mut |_| {}).unwrap();
            assert_eq!(out.ids, case.output_ids, "{file} case {n}");
            assert_eq!(out.stats.forwards, case.forwards, "{file} case {n}");
            assert_eq!(
                out.stats.edits as u64,
                case.counts["edits"].as_u64().unwrap()
            );
        }
    }
}

#[test]
#[ignore = "needs a GPU adapter (lavapipe in .ci/run)"]
fn gpu_joint_decoding_equals_the_reference_semantics() {
    let loaded = load_fixture_on_gpu();
    let cases = joint_cases(&loaded);
    assert!(cases.len() >= 16);
    for (n, case) in cases.into_iter().enumerate() {
        let out = generate(&loaded.model, &case.prompt, &case.params, &mut |_| {}).unwrap();
        assert_eq!(out.ids, case.output_ids, "case {n}: ids");
        assert_eq!(out.stats.edits, case.edits, "case {n}: edits");
        assert_eq!(
            out.stats.denoising_steps, case.forwards,
            "case {n}: forward passes"
        );
    }
}

/// A few questions of the default model's task kinds, as chat prompts.
const QUESTIONS: &[&str] = &[
    "Reverse: 1 2 3",
    "Sort: 9 4 7 1",
    "Add: 23 + 58",
    "Copy: a b c d",
];

fn default_model(device: DeviceChoice) -> LoadedModel {
    let dir = common::repo_root().join("models/default");
    load_model_on(&dir, None, device).unwrap_or_else(|e| panic!("{device:?}: {e}"))
}

fn prompts(loaded: &LoadedModel) -> Vec<Vec<u32>> {
    let tok = loaded.tokenizer.as_ref().unwrap();
    QUESTIONS
        .iter()
        .map(|q| tok.encode_chat(&[Message::new("user", *q)], true).unwrap())
        .collect()
}

/// Every decoder, with and without the dual block cache, gives the CPU's answers.
#[test]
#[ignore = "needs a GPU adapter (lavapipe in .ci/run)"]
fn gpu_decoders_give_the_cpu_answers_on_the_default_model() {
    let cpu = default_model(DeviceChoice::Cpu);
    let gpu = default_model(DeviceChoice::Gpu);
    assert!(matches!(gpu.model, llada::Model::Gpu(_)));
    let settings: &[(&str, &str)] = &[
        ("decoder", "threshold"),
        ("decoder", "joint"),
        ("decoder", "credit"),
        ("decoder", "hierarchy"),
        ("block_cache", "dual"),
        ("block_length", "8"),
    ];
    for prompt in prompts(&cpu) {
        for &(key, value) in settings {
            let mut params = cpu.default_params();
            params.gen_length = 32;
            DecodeSettings::parse(key, value)
                .unwrap()
                .apply(&mut params)
                .unwrap();
            let want = generate(&cpu.model, &prompt, &params, &mut |_| {}).unwrap();
            let got = generate(&gpu.model, &prompt, &params, &mut |_| {}).unwrap();
            assert_eq!(got.ids, want.ids, "{key}={value}: answer");
            assert_eq!(
                got.stats.forwards, want.stats.forwards,
                "{key}={value}: forward passes"
            );
        }
    }
}

/// Sequences decoded together in shared passes on the device give their answers alone
/// on the CPU.
#[test]
#[ignore = "needs a GPU adapter (lavapipe in .ci/run)"]
fn gpu_batched_decoding_gives_the_cpu_answers() {
    let cpu = default_model(DeviceChoice::Cpu);
    let gpu = default_model(DeviceChoice::Gpu);
    let mut params = cpu.default_params();
    params.gen_length = 32;
    let prompts = prompts(&cpu);
    let mut gens: Vec<Generation> = prompts
        .iter()
        .map(|p| Generation::new(&gpu.model, p, params.clone()).unwrap())
        .collect();
    let passes = run_batch(&gpu.model, &mut gens, &mut |_, _| {}).unwrap();
    assert!(passes > 0);
    for (g, prompt) in gens.into_iter().zip(&prompts) {
        let want = generate(&cpu.model, prompt, &params, &mut |_| {}).unwrap();
        assert_eq!(g.finish().ids, want.ids);
    }
}

/// q8_0 and q4k weights, widened inside the device's product kernel, against the CPU's
/// quantized path (which also rounds the activations to 8 bits: hence a tolerance
/// relative to the logits' scale, not the f32 one).
#[test]
#[ignore = "needs a GPU adapter (lavapipe in .ci/run)"]
fn gpu_quantized_logits_match_the_cpu_quantized_path() {
    let ids: Vec<u32> = (0..40).map(|i| (i * 37 + 11) % 500).collect();
    for quant in [Quant::Q8_0, Quant::Q4k] {
        // llada2-63m's rows are multiples of 256, so q4k applies to every matrix.
        let load =
            |device| load_synthetic_on("llada2-63m", Some(1), Some(quant), 3, device).unwrap();
        let (cpu, gpu) = (load(DeviceChoice::Cpu), load(DeviceChoice::Gpu));
        let want = cpu.model.forward_full(&ids, 8).unwrap();
        let got = gpu.model.forward_full(&ids, 8).unwrap();
        let scale = want
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let diff = max_abs_diff(&got, &want);
        eprintln!("{quant:?}: max |diff| {diff} for logits up to {scale}");
        assert!(
            diff < 0.02 * scale,
            "{quant:?}: max |diff| {diff}, logits up to {scale}"
        );
        // And the same answer rows: the argmax of almost every position agrees.
        let agree = argmaxes(&got)
            .iter()
            .zip(argmaxes(&want))
            .filter(|(a, b)| **a == *b)
            .count();
        assert!(
            agree >= ids.len() * 9 / 10,
            "{quant:?}: {agree} of {} argmaxes agree",
            ids.len()
        );
    }
}

fn argmaxes(logits: &Tensor) -> Vec<u32> {
    logits.argmax(1).unwrap().to_vec1::<u32>().unwrap()
}

/// A model larger than the adapter's memory is refused before any weight is uploaded,
/// with the sizes (LLaDA2.0-flash's shapes: ~190 GiB of bf16 weights).
#[test]
#[ignore = "needs a GPU adapter (lavapipe in .ci/run)"]
fn a_model_larger_than_the_gpu_is_refused_with_the_sizes() {
    let started = std::time::Instant::now();
    let err = load_synthetic_on("llada2-flash", None, None, 0, DeviceChoice::Gpu)
        .err()
        .expect("refused");
    let text = err.to_string();
    assert!(text.contains("GiB") && text.contains("which has"), "{text}");
    // Refused from the config alone: nothing was generated or uploaded.
    assert!(started.elapsed().as_secs() < 30, "{:?}", started.elapsed());
}

/// A GGUF file written by `llada quantize` runs on the device from its stored blocks and
/// gives the logits of the same model quantized at load on the device.
#[test]
#[ignore = "needs a GPU adapter (lavapipe in .ci/run)"]
fn gpu_runs_a_quantized_gguf_file() {
    let ids = [5u32, 6, 7, 8, 9, 10, 11, 12, 13];
    for quant in [Quant::Q8_0, Quant::Q4k] {
        let out = tempfile::tempdir().unwrap();
        llada::quantize_checkpoint(&fixture_dir(), out.path(), quant).unwrap();
        let from_file = load_model_on(out.path(), None, DeviceChoice::Gpu).unwrap();
        let at_load = load_model_on(&fixture_dir(), Some(quant), DeviceChoice::Gpu).unwrap();
        assert!(matches!(from_file.model, llada::Model::Gpu(_)));
        let a = from_file.model.forward_full(&ids, 4).unwrap();
        let b = at_load.model.forward_full(&ids, 4).unwrap();
        assert_eq!(
            max_abs_diff(&a, &b),
            0.0,
            "{quant:?}: same blocks, same logits"
        );
    }
}

/// Published `llada2` GGUF files run on the device: f32 as the CPU does, q4_0 (blocks the
/// GPU has no kernel for) re-blocked as q8_0, close to the CPU's q4_0 product.
#[test]
#[ignore = "needs a GPU adapter (lavapipe in .ci/run)"]
fn gpu_runs_published_gguf_files() {
    let ids = [5u32, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16];
    for (name, most) in [("model-f32.gguf", 1e-3f32), ("model-q4_0.gguf", 1.0)] {
        let path = fixture_dir().join("gguf").join(name);
        let gpu = load_model_on(&path, None, DeviceChoice::Gpu).unwrap();
        let cpu = load_model_on(&path, None, DeviceChoice::Cpu).unwrap();
        assert!(matches!(gpu.model, llada::Model::Gpu(_)));
        let a = gpu.model.forward_full(&ids, 4).unwrap();
        let b = cpu.model.forward_full(&ids, 4).unwrap();
        let d = max_abs_diff(&a, &b);
        let top = |t: &Tensor| t.argmax(1).unwrap().to_vec1::<u32>().unwrap();
        let same = top(&a)
            .iter()
            .zip(top(&b))
            .filter(|(x, y)| **x == *y)
            .count();
        println!(
            "{name}: GPU vs CPU logits max |diff| {d:.5}, argmax {same}/{}",
            ids.len()
        );
        assert!(d < most, "{name}: {d}");
        assert!(
            same * 10 >= ids.len() * 9,
            "{name}: argmax {same}/{}",
            ids.len()
        );
    }
}
