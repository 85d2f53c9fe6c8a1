//! Text in and out: the model folder's `tokenizer.json` (pure-Rust `tokenizers`), its
//! special tokens, its chat template, and streaming detokenization.

mod chat;
mod stream;

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use chat::{ChatTemplate, Message, FALLBACK_TEMPLATE};
pub use stream::StreamDecoder;

use crate::error::{Error, Result};

/// Names the special tokens are looked up by when no config gives their ids.
pub const MASK_TOKEN: &str = "<|mask|>";
pub const ROLE_END_TOKEN: &str = "<|role_end|>";
pub const DEFAULT_EOS_TOKEN: &str = "<|endoftext|>";

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    template: ChatTemplate,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

/// `tokenizer_config.json`, the fields llada reads.
#[derive(Debug, Default, Deserialize)]
struct TokenizerConfig {
    #[serde(default)]
    chat_template: Option<TemplateField>,
    #[serde(default)]
    bos_token: Option<TokenField>,
    #[serde(default)]
    eos_token: Option<TokenField>,
}

/// A chat template is a string or a list of named templates.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum TemplateField {
    One(String),
    Named(Vec<NamedTemplate>),
}

#[derive(Debug, Deserialize)]
struct NamedTemplate {
    name: String,
    template: String,
}

/// A special token is a string or an AddedToken object with `content`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum TokenField {
    Text(String),
    Added { content: String },
}

impl TokenField {
    fn text(self) -> String {
        match self {
            TokenField::Text(s) | TokenField::Added { content: s } => s,
        }
    }
}

impl Tokenizer {
    /// Loads `tokenizer.json`, plus `tokenizer_config.json` and `chat_template.jinja`
    /// when present, from a model folder.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(Error::MissingTokenizer { path });
        }
        let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| Error::Tokenizer {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let config_path = dir.join("tokenizer_config.json");
        let config: TokenizerConfig = if config_path.is_file() {
            let text =
                std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
            serde_json::from_str(&text).map_err(|source| Error::Json {
                path: config_path.clone(),
                what: "a tokenizer config",
                source,
            })?
        } else {
            TokenizerConfig::default()
        };
        let template_file = dir.join("chat_template.jinja");
        let (source, origin): (String, PathBuf) = if template_file.is_file() {
            let text = std::fs::read_to_string(&template_file)
                .map_err(|e| Error::io(&template_file, e))?;
            (text, template_file)
        } else {
            match config.chat_template {
                Some(TemplateField::One(t)) => (t, config_path.clone()),
                Some(TemplateField::Named(list)) => {
                    let chosen = list.iter().find(|t| t.name == "default").or(list.first());
                    match chosen {
                        Some(t) => (t.template.clone(), config_path.clone()),
                        None => (FALLBACK_TEMPLATE.to_string(), PathBuf::new()),
                    }
                }
                None => (FALLBACK_TEMPLATE.to_string(), PathBuf::new()),
            }
        };
        let template = ChatTemplate::new(&source).map_err(|message| Error::ChatTemplate {
            path: origin,
            message,
        })?;
        Ok(Self {
            inner,
            template,
            bos_token: config.bos_token.map(TokenField::text),
            eos_token: config.eos_token.map(TokenField::text),
        })
    }

    /// Id of a token by its text (special tokens included).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The EOS token's id: `tokenizer_config.json`'s `eos_token`, else `<|endoftext|>`.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos_token
            .as_deref()
            .and_then(|t| self.token_id(t))
            .or_else(|| self.token_id(DEFAULT_EOS_TOKEN))
    }

    pub fn mask_id(&self) -> Option<u32> {
        self.token_id(MASK_TOKEN)
    }

    /// `<|role_end|>`, which ends a chat turn as EOS does.
    pub fn role_end_id(&self) -> Option<u32> {
        self.token_id(ROLE_END_TOKEN)
    }

    /// Token ids of `text`, special-token text included, no BOS/EOS added (as
    /// transformers tokenizes a rendered chat template).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::InvalidRequest(format!("cannot tokenize the prompt: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| Error::InvalidRequest(format!("cannot detokenize: {e}")))
    }

    pub fn chat_template(&self) -> &ChatTemplate {
        &self.template
    }

    /// The prompt text for `messages` in the model's chat format.
    pub fn render_chat(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        self.template
            .render(
                messages,
                add_generation_prompt,
                self.bos_token.as_deref(),
                self.eos_token.as_deref(),
            )
            .map_err(|message| Error::ChatTemplate {
                path: PathBuf::new(),
                message,
            })
    }

    /// Token ids of the chat prompt, as `apply_chat_template(..., tokenize=True)` gives.
    pub fn encode_chat(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>> {
        self.encode(&self.render_chat(messages, add_generation_prompt)?)
    }

    /// A detokenizer for one answer's token stream.
    pub fn stream_decoder(&self, skip_special_tokens: bool) -> StreamDecoder<'_> {
        StreamDecoder::new(self, skip_special_tokens)
    }
}
