//! A tokenizer carried in GGUF metadata (`tokenizer.ggml.*`, as llama.cpp writes a
//! byte-level BPE, "gpt2"): rebuilt into a `tokenizer.json` document for the
//! `tokenizers` crate, and written from one. The pre-tokenizer is named, not stored
//! (`tokenizer.ggml.pre`): the names llada knows are below, any other is refused rather
//! than guessed.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use serde_json::{json, Value as Json};

use super::{Tokenizer, MASK_TOKEN};
use crate::error::{Error, Result};

/// llama.cpp's token types.
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

/// The real LLaDA2 / Ling-2.0 split regex (llama.cpp's `bailingmoe2`).
const BAILINGMOE2_REGEX: &str = r"(?i:'[sdmt]|'ll|'ve|'re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+";

fn byte_level(use_regex: bool) -> Json {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

fn split(regex: &str) -> Json {
    json!({"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false})
}

/// The pre-tokenizer `tokenizer.ggml.pre` names: llama.cpp's `gpt-2` and `bailingmoe2`,
/// and `llada-digits`, llada's default model's (digits one by one, then GPT-2's split),
/// which other runtimes do not know and so refuse.
fn pre_tokenizer(name: &str) -> Option<Json> {
    Some(match name {
        "gpt-2" | "gpt2" | "default" => byte_level(true),
        "bailingmoe2" => {
            json!({"type": "Sequence", "pretokenizers": [split(BAILINGMOE2_REGEX), byte_level(false)]})
        }
        "llada-digits" => {
            json!({"type": "Sequence", "pretokenizers": [split(r" ?\p{N}"), byte_level(true)]})
        }
        _ => return None,
    })
}

const PRE_NAMES: &[&str] = &["gpt-2", "bailingmoe2", "llada-digits"];

fn strings(meta: &BTreeMap<String, Value>, key: &str) -> Option<Vec<String>> {
    match meta.get(key)? {
        Value::Array(items) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => Some(s.clone()),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

fn id(meta: &BTreeMap<String, Value>, key: &str) -> Option<u32> {
    match meta.get(key)? {
        Value::U32(v) => Some(*v),
        Value::I32(v) if *v >= 0 => Some(*v as u32),
        Value::U64(v) => u32::try_from(*v).ok(),
        _ => None,
    }
}

/// The tokenizer in `meta` (`None` when the file says it has none: `tokenizer.ggml.model`
/// absent or `none`). `path` names the file in errors.
/// The tokens must be one per row of the model's embeddings (`vocab_size`), and each
/// special id and the template well-formed: a file's mistake is named by its key here,
/// not later as a flag the user never passed.
pub fn from_metadata(
    meta: &BTreeMap<String, Value>,
    vocab_size: usize,
    path: &Path,
) -> Result<Option<Tokenizer>> {
    let bad = |message: String| Error::Tokenizer {
        path: path.to_path_buf(),
        message,
    };
    let model = match meta.get("tokenizer.ggml.model") {
        None => return Ok(None),
        Some(Value::String(m)) => m.as_str(),
        Some(_) => return Err(bad("tokenizer.ggml.model is not a string".into())),
    };
    match model {
        "none" => return Ok(None),
        "gpt2" => {}
        other => {
            return Err(bad(format!(
                "tokenizer.ggml.model {other:?}: llada rebuilds byte-level BPE (\"gpt2\") tokenizers only"
            )))
        }
    }
    let tokens = strings(meta, "tokenizer.ggml.tokens")
        .ok_or_else(|| bad("tokenizer.ggml.tokens is missing or not a list of strings".into()))?;
    if tokens.len() != vocab_size {
        return Err(bad(format!(
            "tokenizer.ggml.tokens holds {} tokens, the model's embeddings {vocab_size} rows",
            tokens.len()
        )));
    }
    for key in [
        "eos_token_id",
        "bos_token_id",
        "padding_token_id",
        "mask_token_id",
    ] {
        let key = format!("tokenizer.ggml.{key}");
        match meta.get(&key) {
            None => {}
            Some(_) if id(meta, &key).is_some_and(|i| (i as usize) < tokens.len()) => {}
            Some(v) => {
                return Err(bad(format!(
                    "{key} is {v:?}, not a token id below {}",
                    tokens.len()
                )))
            }
        }
    }
    match (
        id(meta, "tokenizer.ggml.mask_token_id"),
        id(meta, "tokenizer.ggml.eos_token_id"),
    ) {
        (Some(m), Some(e)) if m == e => {
            return Err(bad(format!(
                "tokenizer.ggml.mask_token_id and eos_token_id are both {m}"
            )))
        }
        _ => {}
    }
    let merges = strings(meta, "tokenizer.ggml.merges")
        .ok_or_else(|| bad("tokenizer.ggml.merges is missing or not a list of strings".into()))?;
    let types: Vec<i32> = match meta.get("tokenizer.ggml.token_type") {
        Some(Value::Array(items)) if items.len() == tokens.len() => items
            .iter()
            .map(|v| match v {
                Value::I32(t) => Ok(*t),
                Value::U32(t) => Ok(*t as i32),
                _ => Err(bad("tokenizer.ggml.token_type holds a non-integer".into())),
            })
            .collect::<Result<_>>()?,
        None => vec![NORMAL; tokens.len()],
        Some(_) => {
            return Err(bad(format!(
                "tokenizer.ggml.token_type does not have one entry per token ({})",
                tokens.len()
            )))
        }
    };
    let pre_name = match meta.get("tokenizer.ggml.pre") {
        Some(Value::String(p)) => p.as_str(),
        None => "default",
        Some(_) => return Err(bad("tokenizer.ggml.pre is not a string".into())),
    };
    let pre = pre_tokenizer(pre_name).ok_or_else(|| {
        bad(format!(
            "tokenizer.ggml.pre {pre_name:?} is a pre-tokenizer llada does not implement ({})",
            PRE_NAMES.join(", ")
        ))
    })?;
    let mut vocab = serde_json::Map::with_capacity(tokens.len());
    let mut added = Vec::new();
    for (i, (token, &kind)) in tokens.iter().zip(&types).enumerate() {
        vocab.insert(token.clone(), json!(i));
        if kind == CONTROL || kind == USER_DEFINED {
            added.push(json!({
                "id": i, "content": token, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": kind == CONTROL,
            }));
        }
    }
    let document = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre,
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges,
        },
    });
    let token_text = |key: &str| id(meta, key).and_then(|i| tokens.get(i as usize)).cloned();
    let mut config = serde_json::Map::new();
    if let Some(t) = token_text("tokenizer.ggml.eos_token_id") {
        config.insert("eos_token".into(), json!(t));
    }
    if let Some(t) = token_text("tokenizer.ggml.bos_token_id") {
        config.insert("bos_token".into(), json!(t));
    }
    match meta.get("tokenizer.chat_template") {
        None => {}
        Some(Value::String(t)) => {
            config.insert("chat_template".into(), json!(t));
        }
        Some(other) => {
            return Err(bad(format!(
                "tokenizer.chat_template should be a string, found {:?}",
                other.value_type()
            )))
        }
    }
    Tokenizer::from_parts(
        &document.to_string(),
        Some(&Json::Object(config).to_string()),
        None,
        path,
    )
    .map(Some)
    // from_parts names a folder's tokenizer.json or tokenizer_config.json: here the
    // tokenizer is the file's tokenizer.* keys.
    .map_err(|e| {
        let message = match e {
            Error::Tokenizer { message, .. } => message,
            Error::ChatTemplate { message, .. } => format!("tokenizer.chat_template: {message}"),
            other => other.to_string(),
        };
        bad(format!(
            "the tokenizer in its tokenizer.ggml.* keys: {message}"
        ))
    })
}

/// `tokenizer.ggml.*` and `tokenizer.chat_template` for the tokenizer of a model folder
/// (`tokenizer.json`, `tokenizer_config.json` texts), its vocabulary padded with unused
/// `[PAD<id>]` entries to the model's `vocab_size`. A tokenizer that is not a byte-level
/// BPE with a pre-tokenizer that has a name is refused, naming what differs.
pub fn to_metadata(
    tokenizer_json: &str,
    tokenizer: &Tokenizer,
    vocab_size: usize,
    path: &Path,
) -> Result<Vec<(String, Value)>> {
    let bad = |message: String| Error::Tokenizer {
        path: path.to_path_buf(),
        message: format!("cannot be written as GGUF metadata: {message}"),
    };
    let doc: Json = serde_json::from_str(tokenizer_json).map_err(|e| bad(e.to_string()))?;
    let model = &doc["model"];
    if model["type"] != "BPE" || model["byte_fallback"] == true {
        return Err(bad("its model is not a byte-level BPE".into()));
    }
    if !doc["normalizer"].is_null() {
        return Err(bad(
            "it has a normalizer (GGUF's gpt2 tokenizers have none)".into(),
        ));
    }
    let pre = PRE_NAMES
        .iter()
        .find(|name| pre_tokenizer(name).as_ref() == Some(&doc["pre_tokenizer"]))
        .ok_or_else(|| {
            bad(format!(
                "its pre-tokenizer {} has no GGUF name llada knows",
                doc["pre_tokenizer"]
            ))
        })?;
    let vocab = model["vocab"]
        .as_object()
        .ok_or_else(|| bad("model.vocab is not a map".into()))?;
    let mut tokens: Vec<Option<String>> = vec![None; vocab_size];
    let mut types = vec![UNUSED; vocab_size];
    let mut place = |token: &str, id: u64, kind: i32| -> Result<()> {
        let id = id as usize;
        if id >= tokens.len() {
            tokens.resize(id + 1, None);
            types.resize(id + 1, UNUSED);
        }
        tokens[id] = Some(token.to_string());
        types[id] = kind;
        Ok(())
    };
    for (token, id) in vocab {
        let id = id
            .as_u64()
            .ok_or_else(|| bad(format!("{token:?} has no id")))?;
        place(token, id, NORMAL)?;
    }
    for added in doc["added_tokens"].as_array().into_iter().flatten() {
        let (Some(token), Some(id)) = (added["content"].as_str(), added["id"].as_u64()) else {
            return Err(bad("an added token without content or id".into()));
        };
        let kind = if added["special"] == true {
            CONTROL
        } else {
            USER_DEFINED
        };
        place(token, id, kind)?;
    }
    let tokens: Vec<Value> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| Value::String(t.unwrap_or_else(|| format!("[PAD{i}]"))))
        .collect();
    let merges: Vec<Value> = model["merges"]
        .as_array()
        .ok_or_else(|| bad("model.merges is not a list".into()))?
        .iter()
        .map(|m| match m {
            Json::String(s) => Ok(Value::String(s.clone())),
            Json::Array(pair) => match (pair.first(), pair.get(1)) {
                (Some(Json::String(a)), Some(Json::String(b))) => {
                    Ok(Value::String(format!("{a} {b}")))
                }
                _ => Err(bad("a merge is not a pair of strings".into())),
            },
            _ => Err(bad("a merge is not a string or pair".into())),
        })
        .collect::<Result<_>>()?;
    let mut out = vec![
        (
            "tokenizer.ggml.model".to_string(),
            Value::String("gpt2".into()),
        ),
        (
            "tokenizer.ggml.pre".to_string(),
            Value::String(pre.to_string()),
        ),
        ("tokenizer.ggml.tokens".to_string(), Value::Array(tokens)),
        (
            "tokenizer.ggml.token_type".to_string(),
            Value::Array(types.into_iter().map(Value::I32).collect()),
        ),
        ("tokenizer.ggml.merges".to_string(), Value::Array(merges)),
        (
            "tokenizer.ggml.add_bos_token".to_string(),
            Value::Bool(false),
        ),
        (
            "tokenizer.ggml.add_eos_token".to_string(),
            Value::Bool(false),
        ),
    ];
    let ids = [
        ("eos_token_id", tokenizer.eos_id()),
        (
            "bos_token_id",
            tokenizer
                .bos_token
                .as_deref()
                .and_then(|t| tokenizer.token_id(t)),
        ),
        ("padding_token_id", tokenizer.eos_id()),
        ("mask_token_id", tokenizer.token_id(MASK_TOKEN)),
    ];
    for (key, id) in ids {
        if let Some(id) = id {
            out.push((format!("tokenizer.ggml.{key}"), Value::U32(id)));
        }
    }
    out.push((
        "tokenizer.chat_template".to_string(),
        Value::String(tokenizer.chat_template().source().to_string()),
    ));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A two-letter byte-level BPE in GGUF metadata, with `extra` keys on top.
    fn meta(extra: &[(&str, Value)]) -> BTreeMap<String, Value> {
        let s = |v: &[&str]| Value::Array(v.iter().map(|t| Value::String(t.to_string())).collect());
        let mut m = BTreeMap::from([
            (
                "tokenizer.ggml.model".to_string(),
                Value::String("gpt2".into()),
            ),
            (
                "tokenizer.ggml.pre".to_string(),
                Value::String("gpt-2".into()),
            ),
            (
                "tokenizer.ggml.tokens".to_string(),
                s(&["a", "b", "ab", "<|mask|>"]),
            ),
            (
                "tokenizer.ggml.token_type".to_string(),
                Value::Array([1, 1, 1, 3].into_iter().map(Value::I32).collect()),
            ),
            ("tokenizer.ggml.merges".to_string(), s(&["a b"])),
        ]);
        for (k, v) in extra {
            m.insert(k.to_string(), v.clone());
        }
        m
    }

    fn error(m: &BTreeMap<String, Value>, vocab: usize) -> String {
        match from_metadata(m, vocab, Path::new("x.gguf")) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn a_metadata_tokenizer_encodes_and_its_mistakes_are_named_by_key() {
        let t = from_metadata(&meta(&[]), 4, Path::new("x.gguf"))
            .unwrap()
            .unwrap();
        assert_eq!(t.encode("ab<|mask|>a").unwrap(), vec![2, 3, 0]);
        assert_eq!(t.mask_id(), Some(3));
        assert!(error(&meta(&[]), 5).contains("tokenizer.ggml.tokens holds 4 tokens"));
        let eos = ("tokenizer.ggml.eos_token_id", Value::U32(9));
        assert!(error(&meta(&[eos]), 4).contains("tokenizer.ggml.eos_token_id"));
        let same = [
            ("tokenizer.ggml.eos_token_id", Value::U32(3)),
            ("tokenizer.ggml.mask_token_id", Value::U32(3)),
        ];
        assert!(error(&meta(&same), 4).contains("both 3"));
        let template = ("tokenizer.chat_template", Value::U32(1));
        assert!(error(&meta(&[template]), 4).contains("tokenizer.chat_template"));
        let pre = ("tokenizer.ggml.pre", Value::String("qwen2".into()));
        assert!(error(&meta(&[pre]), 4).contains("\"qwen2\""));
        let merges = (
            "tokenizer.ggml.merges",
            Value::Array(vec![Value::String("a zz".into())]),
        );
        let e = error(&meta(&[merges]), 4);
        assert!(e.contains("x.gguf") && e.contains("tokenizer.ggml"), "{e}");
    }
}
