//! What Ollama's model endpoints say about the one served model: `/api/tags` (the models
//! there are), `/api/show` (one model's details), `/api/ps` (the models loaded).

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use llada::{LoadedModel, Model, Quant, WeightFormat};

use super::request::ShowBody;
use super::{check_model, rfc3339};
use crate::api::field_errors;
use crate::error::ApiError;
use crate::routes::JsonBody;
use crate::AppState;

/// The architecture's name, as `llada quantize`'s GGUF files and their keys name it.
const ARCH: &str = "llada2";

/// Facts about the served model found once, at start.
#[derive(Debug, Clone)]
pub struct Card {
    /// Bytes of its weight files, or an estimate where there are none (the built-in
    /// model, a random one).
    pub size: u64,
    /// When its weights were written (the server's start without files).
    pub modified: SystemTime,
    /// An identifier of the model's config and weights in 64 hex digits, the length of
    /// Ollama's digests (clients shorten them to 12). Not a hash of the weights, which
    /// would take long to compute for a big model.
    pub digest: String,
}

impl Card {
    pub fn of(model: &LoadedModel) -> Self {
        let files = weight_files(&model.files.dir);
        let size = if files.is_empty() {
            estimate(model)
        } else {
            files.iter().map(|f| f.0).sum()
        };
        let modified = files.iter().map(|f| f.1).max();
        let described = (
            format!("{:?}", model.files.config),
            model.weights.to_string(),
        );
        let digest = (0u8..4)
            .map(|round| {
                let mut h = DefaultHasher::new();
                (round, &described, size).hash(&mut h);
                format!("{:016x}", h.finish())
            })
            .collect();
        Self {
            size,
            modified: modified.unwrap_or_else(SystemTime::now),
            digest,
        }
    }
}

/// Sizes and times of the model's weight files: a folder's safetensors or GGUF files, or
/// a GGUF file given as the model with its splits (`name-00001-of-00003.gguf`); none
/// where `path` is neither (the built-in model).
fn weight_files(path: &Path) -> Vec<(u64, SystemTime)> {
    let file = path.is_file().then(|| path.file_name()).flatten();
    let stem = file
        .and_then(|n| n.to_str())
        .map(|n| n.split("-00001-of-").next().unwrap_or(n));
    let dir = match file {
        Some(_) => path.parent().unwrap_or(Path::new(".")),
        None => path,
    };
    let wanted = |name: &str| match stem {
        Some(stem) => name == stem || (name.starts_with(stem) && name.contains("-of-")),
        None => name.ends_with(".safetensors") || name.ends_with(".gguf"),
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(wanted))
        .filter_map(|e| e.metadata().ok())
        .map(|m| (m.len(), m.modified().unwrap_or(UNIX_EPOCH)))
        .collect()
}

/// The weights' bytes from their count and number format.
fn estimate(model: &LoadedModel) -> u64 {
    let (linear, other) = model.files.config.weight_counts();
    let bits = match (model.weights.compute(), model.weights.format) {
        (Some(Quant::Q4k), _) => 4.5,
        (Some(_), _) => 8.5,
        (None, WeightFormat::Safetensors(dtype)) => 8.0 * dtype.size_in_bytes() as f64,
        (None, _) => 32.0,
    };
    ((linear + other) as f64 * bits / 8.0) as u64
}

/// Ollama's `details`: the file format, the family, the size in parameters and the
/// number format of the weights (a file's, or the one they were quantized to at load).
fn details(model: &LoadedModel) -> Value {
    let quantized = model.weights.quantized_at_load;
    let (format, level) = match model.weights.format {
        WeightFormat::Gguf(name) => ("gguf", name),
        WeightFormat::Safetensors(dtype) => {
            ("safetensors", quantized.map_or(dtype.as_str(), Quant::name))
        }
        WeightFormat::Random => ("random", quantized.map_or("f32", Quant::name)),
    };
    // ggml's names as Ollama prints them: Q8_0, Q4_K, BF16.
    let level = match level {
        "q4k" => "Q4_K".to_string(),
        other => other.to_uppercase(),
    };
    json!({
        "parent_model": "",
        "format": format,
        "family": ARCH,
        "families": [ARCH],
        "parameter_size": parameter_size(parameters(model)),
        "quantization_level": level,
    })
}

fn parameters(model: &LoadedModel) -> u64 {
    let (linear, other) = model.files.config.weight_counts();
    linear + other
}

/// A parameter count as Ollama prints it: `16.3B`, `1.5M`.
fn parameter_size(n: u64) -> String {
    let (value, unit) = match n {
        n if n >= 1_000_000_000 => (n as f64 / 1e9, "B"),
        n if n >= 1_000_000 => (n as f64 / 1e6, "M"),
        n if n >= 1_000 => (n as f64 / 1e3, "K"),
        n => return n.to_string(),
    };
    format!("{value:.1}{unit}")
}

/// One entry of `/api/tags` and `/api/ps`.
fn entry(state: &AppState) -> Value {
    let card = &state.card;
    json!({
        "name": state.config.model_id,
        "model": state.config.model_id,
        "modified_at": rfc3339(card.modified),
        "size": card.size,
        "digest": card.digest,
        "details": details(&state.model),
    })
}

/// `GET /api/tags`: the one model this server has.
pub async fn tags(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({ "models": [entry(&state)] }))
}

/// `GET /api/ps`: the model, loaded for as long as the server runs (`expires_at` a
/// century away, which Ollama's CLI shows as "Forever").
pub async fn ps(State(state): State<Arc<AppState>>) -> Json<Value> {
    let mut model = entry(&state);
    let forever = SystemTime::now() + Duration::from_secs(100 * 365 * 86_400);
    model["expires_at"] = json!(rfc3339(forever));
    let on_gpu = matches!(state.model.model, Model::Gpu(_));
    model["size_vram"] = json!(if on_gpu { state.card.size } else { 0 });
    model["context_length"] = json!(state.model.files.config.max_position_embeddings);
    Json(json!({ "models": [model] }))
}

/// `POST /api/show`: the model's details, its config as `model_info` (GGUF's keys), the
/// server's decoding defaults as Modelfile parameters, and its chat template.
pub async fn show(
    State(state): State<Arc<AppState>>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let show: ShowBody = field_errors(&body)?;
    check_model(&state, show.model.as_deref().or(show.name.as_deref()))?;
    let template = state.tokenizer().chat_template().source().to_string();
    let parameters = parameters_text(&state);
    let modelfile = format!(
        "# llada serves {}: the Modelfile Ollama would use\nFROM {}\nTEMPLATE \"\"\"{template}\"\"\"\n{}",
        state.config.model_id,
        state.model.files.dir.display(),
        parameters
            .lines()
            .map(|l| format!("PARAMETER {l}\n"))
            .collect::<String>()
    );
    Ok(Json(json!({
        "modelfile": modelfile,
        "parameters": parameters,
        "template": template,
        "details": details(&state.model),
        "model_info": model_info(&state.model),
        "capabilities": ["completion"],
        "modified_at": rfc3339(state.card.modified),
    })))
}

/// The decoding defaults of requests that set nothing, one `name value` a line under
/// the names `options` takes.
fn parameters_text(state: &AppState) -> String {
    let d = &state.defaults;
    let mut lines = vec![
        format!("num_predict {}", state.limits.default_max_tokens),
        format!("temperature {}", d.sampling.temperature),
        format!("block_length {}", d.block_length),
        format!("steps {}", d.steps),
        format!("decoder {}", d.decoder.name()),
        format!("threshold {}", d.decoder.threshold()),
    ];
    if let Some(k) = d.sampling.top_k {
        lines.push(format!("top_k {k}"));
    }
    if let Some(p) = d.sampling.top_p {
        lines.push(format!("top_p {p}"));
    }
    lines.join("\n")
}

/// The config under the keys a GGUF file (and so Ollama) gives it.
fn model_info(model: &LoadedModel) -> Value {
    let c = &model.files.config;
    let heads = c.heads();
    let key = |k: &str| format!("{ARCH}.{k}");
    let mut info = serde_json::Map::new();
    info.insert("general.architecture".into(), json!(ARCH));
    info.insert("general.parameter_count".into(), json!(parameters(model)));
    for (k, v) in [
        ("block_count", c.num_hidden_layers),
        ("context_length", c.max_position_embeddings),
        ("embedding_length", c.hidden_size),
        ("attention.head_count", heads.query),
        ("attention.head_count_kv", heads.kv),
        ("attention.key_length", heads.dim),
        ("rope.dimension_count", c.rope_dim()),
        ("vocab_size", c.vocab_size),
    ] {
        info.insert(key(k), json!(v));
    }
    info.insert(
        key("attention.layer_norm_rms_epsilon"),
        json!(c.rms_norm_eps),
    );
    info.insert(key("rope.freq_base"), json!(c.rope_theta));
    if let Some(ff) = c.intermediate_size {
        info.insert(key("feed_forward_length"), json!(ff));
    }
    if let Some(m) = c.moe_shape() {
        info.insert(key("expert_count"), json!(m.num_experts));
        info.insert(key("expert_used_count"), json!(m.experts_per_token));
        info.insert(key("expert_feed_forward_length"), json!(m.intermediate));
    }
    Value::Object(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_counts_read_as_ollama_prints_them() {
        assert_eq!(parameter_size(16_255_000_000), "16.3B");
        assert_eq!(parameter_size(1_480_000), "1.5M");
        assert_eq!(parameter_size(2_500), "2.5K");
        assert_eq!(parameter_size(12), "12");
    }

    #[test]
    fn weight_files_are_a_folders_or_a_gguf_files_splits() {
        let dir = std::env::temp_dir().join(format!("llada-ollama-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, len) in [
            ("m-00001-of-00002.gguf", 3),
            ("m-00002-of-00002.gguf", 4),
            ("other.gguf", 100),
            ("config.json", 1000),
        ] {
            std::fs::write(dir.join(name), vec![0u8; len]).unwrap();
        }
        let total = |path: &Path| weight_files(path).iter().map(|f| f.0).sum::<u64>();
        assert_eq!(total(&dir.join("m-00001-of-00002.gguf")), 7);
        assert_eq!(total(&dir.join("other.gguf")), 100);
        assert_eq!(total(&dir), 107);
        assert_eq!(total(&dir.join("missing")), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
