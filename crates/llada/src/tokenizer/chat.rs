//! Chat templates rendered with minijinja the way transformers renders them with jinja2:
//! `trim_blocks` and `lstrip_blocks` on, Python string methods available,
//! `raise_exception` and `tojson` defined.

use minijinja::{context, Environment, ErrorKind};
use serde::{Deserialize, Serialize};

/// The documented LLaDA2 / Ling 2.0 chat format, used when a model ships no template.
/// Without a system message the model's default system turn ("detailed thinking off")
/// is added.
pub const FALLBACK_TEMPLATE: &str = r#"{%- set ns = namespace(has_system=false) -%}
{%- for message in messages -%}
{%- if message['role'] == 'system' -%}{%- set ns.has_system = true -%}{%- endif -%}
{%- endfor -%}
{%- if not ns.has_system -%}<role>SYSTEM</role>detailed thinking off<|role_end|>{%- endif -%}
{%- for message in messages -%}
{%- if message['role'] == 'system' -%}<role>SYSTEM</role>{{ message['content'] }}<|role_end|>
{%- elif message['role'] == 'user' -%}<role>HUMAN</role>{{ message['content'] }}<|role_end|>
{%- elif message['role'] == 'assistant' -%}<role>ASSISTANT</role>{{ message['content'] }}<|role_end|>
{%- else -%}{{ raise_exception('unknown chat role: ' ~ message['role']) }}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}<role>ASSISTANT</role>{%- endif -%}"#;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// Instructions a template may execute per rendering: a conversation of thousands of
/// messages takes well under a million; a template that loops without end is stopped
/// with an error instead of holding a thread (a model folder's template is code from
/// whoever published the model).
const TEMPLATE_FUEL: u64 = 5_000_000;

pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    is_fallback: bool,
}

impl ChatTemplate {
    /// Compiles `source`; the error message says what is wrong with it.
    pub fn new(source: &str) -> Result<Self, String> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| format!("chat template does not compile: {e:#}"))?;
        Ok(Self {
            env,
            source: source.to_string(),
            is_fallback: source == FALLBACK_TEMPLATE,
        })
    }

    /// The template's Jinja text (what a GGUF file carries as `tokenizer.chat_template`).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// True when the model shipped no template and the LLaDA2 format is used.
    pub fn is_fallback(&self) -> bool {
        self.is_fallback
    }

    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        bos_token: Option<&str>,
        eos_token: Option<&str>,
    ) -> Result<String, String> {
        let tmpl = self.env.get_template("chat").map_err(|e| e.to_string())?;
        tmpl.render(context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => bos_token.unwrap_or(""),
            eos_token => eos_token.unwrap_or(""),
        })
        .map_err(|e| format!("chat template failed: {e:#}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(messages: &[Message], gen: bool) -> String {
        ChatTemplate::new(FALLBACK_TEMPLATE)
            .unwrap()
            .render(messages, gen, None, None)
            .unwrap()
    }

    #[test]
    fn fallback_adds_the_default_system_turn_and_generation_prompt() {
        let got = render(&[Message::new("user", "Hi")], true);
        assert_eq!(
            got,
            "<role>SYSTEM</role>detailed thinking off<|role_end|><role>HUMAN</role>Hi<|role_end|><role>ASSISTANT</role>"
        );
    }

    #[test]
    fn fallback_multi_turn_with_system_prompt() {
        let msgs = [
            Message::new("system", "Be brief."),
            Message::new("user", "1+1?"),
            Message::new("assistant", "2"),
            Message::new("user", "2+2?"),
        ];
        assert_eq!(
            render(&msgs, false),
            "<role>SYSTEM</role>Be brief.<|role_end|><role>HUMAN</role>1+1?<|role_end|><role>ASSISTANT</role>2<|role_end|><role>HUMAN</role>2+2?<|role_end|>"
        );
    }

    #[test]
    fn unknown_roles_and_broken_templates_are_errors() {
        let t = ChatTemplate::new(FALLBACK_TEMPLATE).unwrap();
        let err = t
            .render(&[Message::new("robot", "x")], true, None, None)
            .unwrap_err();
        assert!(err.contains("unknown chat role: robot"), "{err}");
        let err = ChatTemplate::new("{% for %}")
            .err()
            .expect("must not compile");
        assert!(err.contains("does not compile"), "{err}");
    }

    #[test]
    fn a_template_that_runs_away_is_stopped() {
        let source =
            "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}";
        let t = ChatTemplate::new(source).unwrap();
        let started = std::time::Instant::now();
        let err = t.render(&[], true, None, None).unwrap_err();
        assert!(err.contains("fuel"), "{err}");
        assert!(started.elapsed().as_secs() < 10);
    }

    #[test]
    fn python_string_methods_work() {
        let t = ChatTemplate::new("{{ messages[0]['content'].strip().upper() }}").unwrap();
        assert_eq!(
            t.render(&[Message::new("user", "  hi ")], false, None, None)
                .unwrap(),
            "HI"
        );
    }
}
