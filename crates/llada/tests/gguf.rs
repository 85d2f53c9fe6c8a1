//! GGUF files in llama.cpp's `llada2` layout: the golden model converted by gguf-py
//! (`fixtures/golden/llada2-tiny/gguf/`) answers as the reference; llada's own files
//! (`llada quantize --out FILE.gguf`) load back as the load they were written from;
//! split files, the older llada layout, and broken files of every kind.

use std::path::{Path, PathBuf};

use llada_testing as common;

use common::{fixture_dir, generate_cases, logits_distance, max_abs_diff};
use llada::{generate, load_model, load_model_with, LoadedModel, ModelSource, Quant};

fn gguf_file(name: &str) -> PathBuf {
    fixture_dir().join("gguf").join(name)
}

/// The golden cases' special ids: these files carry no tokenizer (`tokenizer.ggml.model
/// = none`), and cases.json names them.
fn with_case_ids(m: &LoadedModel, case: &common::GenerateCase) -> llada::GenerateParams {
    let mut p = case.params.clone();
    p.mask_id = 510;
    if p.eos_id > 511 {
        p.eos_id = 509;
    }
    p.extra_stop_ids
        .retain(|&id| (id as usize) < m.model.config().vocab_size);
    p
}

/// How many golden generate cases give the reference's ids exactly.
fn golden_generations(m: &LoadedModel) -> usize {
    generate_cases(m)
        .iter()
        .filter(|c| {
            let p = with_case_ids(m, c);
            generate(&m.model, &c.prompt, &p, &mut |_| {}).unwrap().ids == c.output_ids
        })
        .count()
}

/// A folder holding the golden model's weights as `value` maps them (f32), and its config.
fn folder_with(dir: &Path, value: impl Fn(&str, &[f32], &[usize]) -> Vec<f32>) -> PathBuf {
    let src = fixture_dir();
    let st =
        candle_core::safetensors::load(src.join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    let mut out = std::collections::HashMap::new();
    for (name, t) in st {
        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let w = value(&name, &v, t.dims());
        out.insert(
            name,
            candle_core::Tensor::from_vec(w, t.dims(), &candle_core::Device::Cpu).unwrap(),
        );
    }
    candle_core::safetensors::save(&out, dir.join("model.safetensors")).unwrap();
    for file in ["config.json", "generation_config.json"] {
        std::fs::copy(src.join(file), dir.join(file)).unwrap();
    }
    dir.to_path_buf()
}

#[test]
fn published_layout_files_answer_as_the_reference() {
    let reference = load_model(&fixture_dir()).unwrap();
    let f32_file = load_model(&gguf_file("model-f32.gguf")).unwrap();
    assert_eq!(f32_file.model.config().num_hidden_layers, 3);
    assert_eq!(f32_file.model.config().rope_dim(), 8);
    let (max, _, _) = logits_distance(&reference, &f32_file);
    assert!(max < 1e-4, "the same weights give the same logits ({max})");
    assert_eq!(
        golden_generations(&f32_file),
        8,
        "model-f32.gguf: all 8 generate cases"
    );

    // The bf16 file holds the weights rounded to nearest-even (fixtures/golden/README.md):
    // it must compute exactly what those rounded weights give through safetensors.
    let dir = tempfile::tempdir().unwrap();
    // Norms, the router and the bias stay F32 in every file.
    let rounded = folder_with(dir.path(), |name, v, dims| {
        if dims.len() == 1 || name.ends_with("mlp.gate.weight") {
            return v.to_vec();
        }
        v.iter()
            .map(|&x| half::bf16::from_f32(x).to_f32())
            .collect()
    });
    let rounded = load_model(&rounded).unwrap();
    let bf16_file = load_model(&gguf_file("model-bf16.gguf")).unwrap();
    let (max, _, _) = logits_distance(&rounded, &bf16_file);
    assert_eq!(max, 0.0, "the bf16 file is the weights rounded to bf16");
    let (max, mean, top1) = logits_distance(&reference, &bf16_file);
    let gens = golden_generations(&bf16_file);
    println!(
        "model-bf16.gguf vs the reference: logits max |diff| {max:.4}, mean {mean:.5}, argmax agreement {:.1}%, golden generations {gens}/8",
        100.0 * top1
    );
    assert_eq!(gens, golden_generations(&rounded));
    assert!(
        gens >= 7 && top1 == 1.0,
        "{gens}/8, argmax agreement {top1}"
    );
}

/// The model the q8_0 / q4_0 file holds, dequantized by hand with the README's rules
/// (not llada's kernels): `block` maps one block's bytes to its 32 values.
fn dequantized_folder(
    dir: &Path,
    file: &Path,
    block_bytes: usize,
    block: fn(&[u8]) -> Vec<f32>,
) -> PathBuf {
    let c = llada::gguf::container::Container::open(file).unwrap();
    folder_with(dir, |name, v, dims| {
        let loc = llada::gguf::layout::locate(name).unwrap();
        let e = &c.tensors[&loc.tensor];
        let bytes = c.bytes(e);
        let bytes = match loc.expert {
            Some(i) => &bytes[i * bytes.len() / e.ne[2]..(i + 1) * bytes.len() / e.ne[2]],
            None => bytes,
        };
        let n: usize = dims.iter().product();
        match e.dtype {
            candle_core::quantized::GgmlDType::F32 => v.to_vec(),
            candle_core::quantized::GgmlDType::Q8_0 => {
                bytes.chunks(34).flat_map(q8_0_block).collect()
            }
            _ => bytes.chunks(block_bytes).flat_map(block).take(n).collect(),
        }
    })
}

fn f16_at(b: &[u8]) -> f32 {
    half::f16::from_le_bytes([b[0], b[1]]).to_f32()
}

fn q8_0_block(b: &[u8]) -> Vec<f32> {
    let d = f16_at(b);
    b[2..34].iter().map(|&q| d * (q as i8) as f32).collect()
}

fn q4_0_block(b: &[u8]) -> Vec<f32> {
    let d = f16_at(b);
    let low = b[2..18].iter().map(|&q| d * ((q & 15) as f32 - 8.0));
    let high = b[2..18].iter().map(|&q| d * ((q >> 4) as f32 - 8.0));
    low.chain(high).collect()
}

#[test]
fn quantized_layout_files_run_their_blocks_as_ggml_does() {
    let reference = load_model(&fixture_dir()).unwrap();
    let own_q8 = load_model_with(&fixture_dir(), Some(Quant::Q8_0)).unwrap();
    let (_, own_mean, own_top1) = logits_distance(&reference, &own_q8);
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes, block) in [
        ("model-q8_0.gguf", 34, q8_0_block as fn(&[u8]) -> Vec<f32>),
        ("model-q4_0.gguf", 18, q4_0_block),
    ] {
        let sub = dir.path().join(name);
        std::fs::create_dir_all(&sub).unwrap();
        let plain = load_model(&dequantized_folder(&sub, &gguf_file(name), bytes, block)).unwrap();
        let m = load_model(&gguf_file(name)).unwrap();
        assert!(m.weights.to_string().contains("GGUF"), "{}", m.weights);
        let (_, kernel_mean, kernel_top1) = logits_distance(&plain, &m);
        let (_, mean, top1) = logits_distance(&reference, &m);
        println!(
            "{name}: vs its own weights in f32: mean |diff| {kernel_mean:.5}, argmax agreement {:.1}% \
             (activations in q8_0, as ggml runs them); vs the reference: mean {mean:.5}, {:.1}% \
             (llada's q8_0: {own_mean:.5}, {:.1}%); golden generations {}/8",
            100.0 * kernel_top1,
            100.0 * top1,
            100.0 * own_top1,
            golden_generations(&m)
        );
        // The blocks run as llada's own q8_0 path does: the same cost over their weights.
        assert!(
            kernel_mean <= 1.2 * own_mean,
            "{name}: {kernel_mean} vs {own_mean}"
        );
        assert!(
            kernel_top1 >= own_top1 - 0.02,
            "{name}: {kernel_top1} vs {own_top1}"
        );
    }
}

#[test]
fn a_written_file_loads_back_as_the_load_it_came_from() {
    let dir = tempfile::tempdir().unwrap();
    for quant in [Quant::Q8_0, Quant::Q4k] {
        let path = dir.path().join(format!("tiny-{}.gguf", quant.name()));
        let report =
            llada::write_gguf(ModelSource::Dir(&fixture_dir()), Some(quant), &path).unwrap();
        assert!(report.quantized > 0 && report.quantized < report.tensors);
        let from_file = load_model(&path).unwrap();
        let at_load = load_model_with(&fixture_dir(), Some(quant)).unwrap();
        assert_eq!(from_file.model.weight_bytes(), at_load.model.weight_bytes());
        let ids = [5u32, 6, 7, 8, 9, 10, 11, 12, 13];
        let a = from_file.model.forward_full(&ids, 4).unwrap();
        let b = at_load.model.forward_full(&ids, 4).unwrap();
        assert_eq!(
            max_abs_diff(&a, &b),
            0.0,
            "{quant:?}: same blocks, same logits"
        );
        // The generation config's special ids travel in the file.
        let p = from_file.default_params();
        assert_eq!((p.mask_id, p.eos_id), (510, 509));
    }
    // f32 (no --quant): the reference's weights exactly.
    let path = dir.path().join("tiny-f32.gguf");
    llada::write_gguf(ModelSource::Dir(&fixture_dir()), None, &path).unwrap();
    let m = load_model(&path).unwrap();
    assert_eq!(golden_generations(&m), 8);
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| !f.ends_with(".gguf"))
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
}

#[test]
fn the_default_model_file_carries_its_tokenizer_and_template() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("default.gguf");
    let folder = common::repo_root().join("models/default");
    llada::write_gguf(ModelSource::Dir(&folder), Some(Quant::Q8_0), &path).unwrap();
    let from_file = load_model(&path).unwrap();
    let original = load_model(&folder).unwrap();
    let (a, b) = (
        from_file
            .tokenizer
            .as_ref()
            .expect("a tokenizer from the metadata"),
        original.tokenizer.as_ref().unwrap(),
    );
    for text in [
        "Reverse: 1 2 3",
        "  leading spaces, 12345 digits,\nnew lines\t\ttabs, ünïcödé and emoji 🙂",
        "<role>HUMAN</role>special tokens<|role_end|> inside <|mask|>",
        "",
    ] {
        assert_eq!(a.encode(text).unwrap(), b.encode(text).unwrap(), "{text:?}");
        let ids = b.encode(text).unwrap();
        assert_eq!(
            a.decode(&ids, false).unwrap(),
            b.decode(&ids, false).unwrap()
        );
    }
    let chat = [
        llada::Message::new("system", "Be brief."),
        llada::Message::new("user", "Reverse: 4 5"),
    ];
    assert_eq!(
        a.encode_chat(&chat, true).unwrap(),
        b.encode_chat(&chat, true).unwrap()
    );
    let (p, q) = (from_file.default_params(), original.default_params());
    assert_eq!(
        (p.mask_id, p.eos_id, &p.extra_stop_ids),
        (q.mask_id, q.eos_id, &q.extra_stop_ids)
    );
}

/// Byte offset of tensor `name`'s entry in the table: just after its name.
fn table_entry(bytes: &[u8], name: &str) -> usize {
    let needle = name.as_bytes();
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap();
    at + needle.len()
}

fn load_error(path: &Path) -> String {
    let err = load_model(path)
        .err()
        .expect("the file must be refused")
        .to_string();
    assert!(
        err.contains(&path.display().to_string()),
        "the file is named: {err}"
    );
    assert!(!err.to_lowercase().contains("backtrace"), "{err}");
    err
}

#[test]
fn broken_files_are_refused_naming_the_file_and_the_item() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(gguf_file("model-q8_0.gguf")).unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    // Not GGUF at all.
    let err = load_error(&write("junk.gguf", b"PK\x03\x04 this is a zip"));
    assert!(err.contains("magic"), "{err}");
    // Truncated: at every cut, in the header, the metadata, the table or the data.
    for cut in [3, 20, 200, 5000, good.len() / 2, good.len() - 1] {
        let err = load_error(&write(&format!("cut{cut}.gguf"), &good[..cut]));
        assert!(
            err.contains("truncated") || err.contains("past the end"),
            "cut at {cut}: {err}"
        );
    }
    // Counts that declare more than the file holds are refused before allocating.
    let mut huge = good.clone();
    huge[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    let err = load_error(&write("huge-count.gguf", &huge));
    assert!(err.contains("tensor count"), "{err}");
    let mut huge = good.clone();
    huge[24..32].copy_from_slice(&(u64::MAX / 2).to_le_bytes()); // the first key's length
    let err = load_error(&write("huge-string.gguf", &huge));
    assert!(err.contains("key 0"), "{err}");
    // Another architecture.
    let mut other = good.clone();
    let at = table_entry(&other, "general.architecture") + 4 + 8;
    assert_eq!(&other[at..at + 6], b"llada2");
    other[at..at + 6].copy_from_slice(b"llama3");
    let err = load_error(&write("llama.gguf", &other));
    assert!(
        err.contains("\"llama3\"") && err.contains("general.architecture"),
        "{err}"
    );
    // A tensor whose shape disagrees with the keys (same size: [64, 128] read as [128, 64]).
    let mut shape = good.clone();
    let at = table_entry(&shape, "blk.1.attn_qkv.weight");
    assert_eq!(u32::from_le_bytes(shape[at..at + 4].try_into().unwrap()), 2);
    shape[at + 4..at + 12].copy_from_slice(&128u64.to_le_bytes());
    shape[at + 12..at + 20].copy_from_slice(&64u64.to_le_bytes());
    let err = load_error(&write("shape.gguf", &shape));
    assert!(
        err.contains("blk.1.attn_qkv.weight") && err.contains("shape"),
        "{err}"
    );
    // Data that does not follow the previous tensor's (overlapping or misaligned).
    let mut offset = good.clone();
    let at = table_entry(&offset, "blk.1.attn_qkv.weight") + 4 + 2 * 8 + 4;
    let was = u64::from_le_bytes(offset[at..at + 8].try_into().unwrap());
    offset[at..at + 8].copy_from_slice(&(was + 1).to_le_bytes());
    let err = load_error(&write("offset.gguf", &offset));
    assert!(
        err.contains("blk.1.attn_qkv.weight") && err.contains("offset"),
        "{err}"
    );
    // A tensor the keys do not describe (and so one they do, missing).
    let mut stray = good.clone();
    let at = table_entry(&stray, "blk.2.attn_q_norm.weight") - "q_norm.weight".len();
    stray[at..at + 1].copy_from_slice(b"x");
    let err = load_error(&write("stray.gguf", &stray));
    assert!(
        err.contains("blk.2.attn_q_norm.weight") && err.contains("missing"),
        "{err}"
    );
    // A file for a next-token model.
    let mut shifted = good.clone();
    let at = table_entry(&shifted, "diffusion.shift_logits") + 4;
    assert_eq!(shifted[at], 0);
    shifted[at] = 1;
    let err = load_error(&write("shifted.gguf", &shifted));
    assert!(err.contains("diffusion.shift_logits"), "{err}");
    // More layers than the file holds: refused before anything is allocated.
    let mut layers = good.clone();
    let at = table_entry(&layers, "llada2.block_count") + 4;
    layers[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    let err = load_error(&write("layers.gguf", &layers));
    assert!(
        err.contains("block_count") && err.contains("blk.3.attn_qkv.weight"),
        "{err}"
    );
    // An expert count the stacked tensors do not have.
    let mut experts = good.clone();
    let at = table_entry(&experts, "llada2.expert_count") + 4;
    experts[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    let err = load_error(&write("experts.gguf", &experts));
    assert!(
        err.contains("expert_count") && err.contains("ffn_up_exps"),
        "{err}"
    );
    // A tensor type llada cannot read.
    let mut kind = good.clone();
    let at = table_entry(&kind, "blk.0.attn_qkv.weight") + 4 + 2 * 8;
    kind[at..at + 4].copy_from_slice(&99u32.to_le_bytes());
    let err = load_error(&write("type.gguf", &kind));
    assert!(
        err.contains("blk.0.attn_qkv.weight") && err.contains("type 99"),
        "{err}"
    );
    // A missing key.
    let mut key = good.clone();
    let at = table_entry(&key, "llada2.block_count") - "block_count".len();
    key[at..at + 5].copy_from_slice(b"BLOCK");
    let err = load_error(&write("key.gguf", &key));
    assert!(err.contains("llada2.block_count"), "{err}");
}

#[test]
fn split_files_load_as_one() {
    use llada::gguf::container::Container;
    use llada::gguf::writer::{write, Planned};
    let one = gguf_file("model-f32.gguf");
    let c = Container::open(&one).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<&String> = c.tensors.keys().collect();
    let (first, second) = names.split_at(names.len() / 2);
    for (no, part) in [(1u16, first), (2, second)] {
        let mut meta: Vec<(String, candle_core::quantized::gguf_file::Value)> = if no == 1 {
            c.metadata
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        } else {
            Vec::new()
        };
        use candle_core::quantized::gguf_file::Value;
        meta.push(("split.no".into(), Value::U16(no - 1)));
        meta.push(("split.count".into(), Value::U16(2)));
        meta.push(("split.tensors.count".into(), Value::I32(names.len() as i32)));
        let planned: Vec<Planned> = part
            .iter()
            .map(|n| {
                let e = &c.tensors[*n];
                Planned {
                    name: n.to_string(),
                    dtype: e.dtype,
                    ne: e.ne.clone(),
                }
            })
            .collect();
        let path = dir.path().join(format!("tiny-{no:05}-of-00002.gguf"));
        write(&path, &meta, &planned, |i| {
            Ok(c.bytes(&c.tensors[part[i].as_str()]).to_vec())
        })
        .unwrap();
    }
    let whole = load_model(&one).unwrap();
    let split = load_model(&dir.path().join("tiny-00001-of-00002.gguf")).unwrap();
    let ids = [3u32, 1, 4, 1, 5, 9, 2, 6];
    let d = max_abs_diff(
        &whole.model.forward_full(&ids, 4).unwrap(),
        &split.model.forward_full(&ids, 4).unwrap(),
    );
    assert_eq!(d, 0.0);
    std::fs::remove_file(dir.path().join("tiny-00002-of-00002.gguf")).unwrap();
    let err = load_model(&dir.path().join("tiny-00001-of-00002.gguf"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("tiny-00002-of-00002.gguf") && err.contains("missing"),
        "{err}"
    );
}

#[test]
fn folders_written_by_older_llada_still_load() {
    // Older `llada quantize` wrote HF tensor names under architecture llada2_moe.
    use candle_core::quantized::gguf_file::{self, Value};
    use candle_core::quantized::{GgmlDType, QTensor};
    let src = fixture_dir();
    let dir = tempfile::tempdir().unwrap();
    let st =
        candle_core::safetensors::load(src.join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    let tensors: Vec<(String, QTensor)> = st
        .iter()
        .map(|(n, t)| {
            let q = match (n.ends_with("_proj.weight"), t.dims()) {
                (true, [_, cols]) if cols % 32 == 0 => GgmlDType::Q8_0,
                _ => GgmlDType::F32,
            };
            (n.clone(), QTensor::quantize(t, q).unwrap())
        })
        .collect();
    let mut f = std::fs::File::create(dir.path().join("model.gguf")).unwrap();
    let arch = Value::String("llada2_moe".into());
    let quant = Value::String("q8_0".into());
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    gguf_file::write(
        &mut f,
        &[
            ("general.architecture", &arch),
            ("llada.quantization", &quant),
        ],
        &refs,
    )
    .unwrap();
    for file in ["config.json", "generation_config.json"] {
        std::fs::copy(src.join(file), dir.path().join(file)).unwrap();
    }
    let m = load_model(dir.path()).unwrap();
    assert_eq!(m.weights.to_string(), "q8_0 GGUF");
    let (_, mean, top1) = logits_distance(&load_model(&src).unwrap(), &m);
    assert!(
        mean < 0.15 && top1 > 0.9,
        "mean {mean}, argmax agreement {top1}"
    );
}
