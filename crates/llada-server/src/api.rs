//! OpenAI request and response bodies, and how a request's settings become the engine's
//! decoding parameters.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use llada::{DecodeSettings, GenerateParams, Llada2Config};

use crate::error::ApiError;

/// Settings shared by `/v1/chat/completions` and `/v1/completions` (parsed from the same
/// body as the endpoint's own fields): OpenAI's fields, and the engine's decoding
/// settings ([`DecodeSettings`]: `temperature`, `top_p`, `seed` as OpenAI spells them,
/// the diffusion ones such as `block_length`, `threshold`, `decoder` as extra body
/// fields). The answer's length is OpenAI's `max_tokens` / `max_completion_tokens`.
/// Unknown fields are ignored, as OpenAI-style servers do.
#[derive(Debug, Default, Deserialize)]
pub struct CommonParams {
    pub max_tokens: Option<u32>,
    pub max_completion_tokens: Option<u32>,
    /// Read from the same body by [`CommonParams::from_body`] (through serde's flatten,
    /// a bad value's error would lose the field's name).
    #[serde(skip)]
    pub decode: DecodeSettings,
    pub stop: Option<Stop>,
    pub n: Option<u32>,
    pub user: Option<String>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    /// Options that would change the response's shape or meaning; refused when set.
    pub logprobs: Option<serde_json::Value>,
    pub top_logprobs: Option<serde_json::Value>,
    pub tools: Option<serde_json::Value>,
    pub response_format: Option<serde_json::Value>,
    /// The request field that sets the answer's length, as errors name it (`None`:
    /// `max_tokens` or `max_completion_tokens`, whichever was given). Ollama's routes
    /// fill these params from `options.num_predict`.
    #[serde(skip)]
    pub length_name: Option<&'static str>,
}

#[derive(Debug)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

impl<'de> Deserialize<'de> for Stop {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) => Ok(Stop::One(s)),
            value => serde_json::from_value(value)
                .map(Stop::Many)
                .map_err(|_| serde::de::Error::custom("expected a string or an array of strings")),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
}

#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: Option<Content>,
}

/// A message's content: a string, or OpenAI's list of parts (text parts only here).
#[derive(Debug)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

impl<'de> Deserialize<'de> for Content {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) => Ok(Content::Text(s)),
            value @ serde_json::Value::Array(_) => serde_json::from_value(value)
                .map(Content::Parts)
                .map_err(|e| serde::de::Error::custom(format!("invalid content part: {e}"))),
            _ => Err(serde::de::Error::custom(
                "expected a string or an array of content parts",
            )),
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: Prompt,
    pub echo: Option<bool>,
    pub suffix: Option<String>,
}

/// `/v1/completions` prompts: text or token ids, one prompt per request.
#[derive(Debug)]
pub enum Prompt {
    Text(String),
    Ids(Vec<u32>),
    Texts(Vec<String>),
    IdLists(Vec<Vec<u32>>),
}

impl<'de> Deserialize<'de> for Prompt {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        if let serde_json::Value::String(s) = value {
            return Ok(Prompt::Text(s));
        }
        let from = |v: &serde_json::Value| -> Option<Prompt> {
            serde_json::from_value(v.clone())
                .map(Prompt::Ids)
                .or_else(|_| serde_json::from_value(v.clone()).map(Prompt::Texts))
                .or_else(|_| serde_json::from_value(v.clone()).map(Prompt::IdLists))
                .ok()
        };
        from(&value).ok_or_else(|| {
            serde::de::Error::custom(
                "expected a string, an array of token ids (integers from 0), or an array of strings or of token-id arrays",
            )
        })
    }
}

impl ChatMessage {
    /// The engine's message: OpenAI's `developer` role is the template's `system`.
    pub fn to_engine(&self, index: usize) -> Result<llada::Message, ApiError> {
        let param = format!("messages[{index}].content");
        let content = match &self.content {
            None => return Err(ApiError::invalid_param(&param, "a message needs content")),
            Some(Content::Text(text)) => text.clone(),
            Some(Content::Parts(parts)) => {
                let mut text = String::new();
                for part in parts {
                    match (part.kind.as_str(), &part.text) {
                        ("text", Some(t)) => text.push_str(t),
                        ("text", None) => {
                            return Err(ApiError::invalid_param(&param, "a text part needs `text`"))
                        }
                        (kind, _) => {
                            return Err(ApiError::invalid_param(
                                &param,
                                format!(
                                    "content parts of type `{kind}` are not supported (text only)"
                                ),
                            ))
                        }
                    }
                }
                text
            }
        };
        let role = match self.role.as_str() {
            "developer" => "system",
            r @ ("system" | "user" | "assistant") => r,
            other => {
                return Err(ApiError::invalid_param(
                    &format!("messages[{index}].role"),
                    format!("role `{other}` is not supported (system, developer, user, assistant)"),
                ))
            }
        };
        Ok(llada::Message::new(role, content))
    }
}

/// Limits of the server that requests are checked against.
#[derive(Debug, Clone)]
pub struct Limits {
    /// `max_tokens` when a request does not say (capped by what the context leaves).
    pub default_max_tokens: usize,
    /// Largest `block_length` a request may ask for: every masked position of a block
    /// needs a vocabulary-wide row of logits, shared by everyone in the batch.
    pub max_block_length: usize,
}

/// Whether an optional setting is present with a value that asks for something.
pub(crate) fn is_set(v: &Option<serde_json::Value>) -> bool {
    match v {
        None | Some(serde_json::Value::Null) | Some(serde_json::Value::Bool(false)) => false,
        Some(serde_json::Value::Number(n)) => n.as_f64() != Some(0.0),
        Some(serde_json::Value::Array(a)) => !a.is_empty(),
        Some(serde_json::Value::String(s)) => !s.is_empty(),
        Some(serde_json::Value::Object(o)) => !o.is_empty(),
        Some(_) => true,
    }
}

impl CommonParams {
    /// The settings of a request body; errors name the field.
    pub fn from_body(body: &serde_json::Value) -> Result<Self, ApiError> {
        let mut common: Self = field_errors(body)?;
        common.decode = field_errors(body)?;
        Ok(common)
    }

    pub fn stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false)
    }

    /// Refuses options this server does not implement but that a client relies on.
    fn check_unsupported(&self) -> Result<(), ApiError> {
        for (name, value) in [
            ("logprobs", &self.logprobs),
            ("top_logprobs", &self.top_logprobs),
            ("tools", &self.tools),
        ] {
            if is_set(value) {
                return Err(ApiError::invalid_param(
                    name,
                    format!("`{name}` is not supported"),
                ));
            }
        }
        if let Some(format) = &self.response_format {
            let kind = format.get("type").and_then(|t| t.as_str());
            if !format.is_null() && kind != Some("text") {
                return Err(ApiError::invalid_param(
                    "response_format",
                    "only response_format {\"type\": \"text\"} is supported",
                ));
            }
        }
        Ok(())
    }

    pub fn stop_strings(&self) -> Result<Vec<String>, ApiError> {
        let stops = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if stops.len() > 4 {
            return Err(ApiError::invalid_param("stop", "at most 4 stop sequences"));
        }
        if stops.iter().any(String::is_empty) {
            return Err(ApiError::invalid_param(
                "stop",
                "stop sequences must not be empty",
            ));
        }
        Ok(stops)
    }

    /// The engine's parameters for a prompt of `prompt_len` tokens, every setting checked.
    pub fn to_params(
        &self,
        defaults: &GenerateParams,
        config: &Llada2Config,
        limits: &Limits,
        prompt_len: usize,
    ) -> Result<GenerateParams, ApiError> {
        if let Some(n) = self.n {
            if n != 1 {
                return Err(ApiError::invalid_param("n", "only n = 1 is supported"));
            }
        }
        self.check_unsupported()?;
        if self.decode.gen_length.is_some() {
            return Err(ApiError::invalid_param(
                "gen_length",
                "the answer's length is `max_tokens` (or `max_completion_tokens`)",
            ));
        }
        let context = config.max_position_embeddings;
        if let Some(b) = self.decode.block_length {
            let most = limits.max_block_length.min(context);
            if b > most {
                return Err(ApiError::invalid_param(
                    "block_length",
                    format!("block_length must be in [1, {most}], got {b}"),
                ));
            }
        }
        let mut p = defaults.clone();
        // Without a seed, sampled answers differ from call to call, as with OpenAI.
        p.seed = rand::random();
        self.decode
            .apply(&mut p)
            .map_err(|e| ApiError::from_engine(e, "max_tokens"))?;

        let asked = self.max_completion_tokens.or(self.max_tokens);
        let field = match self.length_name {
            Some(name) => name,
            None if self.max_completion_tokens.is_some() => "max_completion_tokens",
            None => "max_tokens",
        };
        p.gen_length = match asked {
            Some(n) => n as usize,
            None => {
                // What fits in the context after the prompt, in whole blocks.
                let b = p.block_length.max(1);
                let room = (context / b * b).saturating_sub(prompt_len);
                limits.default_max_tokens.min(room).max(1)
            }
        };
        // The engine's own checks, shared with the CLI; errors name the request field.
        p.validate(config.vocab_size)
            .map_err(|e| ApiError::from_engine(e, field))?;
        let needed = p.positions_needed(prompt_len);
        if needed > context {
            return Err(ApiError::invalid_param(field, format!(
                "This model's maximum context length is {context} tokens. However, you requested {needed} tokens ({prompt_len} in the prompt, {} to generate, rounded up to whole blocks of {}). Please reduce the prompt or {field}.",
                p.gen_length, p.block_length
            ))
            .with_code("context_length_exceeded"));
        }
        Ok(p)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// A stop token or stop sequence ended the answer.
    Stop,
    /// `max_tokens` ran out first.
    Length,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    /// Forward passes this request took part in (diffusion: fewer than tokens).
    pub forwards: usize,
    /// Decoded tokens replaced by an editing decoder (`joint`, `joint-sglang`, `indel`;
    /// DELETE and SPLIT writes included).
    pub edits: usize,
    /// DELETE and SPLIT tokens written (`indel`).
    pub deletes: usize,
    pub splits: usize,
}

#[derive(Debug, Serialize)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<ModelCard>,
}

#[derive(Debug, Serialize)]
pub struct ModelCard {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
    pub context_length: usize,
}

/// Parses `T` out of the body, naming the offending field on error (`messages[0].role`).
pub fn field_errors<T: DeserializeOwned>(body: &serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(body).map_err(|e| {
        let path = e.path().to_string();
        let inner = plain_words(&e.into_inner().to_string());
        if path == "." {
            ApiError::invalid(format!("invalid request body: {inner}"))
        } else {
            ApiError::invalid_param(&path, format!("invalid `{path}`: {inner}"))
        }
    })
}

/// serde's messages with JSON words instead of Rust type names ("expected u32" →
/// "expected an integer >= 0").
fn plain_words(message: &str) -> String {
    let mut out = message.to_string();
    for (rust, json) in [
        ("expected u32", "expected an integer >= 0"),
        ("expected u64", "expected an integer >= 0"),
        ("expected usize", "expected an integer >= 0"),
        ("expected f32", "expected a number"),
        ("expected f64", "expected a number"),
        ("expected a sequence", "expected an array"),
        ("expected a map", "expected an object"),
        ("invalid type: map", "invalid type: object"),
        ("invalid type: sequence", "invalid type: array"),
    ] {
        out = out.replace(rust, json);
    }
    // "expected struct ChatMessage" and the like.
    while let Some(at) = out.find("expected struct ") {
        let end = out[at + 16..]
            .find(|c: char| !c.is_alphanumeric())
            .map_or(out.len(), |i| at + 16 + i);
        out.replace_range(at..end, "expected an object");
    }
    out
}
