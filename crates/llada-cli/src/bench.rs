//! `llada bench`: the cached engine next to its baselines, measured in the same run.

use anyhow::{bail, Result};
use clap::Args;
use llada::{generate, GenerateParams, GenerateStats};
use serde::Serialize;

use crate::args::{DecodeArgs, ModelArgs, PromptArgs};

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub prompt: PromptArgs,
    /// Length of the synthetic prompt used when no --prompt-ids are given.
    #[arg(long, default_value_t = 32)]
    pub prompt_length: usize,
    #[command(flatten)]
    pub decode: DecodeArgs,
    /// Timed runs per mode (after one untimed warm-up run).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Print the rows as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Row {
    mode: &'static str,
    tokens: usize,
    forwards: usize,
    tokens_per_forward: f64,
    ms_per_forward: f64,
    tokens_per_second: f64,
}

pub fn run(args: BenchArgs) -> Result<()> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let loaded = args.model.load()?;
    let base = args.decode.params(&loaded);
    let prompt = match args.prompt.ids(&loaded)? {
        Some(ids) => ids,
        None => synthetic_prompt(args.prompt_length, loaded.model.config().vocab_size, &base),
    };
    let modes = [
        ("cached", base.clone()),
        (
            "no-cache (reference loop)",
            GenerateParams {
                use_cache: false,
                ..base.clone()
            },
        ),
        (
            "AR: block 1, cached",
            GenerateParams {
                block_length: 1,
                steps: 1,
                ..base.clone()
            },
        ),
    ];
    let mut rows = Vec::new();
    for (mode, params) in modes {
        generate(&loaded.model, &prompt, &params, &mut |_| {})?;
        let mut total = GenerateStats::default();
        for _ in 0..args.runs {
            let s = generate(&loaded.model, &prompt, &params, &mut |_| {})?.stats;
            total.tokens += s.tokens;
            total.forwards += s.forwards;
            total.seconds += s.seconds;
        }
        rows.push(Row {
            mode,
            tokens: total.tokens / args.runs,
            forwards: total.forwards / args.runs,
            tokens_per_forward: total.tokens_per_forward(),
            ms_per_forward: 1e3 * total.seconds / total.forwards.max(1) as f64,
            tokens_per_second: total.tokens_per_second(),
        });
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "prompt {} tokens, gen_length {}, block {}, steps {}, threshold {}, {} runs per mode",
        prompt.len(),
        base.gen_length,
        base.block_length,
        base.steps,
        args.decode.threshold,
        args.runs
    );
    println!(
        "| {:<26} | {:>6} | {:>8} | {:>6} | {:>10} | {:>9} | {:>8} |",
        "mode", "tokens", "forwards", "TPF", "ms/forward", "tokens/s", "vs cache"
    );
    println!(
        "|{:-<28}|{:->8}|{:->10}|{:->8}|{:->12}|{:->11}|{:->10}|",
        "", "", "", "", "", "", ""
    );
    let reference = rows[0].tokens_per_second;
    for r in &rows {
        println!(
            "| {:<26} | {:>6} | {:>8} | {:>6.2} | {:>10.2} | {:>9.1} | {:>7.2}x |",
            r.mode,
            r.tokens,
            r.forwards,
            r.tokens_per_forward,
            r.ms_per_forward,
            r.tokens_per_second,
            r.tokens_per_second / reference
        );
    }
    Ok(())
}

/// A fixed pseudo-random prompt that avoids the special ids.
fn synthetic_prompt(len: usize, vocab: usize, params: &GenerateParams) -> Vec<u32> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut ids = Vec::with_capacity(len);
    while ids.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let id = (state % vocab as u64) as u32;
        if id != params.mask_id && id != params.eos_id {
            ids.push(id);
        }
    }
    ids
}
