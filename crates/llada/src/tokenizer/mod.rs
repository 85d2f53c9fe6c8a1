//! Text in and out: the model folder's `tokenizer.json` (pure-Rust `tokenizers`), its
//! special tokens, its chat template, and streaming detokenization.

mod chat;
pub mod gguf;
mod stream;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::Deserialize;

pub use chat::{ChatTemplate, Message, FALLBACK_TEMPLATE};
pub use stream::TextStream;

use crate::error::{Error, Result};

/// Names the special tokens are looked up by when no config gives their ids.
pub const MASK_TOKEN: &str = "<|mask|>";
pub const ROLE_END_TOKEN: &str = "<|role_end|>";
pub const DEFAULT_EOS_TOKEN: &str = "<|endoftext|>";

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// The same tokenizer with special-token text read as plain text (made on first
    /// use, for [`SpecialTokens::AsText`]).
    literal: OnceLock<tokenizers::Tokenizer>,
    template: ChatTemplate,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

/// How special-token text inside message contents is tokenized.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SpecialTokens {
    /// As transformers does: `<|role_end|>` typed by a user is the special token (so a
    /// user can write role markers of their own).
    #[default]
    Parse,
    /// As plain text: only the chat template itself produces special tokens.
    AsText,
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
        let read = |path: &Path| std::fs::read_to_string(path).map_err(|e| Error::io(path, e));
        let json = read(&path)?;
        let config_path = dir.join("tokenizer_config.json");
        let config = match config_path.is_file() {
            true => Some(read(&config_path)?),
            false => None,
        };
        let template_path = dir.join("chat_template.jinja");
        let template = match template_path.is_file() {
            true => Some(read(&template_path)?),
            false => None,
        };
        Self::from_parts(&json, config.as_deref(), template.as_deref(), dir)
    }

    /// Builds a tokenizer from the texts of `tokenizer.json`, `tokenizer_config.json`
    /// and `chat_template.jinja` (a template file wins over the config's template), as
    /// found in the model folder `dir` (which names them in errors).
    pub fn from_parts(
        tokenizer_json: &str,
        tokenizer_config: Option<&str>,
        chat_template: Option<&str>,
        dir: &Path,
    ) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let inner =
            tokenizers::Tokenizer::from_bytes(tokenizer_json).map_err(|e| Error::Tokenizer {
                path: path.clone(),
                message: e.to_string(),
            })?;
        let config_path = dir.join("tokenizer_config.json");
        let config: TokenizerConfig = match tokenizer_config {
            Some(text) => serde_json::from_str(text).map_err(|source| Error::Json {
                path: config_path.clone(),
                what: "a tokenizer config",
                source,
            })?,
            None => TokenizerConfig::default(),
        };
        let (source, origin): (String, PathBuf) = match chat_template {
            Some(text) => (text.to_string(), dir.join("chat_template.jinja")),
            None => match config.chat_template {
                Some(TemplateField::One(t)) => (t, config_path.clone()),
                Some(TemplateField::Named(list)) => {
                    let chosen = list.iter().find(|t| t.name == "default").or(list.first());
                    match chosen {
                        Some(t) => (t.template.clone(), config_path.clone()),
                        None => (FALLBACK_TEMPLATE.to_string(), PathBuf::new()),
                    }
                }
                None => (FALLBACK_TEMPLATE.to_string(), PathBuf::new()),
            },
        };
        let template = ChatTemplate::new(&source).map_err(|message| Error::ChatTemplate {
            path: origin,
            message,
        })?;
        Ok(Self {
            inner,
            literal: OnceLock::new(),
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

    /// Bytes of the vocabulary's longest token text (special tokens included): a bound
    /// on how much text one token can stand for, for cheap length checks.
    pub fn longest_token_bytes(&self) -> usize {
        self.inner
            .get_vocab(true)
            .keys()
            .map(String::len)
            .max()
            .unwrap_or(1)
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
            .map_err(|e| Error::param("prompt", format!("cannot tokenize: {e}")))?;
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

    /// [`Tokenizer::encode_chat`], with the special-token text inside message contents
    /// read as `specials` says. With [`SpecialTokens::AsText`] the template is rendered
    /// with a placeholder per message; the template's own text keeps its special tokens
    /// and each content is tokenized with special-token text as plain text.
    pub fn encode_chat_with(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        specials: SpecialTokens,
    ) -> Result<Vec<u32>> {
        if specials == SpecialTokens::Parse {
            return self.encode_chat(messages, add_generation_prompt);
        }
        let placeholder = |i: usize| format!("\u{E000}llada-content-{i}\u{E001}");
        let stand_ins: Vec<Message> = (0..messages.len())
            .map(|i| Message::new(messages[i].role.clone(), placeholder(i)))
            .collect();
        let mut rest = self.render_chat(&stand_ins, add_generation_prompt)?;
        let mut ids = Vec::new();
        for (i, message) in messages.iter().enumerate() {
            let mark = placeholder(i);
            let Some((before, after)) = rest.split_once(&mark) else {
                return Err(Error::ChatTemplate {
                    path: PathBuf::new(),
                    message: "the chat template changes message contents, so they cannot be tokenized apart from it (special tokens in content as text)".into(),
                });
            };
            ids.extend(self.encode(before)?);
            ids.extend(self.encode_literal(&message.content)?);
            rest = after.to_string();
        }
        ids.extend(self.encode(&rest)?);
        Ok(ids)
    }

    /// Token ids of `text` with special-token text tokenized as plain text.
    pub fn encode_literal(&self, text: &str) -> Result<Vec<u32>> {
        let literal = self.literal.get_or_init(|| {
            let mut t = self.inner.clone();
            t.set_encode_special_tokens(true);
            t
        });
        let enc = literal
            .encode(text, false)
            .map_err(|e| Error::param("prompt", format!("cannot tokenize: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// A detokenizer for one answer's token stream.
    pub fn stream_decoder(&self, skip_special_tokens: bool) -> TextStream<'_> {
        TextStream::new(&self.inner, skip_special_tokens)
    }
}
