//! Flags shared by the commands that decode, and `llada generate`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use llada::{generate, DecoderConfig, GenerateParams, LoadedModel, SamplingParams};
use serde::Serialize;

#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model folder in Hugging Face layout (config.json + safetensors).
    #[arg(long, short = 'm')]
    pub model: PathBuf,
}

impl ModelArgs {
    pub fn load(&self) -> Result<LoadedModel> {
        llada::load_model(&self.model, &llada::Device::Cpu)
            .with_context(|| format!("loading the model from {}", self.model.display()))
    }
}

#[derive(Args, Debug, Clone)]
pub struct DecodeArgs {
    /// Most tokens to generate.
    #[arg(long, default_value_t = 128)]
    pub gen_length: usize,
    /// Tokens per diffusion block (1 = autoregressive decoding).
    #[arg(long, default_value_t = 32)]
    pub block_length: usize,
    /// Denoising steps per block (at most the block length fills one token per step).
    #[arg(long, default_value_t = 32)]
    pub steps: usize,
    /// Accept every masked position whose confidence exceeds this.
    #[arg(long, default_value_t = 0.95)]
    pub threshold: f32,
    /// 0 = greedy (argmax).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long)]
    pub top_k: Option<usize>,
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Seed for sampling; the same seed gives the same output.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Mask token id (default: generation_config.json, then 156895).
    #[arg(long)]
    pub mask_id: Option<u32>,
    /// EOS token id (default: generation_config.json, then 156892).
    #[arg(long)]
    pub eos_id: Option<u32>,
    /// Stop inside a block as soon as an EOS is placed with no mask before it.
    #[arg(long)]
    pub eos_early_stop: bool,
}

impl DecodeArgs {
    pub fn params(&self, loaded: &LoadedModel) -> GenerateParams {
        let mut p = loaded.default_params();
        p.gen_length = self.gen_length;
        p.block_length = self.block_length;
        p.steps = self.steps;
        p.decoder = DecoderConfig::Threshold {
            threshold: self.threshold,
        };
        p.sampling = SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
        };
        p.seed = self.seed;
        if let Some(m) = self.mask_id {
            p.mask_id = m;
        }
        if let Some(e) = self.eos_id {
            p.eos_id = e;
        }
        p.eos_early_stop = self.eos_early_stop;
        p
    }
}

#[derive(Args, Debug, Clone)]
pub struct PromptArgs {
    /// Prompt as comma-separated token ids, e.g. 1,2,3.
    #[arg(long, value_delimiter = ',', conflicts_with = "prompt")]
    pub prompt_ids: Option<Vec<u32>>,
    /// Prompt as text (needs the model's tokenizer).
    #[arg(long)]
    pub prompt: Option<String>,
}

impl PromptArgs {
    pub fn ids(&self) -> Result<Option<Vec<u32>>> {
        if self.prompt.is_some() {
            bail!(
                "--prompt TEXT needs a tokenizer, which this build of llada does not have yet; \
                 pass the prompt as token ids with --prompt-ids 1,2,3"
            );
        }
        Ok(self.prompt_ids.clone())
    }
}

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
    prompt_tokens: usize,
    tokens: usize,
    forwards: usize,
    denoising_steps: usize,
    seconds: f64,
    tokens_per_second: f64,
    tokens_per_forward: f64,
}

pub fn run_generate(args: GenerateArgs) -> Result<()> {
    let Some(prompt) = args.prompt.ids()? else {
        bail!("give a prompt with --prompt-ids 1,2,3");
    };
    let loaded = args.model.load()?;
    let mut params = args.decode.params(&loaded);
    params.use_cache = !args.no_cache;
    let json = args.json;
    let mut stdout = std::io::stdout().lock();
    let mut first = true;
    // Without --json the answer streams as its tokens become final.
    let out = generate(&loaded.model, &prompt, &params, &mut |ids| {
        if json {
            return;
        }
        for id in ids {
            let _ = write!(stdout, "{}{id}", if first { "" } else { "," });
            first = false;
        }
        let _ = stdout.flush();
    })?;
    let s = out.stats;
    if json {
        let report = GenerateJson {
            output_ids: &out.ids,
            prompt_tokens: s.prompt_tokens,
            tokens: s.tokens,
            forwards: s.forwards,
            denoising_steps: s.denoising_steps,
            seconds: s.seconds,
            tokens_per_second: s.tokens_per_second(),
            tokens_per_forward: s.tokens_per_forward(),
        };
        writeln!(stdout, "{}", serde_json::to_string(&report)?)?;
    } else {
        writeln!(stdout)?;
        eprintln!(
            "{} tokens, {} forwards ({} denoising steps), {:.2} s, {:.1} tokens/s, {:.2} tokens/forward",
            s.tokens,
            s.forwards,
            s.denoising_steps,
            s.seconds,
            s.tokens_per_second(),
            s.tokens_per_forward()
        );
    }
    Ok(())
}
