//! `llada quantize`: write a quantized copy of a model folder (GGUF weights).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use llada::Quant;

#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// Source model folder or repo id in the HF cache.
    #[arg(long, short = 'm')]
    pub model: String,
    /// q8_0 or q4k.
    #[arg(long)]
    pub quant: Quant,
    /// Output folder (gets model.gguf and copies of the config and tokenizer files).
    #[arg(long, short = 'o')]
    pub out: PathBuf,
}

pub fn run(args: QuantizeArgs) -> Result<()> {
    let src = llada::hub::resolve_model(&args.model)?;
    let report = llada::quantize_checkpoint(&src, &args.out, args.quant)?;
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
