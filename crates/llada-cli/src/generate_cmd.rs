//! `llada generate`: one prompt, one answer, streamed as it becomes final.

use std::io::Write;

use anyhow::{bail, Result};
use clap::Args;
use llada::generate;
use serde::Serialize;

use crate::args::{DecodeArgs, ModelArgs, PromptArgs};

#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub prompt: PromptArgs,
    #[command(flatten)]
    pub decode: DecodeArgs,
    /// Recompute the whole prefix every step, as the reference does (no KV cache).
    #[arg(long)]
    pub no_cache: bool,
    /// Print one JSON object with the answer and statistics.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct GenerateJson<'a> {
    output_ids: &'a [u32],
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    #[serde(flatten)]
    stats: llada::GenerateStats,
    tokens_per_second: f64,
    tokens_per_forward: f64,
}

pub fn run(args: GenerateArgs) -> Result<()> {
    if args.prompt.prompt.is_none() && args.prompt.prompt_ids.is_none() {
        bail!("give a prompt with --prompt TEXT or --prompt-ids 1,2,3");
    }
    let loaded = args.model.load()?;
    let Some(prompt) = args.prompt.ids(&loaded)? else {
        bail!("give a prompt with --prompt TEXT or --prompt-ids 1,2,3");
    };
    let mut params = args.decode.params(&loaded)?;
    params.use_cache = !args.no_cache;
    let positions = params.positions_needed(prompt.len());
    let bytes = loaded
        .model
        .config()
        .kv_cache_bytes(positions, params.kv_cache);
    eprintln!(
        "llada: KV cache of {positions} positions: {:.1} MiB ({})",
        bytes as f64 / (1u64 << 20) as f64,
        params.kv_cache.name()
    );
    // Text in, text out; ids in, ids out.
    let tokenizer = loaded
        .tokenizer
        .as_ref()
        .filter(|_| args.prompt.prompt.is_some());
    let mut text_stream = tokenizer.map(|t| t.stream_decoder(true));
    let json = args.json;
    let mut stdout = std::io::stdout().lock();
    let mut first = true;
    let mut stream_error = None;
    let out = generate(&loaded.model, &prompt, &params, &mut |ids| {
        if json {
            return;
        }
        match text_stream.as_mut() {
            Some(stream) => match stream.push(ids) {
                Ok(text) => {
                    let _ = write!(stdout, "{text}");
                }
                Err(e) => stream_error = Some(e),
            },
            None => {
                for id in ids {
                    let _ = write!(stdout, "{}{id}", if first { "" } else { "," });
                    first = false;
                }
            }
        }
        let _ = stdout.flush();
    })?;
    if let Some(e) = stream_error {
        return Err(e.into());
    }
    let s = out.stats;
    if json {
        let text = match tokenizer {
            Some(t) => Some(t.decode(&out.ids, true)?),
            None => None,
        };
        let report = GenerateJson {
            output_ids: &out.ids,
            text,
            stats: s,
            tokens_per_second: s.tokens_per_second(),
            tokens_per_forward: s.tokens_per_forward(),
        };
        writeln!(stdout, "{}", serde_json::to_string(&report)?)?;
    } else {
        writeln!(stdout)?;
        eprintln!(
            "{} tokens, {} forwards ({} denoising steps), {:.2} s, {:.1} tokens/s, {:.2} tokens/forward{}",
            s.tokens,
            s.forwards,
            s.denoising_steps,
            s.seconds,
            s.tokens_per_second(),
            s.tokens_per_forward(),
            s.edit_summary()
        );
    }
    Ok(())
}
