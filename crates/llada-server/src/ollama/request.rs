//! Ollama's request bodies, and its `options` read as the settings the OpenAI routes
//! take ([`CommonParams`]), so that both APIs check and decode a request the same way.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use llada::DecodeSettings;

use crate::api::{field_errors, is_set, ChatMessage, CommonParams, Content, Stop};
use crate::error::ApiError;

/// The fields `/api/chat` and `/api/generate` share. `keep_alive` (how long Ollama keeps
/// a model loaded after the request) is not read: this server loads its one model at
/// start and keeps it until it stops, so any value, `0` ("unload now") included, is
/// accepted and changes nothing.
#[derive(Debug, Deserialize)]
pub struct Shared {
    pub model: Option<String>,
    /// Ollama streams unless told not to.
    stream: Option<bool>,
    format: Option<Value>,
    think: Option<Value>,
    logprobs: Option<Value>,
    top_logprobs: Option<Value>,
}

impl Shared {
    pub fn stream(&self) -> bool {
        self.stream.unwrap_or(true)
    }

    /// Refuses what would change the answer's shape or meaning and llada cannot do.
    pub fn check(&self) -> Result<(), ApiError> {
        let json = "llada cannot constrain an answer to JSON or a schema";
        let thinking = "the model does not think apart from its answer";
        let probabilities = "the server reports no probabilities";
        for (value, name, why) in [
            (&self.format, "format", json),
            (&self.think, "think", thinking),
            (&self.logprobs, "logprobs", probabilities),
            (&self.top_logprobs, "top_logprobs", probabilities),
        ] {
            refuse(value, name, why)?;
        }
        Ok(())
    }
}

const IMAGES: &str = "the model reads text only";
const TOOLS: &str = "the model does not call tools";

/// 400 for a field llada cannot honour when it asks for something (`null`, `false`,
/// `0`, `""`, `[]` and `{}` ask for nothing).
fn refuse(value: &Option<Value>, name: &str, why: &str) -> Result<(), ApiError> {
    if is_set(value) {
        let message = format!("`{name}` is not supported: {why}");
        return Err(ApiError::invalid_param(name, message));
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
pub struct ChatBody {
    messages: Option<Vec<Message>>,
    tools: Option<Value>,
}

/// A chat message. `thinking` (a thinking model's earlier reasoning) is not read: chat
/// templates leave it out of the prompt, as Ollama does for models that do not think.
#[derive(Debug, Deserialize)]
struct Message {
    role: String,
    content: Option<String>,
    images: Option<Value>,
    tool_calls: Option<Value>,
}

impl ChatBody {
    /// The engine's messages (none: Ollama's request to load the model).
    pub fn messages(&self) -> Result<Vec<llada::Message>, ApiError> {
        refuse(&self.tools, "tools", TOOLS)?;
        let messages = self.messages.iter().flatten().enumerate();
        messages
            .map(|(i, m)| {
                refuse(&m.images, &format!("messages[{i}].images"), IMAGES)?;
                refuse(&m.tool_calls, &format!("messages[{i}].tool_calls"), TOOLS)?;
                // The roles and checks of OpenAI's messages.
                let content = Content::Text(m.content.clone().unwrap_or_default());
                let message = ChatMessage {
                    role: m.role.clone(),
                    content: Some(content),
                };
                message.to_engine(i)
            })
            .collect()
    }
}

#[derive(Debug, Deserialize)]
pub struct GenerateBody {
    pub prompt: Option<String>,
    pub system: Option<String>,
    /// The prompt as it is, without the chat template.
    pub raw: Option<bool>,
    template: Option<Value>,
    suffix: Option<Value>,
    context: Option<Value>,
    images: Option<Value>,
    width: Option<Value>,
    height: Option<Value>,
    steps: Option<Value>,
}

impl GenerateBody {
    pub fn check(&self) -> Result<(), ApiError> {
        let template = "prompts use the model's chat template, or none with `raw`";
        let fim = "the model does not fill in the middle";
        let context = "send the conversation to /api/chat instead";
        let image = "it is an image-generation setting (diffusion steps are `options.steps`)";
        for (value, name, why) in [
            (&self.images, "images", IMAGES),
            (&self.template, "template", template),
            (&self.suffix, "suffix", fim),
            (&self.context, "context", context),
            (&self.width, "width", image),
            (&self.height, "height", image),
            (&self.steps, "steps", image),
        ] {
            refuse(value, name, why)?;
        }
        if self.raw == Some(true) && self.system.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::invalid_param(
                "system",
                "`system` has no effect with `raw` (the prompt is used as it is): put it in the prompt",
            ));
        }
        Ok(())
    }
}

/// `/api/show`'s body: the model as `model`, or as `name` (older clients).
#[derive(Debug, Deserialize)]
pub struct ShowBody {
    pub model: Option<String>,
    pub name: Option<String>,
}

/// Ollama options that tune how its runner loads and runs a model, or that only matter
/// together with a sampling option refused below. The server fixes the former at start
/// (the context is the model's; threads, devices and batches are its flags), and neither
/// changes an answer here, so they are accepted and have no effect.
const NO_EFFECT: &[&str] = &[
    "num_ctx",
    "num_batch",
    "num_gpu",
    "main_gpu",
    "low_vram",
    "f16_kv",
    "logits_all",
    "vocab_only",
    "use_mmap",
    "use_mlock",
    "embedding_only",
    "num_thread",
    "numa",
    "num_keep",
    "repeat_last_n",
    "mirostat_tau",
    "mirostat_eta",
    "penalize_newline",
];

/// Ollama's sampling options that llada's sampler lacks, with the value that leaves
/// sampling as it is: that value is accepted, any other refused (the answer would not be
/// sampled as asked).
const NEUTRAL: &[(&str, f64)] = &[
    ("min_p", 0.0),
    ("typical_p", 1.0),
    ("tfs_z", 1.0),
    ("repeat_penalty", 1.0),
    ("presence_penalty", 0.0),
    ("frequency_penalty", 0.0),
    ("mirostat", 0.0),
];

/// What `options` holds besides the decoding settings.
#[derive(Debug, Deserialize)]
struct Options<T> {
    options: T,
}

#[derive(Debug, Deserialize)]
struct Length {
    num_predict: Option<i64>,
    stop: Option<Stop>,
}

/// The request's settings from its `options`: Ollama's `temperature`, `top_k`, `top_p`,
/// `seed`, `stop` and `num_predict` (the answer's length), and every decoding setting
/// the OpenAI routes take as a body field (`block_length`, `steps`, `decoder`,
/// `threshold`, ...) under the same name. Unknown options are refused, so that a
/// misspelt decoding setting is not silently ignored.
pub fn settings(body: &Value, stream: bool) -> Result<CommonParams, ApiError> {
    let options = match body.get("options") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(options)) => options.clone(),
        Some(_) => {
            let message = "invalid `options`: expected an object";
            return Err(ApiError::invalid_param("options", message));
        }
    };
    let mut kept = Map::new();
    for (key, value) in options {
        if !value.is_null() && !has_no_effect(&key, &value)? {
            kept.insert(key, value);
        }
    }
    // Parsed under `options` so that errors name `options.temperature`.
    let kept = json!({ "options": kept });
    let length: Options<Length> = field_errors(&kept)?;
    let decode: Options<DecodeSettings> = field_errors(&kept)?;
    Ok(CommonParams {
        max_tokens: max_tokens(length.options.num_predict)?,
        stop: length.options.stop,
        decode: decode.options,
        stream: Some(stream),
        length_name: Some("options.num_predict"),
        ..Default::default()
    })
}

/// Whether option `key` is accepted without effect; an error for one that cannot be
/// honoured or is unknown.
fn has_no_effect(key: &str, value: &Value) -> Result<bool, ApiError> {
    let param = format!("options.{key}");
    if NO_EFFECT.contains(&key) {
        return Ok(true);
    }
    // Ollama's seed -1: a random seed, as without one.
    if key == "seed" && value.as_i64().is_some_and(|s| s < 0) {
        return Ok(true);
    }
    if let Some(&(_, neutral)) = NEUTRAL.iter().find(|(k, _)| *k == key) {
        if value.as_f64() == Some(neutral) {
            return Ok(true);
        }
        let message = format!(
            "`{param}` is not supported: llada samples with temperature, top_k and top_p (leave it out or send {neutral})"
        );
        return Err(ApiError::invalid_param(&param, message));
    }
    if key == "gen_length" {
        let message = "the answer's length is `options.num_predict`";
        return Err(ApiError::invalid_param(&param, message));
    }
    if matches!(key, "num_predict" | "stop") || DecodeSettings::keys().contains(&key) {
        return Ok(false);
    }
    let settings: Vec<_> = DecodeSettings::keys()
        .iter()
        .filter(|k| **k != "gen_length")
        .copied()
        .collect();
    let message = format!(
        "unknown option `{key}` (llada takes Ollama's temperature, top_k, top_p, seed, stop and num_predict, and its decoding settings: {})",
        settings.join(", ")
    );
    Err(ApiError::invalid_param(&param, message))
}

/// `num_predict` as `max_tokens`: Ollama's -1 ("no limit") and -2 ("fill the context")
/// take the server's default length, itself capped by what the context leaves.
fn max_tokens(num_predict: Option<i64>) -> Result<Option<u32>, ApiError> {
    match num_predict {
        None | Some(-1 | -2) => Ok(None),
        Some(n) if n < 0 => Err(ApiError::invalid_param(
            "options.num_predict",
            format!("invalid `options.num_predict`: must be at least 1, or -1 or -2 for the server's default length; got {n}"),
        )),
        Some(n) => Ok(Some(u32::try_from(n).unwrap_or(u32::MAX))),
    }
}
