//! `llada chat`: an interactive multi-turn REPL. Answers stream as their tokens become
//! final; `/help` lists the commands that reset the conversation or change decoding.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{bail, Result};
use clap::Args;
use llada::{
    generate_observed, BlockView, DecodeSettings, GenerateParams, Message, Observer, Tokenizer,
};

use crate::args::{DecodeArgs, ModelArgs};

#[derive(Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub decode: DecodeArgs,
    /// System prompt for every conversation.
    #[arg(long)]
    pub system: Option<String>,
    /// Draw each block's unmasking, step by step, on stderr.
    #[arg(long)]
    pub show_unmasking: bool,
}

const HELP: &str = "commands:
  /reset                 forget the conversation
  /system TEXT           set the system prompt (and reset)
  /set KEY VALUE         change a decoding setting: KEY is a decoding flag of
                         llada chat --help without its leading dashes (not mask-id,
                         eos-id), e.g. /set decoder joint, /set threshold 0.8,
                         /set block-cache dual (top-k/top-p: 'off' clears)
  /show                  show the decoding settings
  /unmask on|off         draw the unmasking of each block
  /help                  this text
  /quit                  leave (Ctrl-D too)";

/// Streams committed text to stdout and, if asked, draws each step on stderr.
struct Printer<'a> {
    tokenizer: &'a Tokenizer,
    stream: llada::TextStream<'a>,
    show_unmasking: bool,
    error: Option<llada::Error>,
}

impl Observer for Printer<'_> {
    fn on_commit(&mut self, ids: &[u32]) {
        match self.stream.push(ids) {
            Ok(text) => {
                let mut out = std::io::stdout().lock();
                let _ = write!(out, "{text}");
                let _ = out.flush();
            }
            Err(e) => self.error = Some(e),
        }
    }

    fn on_step(&mut self, block: &BlockView<'_>) {
        if !self.show_unmasking {
            return;
        }
        let mut line = format!("\n[block {} step {:>2}] ", block.index, block.step);
        for (i, &t) in block.tokens.iter().enumerate() {
            if t == block.mask_id {
                line.push('\u{2591}');
                continue;
            }
            let piece = self.tokenizer.decode(&[t], false).unwrap_or_default();
            let piece = piece.replace('\n', "\u{21b5}");
            if block.filled.contains(&i) {
                line.push_str(&format!("\x1b[1;32m{piece}\x1b[0m"));
            } else if block.edited.contains(&i) {
                // A replaced token: yellow on a dark background.
                line.push_str(&format!("\x1b[1;33;40m{piece}\x1b[0m"));
            } else {
                line.push_str(&piece);
            }
        }
        eprint!("{line}");
    }
}

pub fn run(args: ChatArgs) -> Result<()> {
    let loaded = args.model.load()?;
    let Some(tokenizer) = loaded.tokenizer.as_ref() else {
        bail!(
            "chat needs the model's tokenizer, but {} has no tokenizer.json",
            loaded.files.dir.display()
        );
    };
    let mut params = args.decode.params(&loaded)?;
    let vocab = loaded.model.config().vocab_size;
    let mut system = args.system.clone();
    let mut show_unmasking = args.show_unmasking;
    let mut history: Vec<Message> = Vec::new();
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!(
            "llada chat: {} (type /help for commands)",
            loaded.files.dir.display()
        );
    }
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        if interactive {
            eprint!("> ");
            std::io::stderr().flush()?;
        }
        let Some(line) = lines.next() else { break };
        let line = line?;
        let input = line.trim();
        if input.is_empty() {
            continue;
        }
        if let Some(command) = input.strip_prefix('/') {
            let (name, rest) = command.split_once(' ').unwrap_or((command, ""));
            match name {
                "quit" | "exit" => break,
                "help" => eprintln!("{HELP}"),
                "reset" => {
                    history.clear();
                    eprintln!("(conversation reset)");
                }
                "system" => {
                    system = (!rest.trim().is_empty()).then(|| rest.trim().to_string());
                    history.clear();
                    eprintln!("(system prompt set; conversation reset)");
                }
                "show" => eprintln!("{}", params.describe()),
                "unmask" => {
                    show_unmasking = rest.trim() != "off";
                    eprintln!(
                        "(unmasking display {})",
                        if show_unmasking { "on" } else { "off" }
                    );
                }
                "set" => match set(&mut params, rest, vocab) {
                    Ok(()) => eprintln!("{}", params.describe()),
                    Err(e) => eprintln!("error: {e}"),
                },
                other => eprintln!("unknown command /{other} (try /help)"),
            }
            continue;
        }
        let mut messages = Vec::new();
        if let Some(s) = &system {
            messages.push(Message::new("system", s));
        }
        messages.extend(history.iter().cloned());
        messages.push(Message::new("user", input));
        let prompt = match tokenizer.encode_chat(&messages, true) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("error: {e}");
                continue;
            }
        };
        let mut printer = Printer {
            tokenizer,
            stream: tokenizer.stream_decoder(true),
            show_unmasking,
            error: None,
        };
        match generate_observed(&loaded.model, &prompt, &params, &mut printer) {
            Ok(out) => {
                if let Some(e) = printer.error {
                    eprintln!("error: {e}");
                }
                let answer = tokenizer.decode(&out.ids, true)?;
                println!();
                let s = out.stats;
                let edits = s.edit_summary();
                eprintln!(
                    "[{} tokens, {} forwards, {:.1} tokens/s, {:.2} tokens/forward{edits}]",
                    s.tokens,
                    s.forwards,
                    s.tokens_per_second(),
                    s.tokens_per_forward()
                );
                history.push(Message::new("user", input));
                history.push(Message::new("assistant", answer.trim()));
            }
            Err(e) => {
                println!();
                eprintln!("error: {e}");
                if matches!(e, llada::Error::ContextOverflow { .. }) {
                    eprintln!("(the conversation no longer fits: /reset starts a new one)");
                }
            }
        }
    }
    Ok(())
}

/// Applies `/set KEY VALUE` if the engine's validation accepts the result.
fn set(p: &mut GenerateParams, rest: &str, vocab: usize) -> Result<()> {
    let mut parts = rest.split_whitespace();
    let (Some(key), Some(value), None) = (parts.next(), parts.next(), parts.next()) else {
        bail!("usage: /set KEY VALUE");
    };
    let mut candidate = p.clone();
    DecodeSettings::parse(key, value)
        .and_then(|change| change.apply(&mut candidate))
        .and_then(|()| candidate.validate(vocab))
        .map_err(|e| match e {
            llada::Error::InvalidParam { param, message } => {
                anyhow::anyhow!("invalid {}: {message}", param.replace('_', "-"))
            }
            other => other.into(),
        })?;
    *p = candidate;
    Ok(())
}
