//! `llada eval`: task accuracy and TPF, and held-out NELBO in bits per token.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use crate::args::{DecodeArgs, ModelArgs};

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A chat task set (JSONL; the last message of each line is the expected answer).
    #[arg(long)]
    pub tasks: Option<PathBuf>,
    /// Score at most this many task items.
    #[arg(long, default_value_t = usize::MAX)]
    pub limit: usize,
    #[command(flatten)]
    pub decode: DecodeArgs,
    /// Held-out text files or folders (NELBO in bits per token).
    #[arg(long, num_args = 1..)]
    pub text: Vec<PathBuf>,
    #[arg(long, default_value_t = 128)]
    pub seq_len: usize,
    /// Block size of the NELBO.
    #[arg(long, default_value_t = 32)]
    pub block: usize,
    /// Mask-rate samples per sequence.
    #[arg(long, default_value_t = 4)]
    pub samples: usize,
    #[arg(long, default_value_t = 64)]
    pub max_sequences: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: EvalArgs) -> Result<()> {
    if args.tasks.is_none() && args.text.is_empty() {
        bail!("give --tasks FILE and/or --text FILE...");
    }
    let loaded = args.model.load()?;
    let mut out = serde_json::Map::new();
    if let Some(path) = &args.tasks {
        let params = args.decode.params(&loaded)?;
        let r = llada_train::eval::tasks(&loaded, path, &params, args.limit)?;
        if !args.json {
            println!(
                "tasks: {}/{} correct ({:.1}%), {:.2} tokens/forward, {:.1} tokens/s, {:.2} edits per answer",
                r.correct,
                r.items,
                100.0 * r.accuracy,
                r.tokens_per_forward,
                r.tokens_per_second,
                r.edits as f64 / r.items as f64
            );
            for (kind, (ok, n)) in &r.by_kind {
                println!("  {kind:<8} {ok}/{n}");
            }
        }
        out.insert("tasks".into(), serde_json::to_value(&r)?);
    }
    if !args.text.is_empty() {
        let r = llada_train::eval::nelbo(
            &loaded,
            &args.text,
            args.seq_len,
            args.block,
            args.samples,
            args.max_sequences,
        )?;
        if !args.json {
            println!(
                "NELBO: {:.3} bits/token over {} tokens (block {}, {} samples each)",
                r.bits_per_token, r.tokens, args.block, args.samples
            );
        }
        out.insert("nelbo".into(), serde_json::to_value(&r)?);
    }
    if args.json {
        println!("{}", serde_json::Value::Object(out));
    }
    Ok(())
}
