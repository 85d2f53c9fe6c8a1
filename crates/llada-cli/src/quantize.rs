//! `llada quantize`: write a model as GGUF in the llama.cpp `llada2` layout: one file
//! (`--out FILE.gguf`, with the tokenizer and chat template) or a folder (`model.gguf`
//! beside copies of the config and tokenizer files).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use llada::{ModelSource, Quant};

use crate::default_model::DEFAULT_MODEL;

#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// Source model folder or repo id in the HF cache. Default: the built-in model.
    #[arg(long, short = 'm', conflicts_with = "synthetic")]
    pub model: Option<String>,
    /// Write random weights of a known architecture's shapes instead (e.g. llada2-mini):
    /// a file of the real size, to measure loading.
    #[arg(long)]
    pub synthetic: Option<String>,
    /// With --synthetic: keep only the first N layers.
    #[arg(long, requires = "synthetic")]
    pub layers: Option<usize>,
    /// Block type of the linear layers: q8_0 or q4k (as `--quant` at load makes them).
    #[arg(long)]
    pub quant: Quant,
    /// Output: a `.gguf` file (the whole model in one file), or a folder.
    #[arg(long, short = 'o')]
    pub out: PathBuf,
}

pub fn run(args: QuantizeArgs) -> Result<()> {
    let is_file = args.out.extension().is_some_and(|e| e == "gguf");
    let dir = args
        .model
        .as_deref()
        .map(llada::hub::resolve_model)
        .transpose()?;
    let report = if is_file {
        let source = match (&dir, &args.synthetic) {
            (Some(dir), _) => ModelSource::Dir(dir),
            (None, Some(name)) => ModelSource::Synthetic {
                name,
                layers: args.layers,
                seed: 0,
            },
            (None, None) => ModelSource::Embedded(&DEFAULT_MODEL),
        };
        llada::write_gguf(source, Some(args.quant), &args.out)
    } else {
        let Some(dir) = dir else {
            anyhow::bail!("a folder output needs --model (a model folder); use --out FILE.gguf for the built-in or a synthetic model");
        };
        llada::quantize_checkpoint(&dir, &args.out, args.quant)
    }
    .with_context(|| format!("writing {}", args.out.display()))?;
    println!(
        "wrote {} ({} tensors, {} quantized to {}, {:.1} MiB)",
        report.path.display(),
        report.tensors,
        report.quantized,
        args.quant.name(),
        report.bytes as f64 / (1u64 << 20) as f64
    );
    Ok(())
}
