//! Test support shared by the llada crates' integration tests (a dev-dependency): the
//! golden fixture and its cases, a naive reference forward, random checkpoints of any
//! shape, and a runner for Python reference scripts.

use std::path::PathBuf;

use llada::{load_model, load_model_on, DecoderConfig, DeviceChoice, GenerateParams, LoadedModel};

/// The golden fixture the repository carries (`fixtures/golden/llada2-tiny`, copied
/// from the reference outputs by `scripts/sync-golden.sh`).
pub fn fixture_dir() -> PathBuf {
    golden_dir("llada2-tiny")
}

/// The LLaDA2.2 golden fixture (`fixtures/golden/llada2_2-tiny`: block routing, SGLang's
/// joint and InDel decoding).
pub fn fixture_2_2_dir() -> PathBuf {
    golden_dir("llada2_2-tiny")
}

pub fn load_fixture_2_2() -> LoadedModel {
    load_model(&fixture_2_2_dir()).expect("the LLaDA2.2 fixture loads")
}

/// A folder of `fixtures/golden`.
pub fn golden_dir(name: &str) -> PathBuf {
    let dir = repo_root().join("fixtures/golden").join(name);
    assert!(
        dir.is_dir(),
        "golden fixtures not found at {}",
        dir.display()
    );
    dir
}

/// The repository's root folder.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn load_fixture() -> LoadedModel {
    load_model(&fixture_dir()).expect("fixture loads")
}

/// The golden fixture on the GPU backend (`--device gpu`: the best adapter, lavapipe on
/// a machine without a GPU); panics with the backend's message when there is none.
pub fn load_fixture_on_gpu() -> LoadedModel {
    let loaded = load_model_on(&fixture_dir(), None, DeviceChoice::Gpu)
        .unwrap_or_else(|e| panic!("the GPU backend cannot load the fixture: {e}"));
    assert!(matches!(loaded.model, llada::Model::Gpu(_)));
    loaded
}

/// Largest absolute elementwise difference of two tensors of one shape.
pub fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Max and mean |logit difference| of two models on the golden forward cases, and the
/// share of positions whose argmax agrees.
pub fn logits_distance(a: &LoadedModel, b: &LoadedModel) -> (f32, f32, f32) {
    let (mut max, mut sum, mut n) = (0f32, 0f32, 0usize);
    let (mut same_top1, mut positions) = (0usize, 0usize);
    for case in golden()["forward"].as_array().unwrap() {
        let ids: Vec<u32> = serde_json::from_value(case["input_ids"].clone()).unwrap();
        let block = case["block_length"].as_u64().unwrap() as usize;
        let x = a.model.forward_full(&ids, block).unwrap();
        let y = b.model.forward_full(&ids, block).unwrap();
        let ax = x.argmax(1).unwrap().to_vec1::<u32>().unwrap();
        let ay = y.argmax(1).unwrap().to_vec1::<u32>().unwrap();
        same_top1 += ax.iter().zip(&ay).filter(|(p, q)| p == q).count();
        positions += ax.len();
        let d = (x - y).unwrap().abs().unwrap().flatten_all().unwrap();
        let d = d.to_vec1::<f32>().unwrap();
        max = d.iter().copied().fold(max, f32::max);
        sum += d.iter().sum::<f32>();
        n += d.len();
    }
    (max, sum / n as f32, same_top1 as f32 / positions as f32)
}

pub fn golden() -> serde_json::Value {
    golden_in(&fixture_dir())
}

/// `cases.json` of a fixture folder.
pub fn golden_in(dir: &std::path::Path) -> serde_json::Value {
    read_json(&dir.join("cases.json"))
}

pub fn read_json(path: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// One golden generate case: its prompt, the reference answer, the reference's
/// denoising step count, and `model`'s parameters set as the case asks.
pub struct GenerateCase {
    pub prompt: Vec<u32>,
    pub output_ids: Vec<u32>,
    pub denoising_forwards: usize,
    pub params: GenerateParams,
}

pub fn generate_cases(model: &LoadedModel) -> Vec<GenerateCase> {
    generate_cases_in(&fixture_dir(), model)
}

/// The generate cases of the fixture in `dir`.
pub fn generate_cases_in(dir: &std::path::Path, model: &LoadedModel) -> Vec<GenerateCase> {
    let field = |case: &serde_json::Value, k: &str| case[k].as_u64().unwrap() as usize;
    golden_in(dir)["generate"]
        .as_array()
        .unwrap()
        .iter()
        .map(|case| {
            let mut params = model.default_params();
            params.gen_length = field(case, "gen_length");
            params.block_length = field(case, "block_length");
            params.steps = field(case, "steps");
            params.decoder = DecoderConfig::Threshold {
                threshold: case["threshold"].as_f64().unwrap() as f32,
            };
            if let Some(eos) = case.get("eos_id").and_then(|v| v.as_u64()) {
                params.eos_id = eos as u32;
            }
            params.eos_early_stop = case
                .get("eos_early_stop")
                .and_then(|v| v.as_bool())
                .unwrap_or(false);
            GenerateCase {
                prompt: serde_json::from_value(case["prompt_ids"].clone()).unwrap(),
                output_ids: serde_json::from_value(case["output_ids"].clone()).unwrap(),
                denoising_forwards: field(case, "denoising_forwards"),
                params,
            }
        })
        .collect()
}

/// One LLaDA2.1 joint-decoding case (`joint_cases.json`, computed with the official
/// modeling code under diffusers' semantics): its prompt, the expected answer, edits and
/// forward passes, and `model`'s parameters set as the case asks.
pub struct JointCase {
    pub prompt: Vec<u32>,
    pub output_ids: Vec<u32>,
    pub edits: usize,
    pub forwards: usize,
    pub params: GenerateParams,
}

pub fn joint_cases(model: &LoadedModel) -> Vec<JointCase> {
    let text = std::fs::read_to_string(fixture_dir().join("joint_cases.json")).unwrap();
    let file: serde_json::Value = serde_json::from_str(&text).unwrap();
    file["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|case| {
            let num = |k: &str| case[k].as_f64().unwrap();
            let mut params = model.default_params();
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
            JointCase {
                prompt: serde_json::from_value(case["prompt_ids"].clone()).unwrap(),
                output_ids: serde_json::from_value(case["output_ids"].clone()).unwrap(),
                edits: num("edits") as usize,
                forwards: num("forwards") as usize,
                params,
            }
        })
        .collect()
}

/// One SGLang decoding case (`joint_sglang_cases.json` or `indel_cases.json`): its
/// prompt, the expected answer and counts, and `model`'s parameters set as the case asks.
pub struct SglangCase {
    pub prompt: Vec<u32>,
    pub output_ids: Vec<u32>,
    pub forwards: usize,
    /// The case's other counts by their field names (`fills`, `edits`, `deletes`, ...).
    pub counts: serde_json::Value,
    pub params: GenerateParams,
}

/// The cases of `file` in fixture folder `dir` with the decoder that file is about:
/// `joint_sglang_cases.json` (joint-sglang) or `indel_cases.json` (indel).
pub fn sglang_cases(dir: &std::path::Path, file: &str, model: &LoadedModel) -> Vec<SglangCase> {
    let json = read_json(&dir.join(file));
    let indel = file.starts_with("indel");
    json["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|case| {
            let num = |k: &str| case[k].as_f64().unwrap_or_else(|| panic!("{file}: no {k}"));
            let mut params = model.default_params();
            params.eos_id = case
                .get("eos_id")
                .unwrap_or(&json["eos_id"])
                .as_u64()
                .unwrap() as u32;
            params.mask_id = json["mask_id"].as_u64().unwrap() as u32;
            params.gen_length = num("gen_length") as usize;
            params.set_block_length(num("block_length") as usize);
            let (threshold, editing_threshold, max_post_steps) = (
                num("threshold") as f32,
                num("edit_threshold") as f32,
                num("max_post_edit_steps") as usize,
            );
            params.decoder = if indel {
                DecoderConfig::Indel {
                    threshold,
                    editing_threshold,
                    max_post_steps,
                }
            } else {
                DecoderConfig::JointSglang {
                    threshold,
                    editing_threshold,
                    max_post_steps,
                    penalty_lambda: num("penalty_lambda") as f32,
                }
            };
            SglangCase {
                prompt: serde_json::from_value(case["prompt_ids"].clone()).unwrap(),
                output_ids: serde_json::from_value(case["output_ids"].clone()).unwrap(),
                forwards: num("forwards") as usize,
                counts: case.clone(),
                params,
            }
        })
        .collect()
}

pub mod naive;
pub mod python;
pub mod synth;
