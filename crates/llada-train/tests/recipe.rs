//! A whole recipe on a tiny model: AR pre-training, WSD conversion and SFT each lower
//! their loss; checkpoints are HF folders that llada loads; a killed run resumes from
//! its last checkpoint and ends exactly where an uninterrupted run ends.

use std::path::Path;

// The helpers of llada's tests (tests of different crates share no module).
use llada_testing as common;

use candle_core::Device;
use llada_train::checkpoint::StepMetrics;
use llada_train::recipe::Recipe;
use llada_train::tokenizer::{train_tokenizer, TokenizerTraining};
use llada_train::trainer::{run, RunOptions, RunOutcome};

const CORPUS: &str =
    "Shall I compare thee to a summer's day? Thou art more lovely and more temperate.\n\
Rough winds do shake the darling buds of May, and summer's lease hath all too short a date.\n\n\n\
To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer.\n";

fn setup(dir: &Path, out: &str) -> Recipe {
    std::fs::write(dir.join("corpus.txt"), CORPUS.repeat(4)).unwrap();
    let mut chat = String::new();
    for a in 0..12 {
        let b = (a * 7) % 10;
        let line = serde_json::json!({"messages": [
            {"role": "user", "content": format!("{a}+{b}=")},
            {"role": "assistant", "content": format!("{}", a + b)},
        ]});
        chat.push_str(&format!("{line}\n"));
    }
    std::fs::write(dir.join("chat.jsonl"), chat).unwrap();
    if !dir.join("tokenizer/tokenizer.json").exists() {
        let opts = TokenizerTraining {
            vocab_size: 300,
            min_frequency: 2,
            ..TokenizerTraining::default()
        };
        train_tokenizer(&[dir.join("corpus.txt")], &opts, &dir.join("tokenizer")).unwrap();
    }
    let recipe = format!(
        r#"
name = "test"
seed = 7
out = "{out}"
tokenizer = "tokenizer"

[model]
vocab_size = 300
hidden_size = 32
intermediate_size = 48
num_hidden_layers = 2
num_attention_heads = 4
num_key_value_heads = 2
head_dim = 8
num_experts = 4
num_experts_per_tok = 2
n_group = 2
topk_group = 1
moe_intermediate_size = 16
num_shared_experts = 1
first_k_dense_replace = 1
max_position_embeddings = 256
use_bias = false
rms_norm_eps = 1e-6

[[stage]]
name = "ar"
kind = "ar"
data = ["corpus.txt"]
steps = 12
batch_size = 2
seq_len = 32
checkpoint_every = 5
lr = {{ kind = "cosine", peak = 1e-2, min_lr = 1e-3, warmup = 2, total = 12 }}

[[stage]]
name = "wsd"
kind = "wsd"
data = ["corpus.txt"]
steps = 12
batch_size = 2
seq_len = 32
checkpoint_every = 6
embed_noise_std = 0.1
embed_noise_steps = 3
lr = {{ kind = "wsd", peak = 1e-2, min_lr = 1e-3, warmup = 2, total = 12, decay = 4 }}
block_schedule = {{ warmup = [1, 4], warmup_steps_each = 3, seq_len = 32, stable_steps = 3, decay = [8], decay_steps_each = 3 }}

[[stage]]
name = "sft"
kind = "sft"
data = ["chat.jsonl"]
steps = 12
batch_size = 2
seq_len = 96
block = 8
cap_weight = 1.0
edit_rate = 0.2
checkpoint_every = 6
lr = {{ kind = "cosine", peak = 1e-2, min_lr = 1e-3, warmup = 2, total = 12 }}
"#
    );
    std::fs::write(dir.join("recipe.toml"), recipe).unwrap();
    Recipe::load(&dir.join("recipe.toml")).unwrap()
}

fn metrics(dir: &Path) -> Vec<StepMetrics> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The two checkpoints hold the same tensors, each within `tol`.
fn assert_same_weights(want: &Path, got: &Path, tol: f32) {
    let a = candle_core::safetensors::load(want.join("model.safetensors"), &Device::Cpu).unwrap();
    let b = candle_core::safetensors::load(got.join("model.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(a.len(), b.len());
    for (name, x) in &a {
        let d = common::max_abs_diff(x, &b[name]);
        assert!(d < tol, "{name} differs by {d}");
    }
}

fn quiet() -> RunOptions {
    RunOptions {
        quiet: true,
        max_steps: None,
        threads: 1,
    }
}

#[test]
fn every_stage_learns_and_the_result_decodes() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = setup(tmp.path(), "run");
    let RunOutcome::Finished(final_dir) = run(&recipe, &quiet()).unwrap() else {
        panic!("the run should finish");
    };
    for stage in ["ar", "wsd", "sft"] {
        let m = metrics(&tmp.path().join("run").join(stage));
        assert_eq!(m.len(), 12, "{stage}");
        let head: f32 = m[..3].iter().map(|s| s.ce).sum::<f32>() / 3.0;
        let tail: f32 = m[9..].iter().map(|s| s.ce).sum::<f32>() / 3.0;
        println!("{stage}: cross-entropy {head:.3} -> {tail:.3}");
        assert!(tail < head, "{stage}: {head} -> {tail}");
    }
    let wsd = metrics(&tmp.path().join("run/wsd"));
    let blocks: Vec<usize> = wsd.iter().map(|m| m.block).collect();
    assert_eq!(blocks, [1, 1, 1, 4, 4, 4, 32, 32, 32, 8, 8, 8]);
    // The final checkpoint is an ordinary model folder.
    let loaded = llada::load_model(&final_dir).unwrap();
    let tok = loaded.tokenizer.as_ref().unwrap();
    let prompt = tok
        .encode_chat(&[llada::Message::new("user", "3+1=")], true)
        .unwrap();
    let mut params = loaded.default_params();
    params.gen_length = 8;
    params.block_length = 8;
    params.steps = 8;
    let out = llada::generate(&loaded.model, &prompt, &params, &mut |_| {}).unwrap();
    assert!(!out.ids.is_empty());
    // Export drops the optimizer state; bf16 halves the weights and still loads.
    let exported = tmp.path().join("exported");
    let f32_bytes = llada_train::params::export(&final_dir, &exported, false).unwrap();
    assert!(!exported.join("optimizer.safetensors").exists());
    let same = llada::load_model(&exported).unwrap();
    // The official LLaDA2MoeConfig's default pad id (156892) is outside this vocabulary:
    // the exported config names the model's own, as the official code needs to load it.
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(exported.join("config.json")).unwrap())
            .unwrap();
    let vocab = config["vocab_size"].as_u64().unwrap();
    for field in ["pad_token_id", "eos_token_id"] {
        let id = config[field]
            .as_u64()
            .unwrap_or_else(|| panic!("{field} missing"));
        assert!(id < vocab, "{field} {id} outside the vocabulary {vocab}");
    }
    assert_eq!(
        config["eos_token_id"].as_u64(),
        Some(same.default_params().eos_id as u64)
    );
    // Every field of the golden fixture's config.json (written by the official code's
    // LLaDA2MoeConfig) is in the export, except transformers' generic generation and
    // labelling fields; the official dropouts default to 0.1, llada trains without.
    let golden: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::fixture_dir().join("config.json")).unwrap(),
    )
    .unwrap();
    let missing: Vec<&String> = golden
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| {
            let k = k.as_str();
            !GENERIC_HF_FIELDS.contains(&k)
                && !OFFICIAL_DEFAULTS_THAT_FIT.contains(&k)
                && config.get(k).is_none()
        })
        .collect();
    assert!(missing.is_empty(), "the export lacks {missing:?}");
    for dropout in ["embedding_dropout", "attention_dropout", "output_dropout"] {
        assert_eq!(config[dropout].as_f64(), Some(0.0), "{dropout}");
    }
    assert_eq!(
        config["rotary_dim"].as_u64(),
        Some(config["head_dim"].as_u64().unwrap() / 2)
    );
    let ids = [5u32, 6, 7, 8];
    let a = loaded.model.forward_full(&ids, 2).unwrap();
    let b = same.model.forward_full(&ids, 2).unwrap();
    let d = common::max_abs_diff(&a, &b);
    assert_eq!(d, 0.0);
    let half = tmp.path().join("exported-bf16");
    let bf16_bytes = llada_train::params::export(&final_dir, &half, true).unwrap();
    assert!(
        bf16_bytes * 10 < f32_bytes * 6,
        "{bf16_bytes} vs {f32_bytes}"
    );
    llada::load_model(&half).unwrap();
}

/// Fields every transformers `PretrainedConfig` writes (generation defaults, labels,
/// bookkeeping); they say nothing about a LLaDA2 model.
const GENERIC_HF_FIELDS: &[&str] = &[
    "add_cross_attention",
    "bad_words_ids",
    "begin_suppress_tokens",
    "bos_token_id",
    "chunk_size_feed_forward",
    "cross_attention_hidden_size",
    "decoder_start_token_id",
    "diversity_penalty",
    "do_sample",
    "early_stopping",
    "encoder_no_repeat_ngram_size",
    "exponential_decay_length_penalty",
    "finetuning_task",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "id2label",
    "is_decoder",
    "is_encoder_decoder",
    "label2id",
    "length_penalty",
    "max_length",
    "min_length",
    "no_repeat_ngram_size",
    "num_beam_groups",
    "num_beams",
    "num_return_sequences",
    "output_attentions",
    "output_hidden_states",
    "output_scores",
    "prefix",
    "problem_type",
    "pruned_heads",
    "remove_invalid_values",
    "repetition_penalty",
    "return_dict",
    "return_dict_in_generate",
    "sep_token_id",
    "suppress_tokens",
    "task_specific_params",
    "temperature",
    "tf_legacy_loss",
    "tie_encoder_decoder",
    "tokenizer_class",
    "top_k",
    "top_p",
    "torch_dtype",
    "torchscript",
    "typical_p",
    "use_bfloat16",
];

/// Fields of the official LLaDA2MoeConfig whose defaults already describe a model llada
/// trains (no sliding window, no RoPE scaling, no router logits in the output).
const OFFICIAL_DEFAULTS_THAT_FIT: &[&str] = &[
    "output_router_logits",
    "use_cache",
    "initializer_range",
    "max_window_layers",
    "sliding_window",
    "use_sliding_window",
    "rope_scaling",
];

/// Two threads, each with one of a step's two examples, train as one thread does (up to
/// the order of the gradient sums): every stage kind, CAP and editing included. A shard
/// whose gradient were lost would show in the losses of the steps after it.
#[test]
fn steps_split_over_threads_train_as_one_thread() {
    let tmp = tempfile::tempdir().unwrap();
    let one = setup(tmp.path(), "one");
    let RunOutcome::Finished(want) = run(&one, &quiet()).unwrap() else {
        panic!("finishes");
    };
    let two = setup(tmp.path(), "two");
    let RunOutcome::Finished(got) = run(
        &two,
        &RunOptions {
            threads: 2,
            ..quiet()
        },
    )
    .unwrap() else {
        panic!("finishes");
    };
    for stage in ["ar", "wsd", "sft"] {
        let (x, y) = (
            metrics(&tmp.path().join("one").join(stage)),
            metrics(&tmp.path().join("two").join(stage)),
        );
        assert_eq!(x.len(), y.len());
        for (a, b) in x.iter().zip(&y) {
            assert!(
                (a.loss - b.loss).abs() < 1e-3 && (a.ce - b.ce).abs() < 1e-3,
                "{stage} step {}: loss {} vs {}, ce {} vs {}",
                a.step,
                a.loss,
                b.loss,
                a.ce,
                b.ce
            );
        }
    }
    // Adam turns last-bit differences of near-zero gradients into whole steps: the
    // weights agree less closely than the losses.
    assert_same_weights(&want, &got, 5e-3);
}

#[test]
fn a_killed_run_resumes_where_it_left_off() {
    let tmp = tempfile::tempdir().unwrap();
    let straight = setup(tmp.path(), "straight");
    let RunOutcome::Finished(want) = run(&straight, &quiet()).unwrap() else {
        panic!("finishes");
    };
    let killed = setup(tmp.path(), "killed");
    // Stopped after 7 steps of the first stage: a checkpoint is written where it stops.
    let stopped = run(
        &killed,
        &RunOptions {
            max_steps: Some(7),
            ..quiet()
        },
    )
    .unwrap();
    assert_eq!(
        stopped,
        RunOutcome::Stopped {
            stage: "ar".into(),
            step: 7
        }
    );
    let ar_dir = tmp.path().join("killed/ar");
    assert_eq!(
        std::fs::read_to_string(ar_dir.join("latest")).unwrap(),
        "checkpoint-7"
    );
    // As if killed at step 9, after logging steps 8 and 9 but before a checkpoint: the
    // resumed run redoes them and the log keeps each step once.
    let mut log = std::fs::read_to_string(ar_dir.join("metrics.jsonl")).unwrap();
    for step in [8, 9] {
        log.push_str(&format!(
            "{{\"stage\":\"ar\",\"step\":{step},\"loss\":-1.0,\"ce\":-1.0,\"lr\":0.0,\"grad_norm\":0.0,\"block\":1,\"tokens_per_second\":0.0}}\n"
        ));
    }
    std::fs::write(ar_dir.join("metrics.jsonl"), log).unwrap();
    // Resumed: 5 steps finish the first stage, 9 more stop inside the second.
    let stopped = run(
        &killed,
        &RunOptions {
            max_steps: Some(14),
            ..quiet()
        },
    )
    .unwrap();
    assert_eq!(
        stopped,
        RunOutcome::Stopped {
            stage: "wsd".into(),
            step: 9
        }
    );
    let RunOutcome::Finished(got) = run(&killed, &quiet()).unwrap() else {
        panic!("finishes after resuming");
    };
    assert_same_weights(&want, &got, 1e-5);
    // Every step is logged once, with the uninterrupted run's loss.
    let steps = |run: &str| -> Vec<(usize, f32)> {
        let text = std::fs::read_to_string(tmp.path().join(run).join("ar/metrics.jsonl")).unwrap();
        text.lines()
            .map(|l| serde_json::from_str::<StepMetrics>(l).unwrap())
            .map(|m| (m.step, m.loss))
            .collect()
    };
    let (straight_log, resumed_log) = (steps("straight"), steps("killed"));
    assert_eq!(
        resumed_log.iter().map(|s| s.0).collect::<Vec<_>>(),
        (1..=12).collect::<Vec<_>>()
    );
    for (a, b) in straight_log.iter().zip(&resumed_log) {
        assert!((a.1 - b.1).abs() < 1e-4, "step {}: {} vs {}", a.0, a.1, b.1);
    }
}

/// The sft stage alone from random weights, with or without text mixed in.
fn sft_only(dir: &Path, out: &str, mix: &str) -> Recipe {
    setup(dir, "unused");
    let text = std::fs::read_to_string(dir.join("recipe.toml")).unwrap();
    let head = &text[..text.find("[[stage]]").unwrap()];
    let recipe = format!(
        r#"{head}
[[stage]]
name = "sft"
kind = "sft"
data = ["chat.jsonl"]
steps = 16
batch_size = 4
seq_len = 96
block = 8
checkpoint_every = 16
{mix}
lr = {{ kind = "cosine", peak = 1e-2, min_lr = 1e-3, warmup = 2, total = 16 }}
"#
    )
    .replace("out = \"unused\"", &format!("out = \"{out}\""));
    let path = dir.join(format!("{out}.toml"));
    std::fs::write(&path, recipe).unwrap();
    Recipe::load(&path).unwrap()
}

#[test]
fn text_mixed_into_sft_keeps_the_model_a_text_model() {
    let tmp = tempfile::tempdir().unwrap();
    let nelbo = |recipe: &Recipe| {
        let RunOutcome::Finished(dir) = run(recipe, &quiet()).unwrap() else {
            panic!("finishes");
        };
        let m = llada::load_model(&dir).unwrap();
        let corpus = [tmp.path().join("corpus.txt")];
        llada_train::eval::nelbo(&m, &corpus, 32, 8, 4, 8)
            .unwrap()
            .bits_per_token
    };
    let pure = nelbo(&sft_only(tmp.path(), "pure", ""));
    let mixed = nelbo(&sft_only(
        tmp.path(),
        "mixed",
        "text_data = [\"corpus.txt\"]\ntext_fraction = 0.5",
    ));
    println!("text NELBO after SFT: {pure:.2} bits/token without text, {mixed:.2} with half the rows text");
    assert!(mixed < pure, "{mixed} vs {pure}");

    // Mixing needs both settings, and only sft stages mix.
    std::fs::write(
        tmp.path().join("bad.toml"),
        std::fs::read_to_string(tmp.path().join("mixed.toml"))
            .unwrap()
            .replace("text_data = [\"corpus.txt\"]\n", ""),
    )
    .unwrap();
    let err = Recipe::load(&tmp.path().join("bad.toml"))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("text_data"), "{err}");
}

/// The AR baseline's stage: `sft_ar` after a diffusion stage, branching off the AR
/// stage with `from`, trains exactly as it does right after the AR stage (same start,
/// same random stream, by name), with block 1, and its loss falls.
#[test]
fn the_autoregressive_baseline_branches_off_the_ar_stage() {
    let tmp = tempfile::tempdir().unwrap();
    setup(tmp.path(), "unused");
    let text = std::fs::read_to_string(tmp.path().join("recipe.toml")).unwrap();
    let (head, stages) = text.split_at(text.find("[[stage]]").unwrap());
    let ar_stage = &stages[..stages[1..].find("[[stage]]").unwrap() + 1];
    let baseline = |from: &str| {
        format!(
            r#"
[[stage]]
name = "sft-ar"
kind = "sft_ar"
{from}
data = ["chat.jsonl"]
text_data = ["corpus.txt"]
text_fraction = 0.25
steps = 12
batch_size = 2
seq_len = 96
checkpoint_every = 12
lr = {{ kind = "cosine", peak = 1e-2, min_lr = 1e-3, warmup = 2, total = 12 }}
"#
        )
    };
    let write = |name: &str, body: String| {
        let path = tmp.path().join(format!("{name}.toml"));
        std::fs::write(
            &path,
            body.replace("out = \"unused\"", &format!("out = \"{name}\"")),
        )
        .unwrap();
        Recipe::load(&path).unwrap()
    };
    let branched = write("branched", format!("{text}{}", baseline("from = \"ar\"")));
    let direct = write("direct", format!("{head}{ar_stage}{}", baseline("")));
    for recipe in [&branched, &direct] {
        run(recipe, &quiet()).unwrap();
    }
    let a = metrics(&tmp.path().join("branched/sft-ar"));
    let b = metrics(&tmp.path().join("direct/sft-ar"));
    assert_eq!(a.len(), 12);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!((x.loss, x.block), (y.loss, y.block), "step {}", x.step);
        assert_eq!(x.block, 1);
    }
    let head_ce: f32 = a[..3].iter().map(|s| s.ce).sum::<f32>() / 3.0;
    let tail_ce: f32 = a[9..].iter().map(|s| s.ce).sum::<f32>() / 3.0;
    assert!(tail_ce < head_ce, "{head_ce} -> {tail_ce}");
    // Each checkpoint decodes by default as it was trained: the baseline one token per
    // block, the diffusion SFT with its block of 8 (and as many steps).
    let defaults = |stage: &str| {
        let dir = tmp.path().join("branched").join(stage).join("final");
        let p = llada::load_model(&dir).unwrap().default_params();
        (p.block_length, p.steps)
    };
    assert_eq!(defaults("sft-ar"), (1, 1));
    assert_eq!(defaults("sft"), (8, 8));
    // `from` must name an earlier stage.
    let err = Recipe::parse(
        &format!("{head}{}{ar_stage}", baseline("from = \"ar\"")),
        &tmp.path().join("bad.toml"),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("names no earlier stage"), "{err}");
}

/// The recipes the repository carries load (every field checked), and the default
/// model's AR baseline (models/default-ar) branches off its AR stage and goes through the
/// same curriculum as its diffusion SFT: the same data, text mix and rows in each phase.
#[test]
fn the_committed_recipes_load() {
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models");
    for path in [
        "default/recipe.toml",
        "default/cap.toml",
        "default/nocap.toml",
    ] {
        Recipe::load(&models.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    }
    let recipe = Recipe::load(&models.join("default/recipe.toml")).unwrap();
    let stage = |name: &str| recipe.stages.iter().find(|s| s.name == name).unwrap();
    assert_eq!(stage("sft-ar-short").from.as_deref(), Some("ar"));
    let rows = |names: &[&str]| -> usize {
        names
            .iter()
            .map(|n| stage(n).steps * stage(n).batch_size)
            .sum()
    };
    let phases: [(&[&str], &str); 3] = [
        (&["sft-short"], "sft-ar-short"),
        (&["sft"], "sft-ar"),
        (&["sft-2", "sft-edit"], "sft-ar-2"),
    ];
    for (diffusion, ar) in phases {
        assert_eq!(rows(diffusion), rows(&[ar]), "{ar}");
        let baseline = stage(ar);
        for name in diffusion {
            assert_eq!(stage(name).data, baseline.data, "{name}");
            assert_eq!(stage(name).text_data, baseline.text_data, "{name}");
            assert_eq!(stage(name).text_fraction, baseline.text_fraction);
            assert_eq!(stage(name).seq_len, baseline.seq_len, "{name}");
        }
    }
    // The CAP experiment and its control differ in the CAP weight only.
    let cap = Recipe::load(&models.join("default/cap.toml")).unwrap();
    let nocap = Recipe::load(&models.join("default/nocap.toml")).unwrap();
    let (a, b) = (&cap.stages[0], &nocap.stages[0]);
    assert!(a.cap_weight > 0.0 && b.cap_weight == 0.0);
    assert_eq!((&a.data, a.steps, a.seq_len), (&b.data, b.steps, b.seq_len));
    assert_eq!(cap.init_from, nocap.init_from);
}

mod random_fields {
    use super::*;
    use proptest::prelude::*;

    /// A field of the test recipe and the TOML values tried in it: the edges of each
    /// range, wrong types, and sizes a tiny model still runs at.
    const FIELDS: &[(&str, &[&str])] = &[
        ("steps", &["0", "1", "-1", "2.5", "\"x\""]),
        ("batch_size", &["0", "1", "3"]),
        ("seq_len", &["0", "1", "2", "16", "300"]),
        ("block", &["0", "1", "16", "100"]),
        ("checkpoint_every", &["0", "1"]),
        ("eps", &["0.0", "1.0", "-0.5", "1e-9", "nan"]),
        ("t_range", &["[0.0, 0.5]", "[0.5, 0.3]", "[0.3, 1.0]", "[0.1, 2.0]", "[]"]),
        ("cap_weight", &["-1.0", "0.0", "2.0", "inf", "nan"]),
        ("embed_noise_std", &["-0.1", "0.0", "1e30", "nan"]),
        ("embed_noise_steps", &["0", "100"]),
        ("text_fraction", &["0.0", "0.5", "1.0", "-0.1"]),
        ("kind", &["\"ar\"", "\"wsd\"", "\"sft\"", "\"sft_ar\"", "\"other\""]),
        ("edit_rate", &["-0.1", "0.0", "0.3", "1.5", "nan"]),
        ("trim_padding", &["true", "false", "1"]),
        ("from", &["\"ar\"", "\"nope\""]),
        ("data", &["[]", "[\"missing.txt\"]", "[\"corpus.txt\"]"]),
        ("name", &["\"\"", "\"..\"", "\"a/b\"", "\"ok-1\""]),
        ("lr", &[
            "{ kind = \"cosine\", peak = -1.0, min_lr = 0.0, warmup = 0, total = 1 }",
            "{ kind = \"cosine\", peak = 1e-3, min_lr = 1.0, warmup = 0, total = 1 }",
            "{ kind = \"cosine\", peak = 1e-3, min_lr = 0.0, warmup = 5, total = 0 }",
            "{ kind = \"wsd\", peak = 1e-3, min_lr = 0.0, warmup = 1, total = 4, decay = 9 }",
            "{ kind = \"cosine\", peak = nan, min_lr = 0.0, warmup = 0, total = 1 }",
            "{ kind = \"cosine\", peak = 1e-3, min_lr = 0.0, warmup = 0, total = 1 }",
        ]),
        ("optimizer", &[
            "{ beta1 = 1.0, beta2 = 0.9, eps = 1e-8, weight_decay = 0.0, max_grad_norm = 1.0 }",
            "{ beta1 = 0.9, beta2 = 0.9, eps = 0.0, weight_decay = 0.0, max_grad_norm = 1.0 }",
            "{ beta1 = 0.9, beta2 = 0.9, eps = 1e-8, weight_decay = -1.0, max_grad_norm = 1.0 }",
            "{ beta1 = 0.9, beta2 = 0.9, eps = 1e-8, weight_decay = 0.0, max_grad_norm = 0.0 }",
        ]),
        ("block_schedule", &[
            "{ warmup = [0], warmup_steps_each = 1, seq_len = 32, stable_steps = 1, decay = [], decay_steps_each = 1 }",
            "{ warmup = [64], warmup_steps_each = 1, seq_len = 32, stable_steps = 1, decay = [], decay_steps_each = 1 }",
            "{ warmup = [1, 4], warmup_steps_each = 0, seq_len = 32, stable_steps = 1, decay = [8], decay_steps_each = 1 }",
            "{ warmup = [1], warmup_steps_each = 1, seq_len = 32, stable_steps = 1, decay = [8], decay_steps_each = 1 }",
        ]),
    ];

    /// Model fields (in `[model]`) and their values.
    const MODEL_FIELDS: &[(&str, &[&str])] = &[
        ("hidden_size", &["0", "8", "33"]),
        ("num_attention_heads", &["0", "3", "8"]),
        ("num_key_value_heads", &["0", "3"]),
        ("head_dim", &["0", "7", "16"]),
        ("num_experts", &["0", "3", "8"]),
        ("n_group", &["0", "3", "4"]),
        ("topk_group", &["0", "5"]),
        ("num_experts_per_tok", &["0", "9"]),
        ("max_position_embeddings", &["0", "16"]),
        ("rope_theta", &["0.0", "-1.0", "nan", "10.0"]),
        ("rms_norm_eps", &["0.0", "-1.0", "1e-5"]),
        ("partial_rotary_factor", &["-0.5", "0.25", "2.0"]),
        ("vocab_size", &["0", "100", "100000"]),
    ];

    /// Sets `field = value` in the first stage (or in `[model]`).
    fn edit(recipe: &str, field: &str, value: &str, in_model: bool) -> String {
        let section = if in_model { "[model]\n" } else { "[[stage]]\n" };
        let at = recipe.find(section).unwrap() + section.len();
        let end = recipe[at..].find("\n[").map_or(recipe.len(), |i| at + i);
        let body: String = recipe[at..end]
            .lines()
            .filter(|l| !l.starts_with(&format!("{field} =")))
            .map(|l| format!("{l}\n"))
            .collect();
        format!(
            "{}{field} = {value}\n{body}{}",
            &recipe[..at],
            &recipe[end..]
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// Any values in recipe fields: refused at load with a message, or the first
        /// training step runs, never a panic.
        #[test]
        fn random_recipe_fields_are_refused_or_train(
            stage_edits in prop::collection::vec(
                prop::sample::select(FIELDS).prop_flat_map(|(f, vs)| (Just(f), prop::sample::select(vs))),
                0..3,
            ),
            model_edits in prop::collection::vec(
                prop::sample::select(MODEL_FIELDS).prop_flat_map(|(f, vs)| (Just(f), prop::sample::select(vs))),
                0..2,
            ),
        ) {
            let tmp = tempfile::tempdir().unwrap();
            setup(tmp.path(), "out");
            let mut text = std::fs::read_to_string(tmp.path().join("recipe.toml")).unwrap();
            for (field, value) in &stage_edits {
                text = edit(&text, field, value, false);
            }
            for (field, value) in &model_edits {
                text = edit(&text, field, value, true);
            }
            let path = tmp.path().join("edited.toml");
            std::fs::write(&path, &text).unwrap();
            let recipe = match Recipe::load(&path) {
                Ok(r) => r,
                Err(e) => {
                    prop_assert!(!e.to_string().is_empty());
                    return Ok(());
                }
            };
            let one_step = RunOptions { max_steps: Some(1), ..quiet() };
            if let Err(e) = run(&recipe, &one_step) {
                // An accepted recipe may still point at data the stage cannot use (a
                // missing file, text where chat JSONL is expected, too short a corpus):
                // the error names the file.
                let message = e.to_string();
                let dir = tmp.path().to_string_lossy().into_owned();
                prop_assert!(
                    message.contains(&dir) || message.contains("vocab_size"),
                    "{stage_edits:?} {model_edits:?}: accepted, then {message}"
                );
            }
        }
    }
}
