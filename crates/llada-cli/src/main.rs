//! `llada`: run, benchmark (and later chat with, serve and train) LLaDA2 diffusion LMs.
//! A thin binary: flags are parsed here and handed to the library crates.

mod args;
mod bench;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "llada",
    version,
    about = "Block-diffusion language models (LLaDA2) on your machine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate an answer to one prompt.
    Generate(args::GenerateArgs),
    /// Time decoding: the cached engine, the no-cache reference loop and AR decoding
    /// (block length 1) side by side in one run.
    Bench(bench::BenchArgs),
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result: Result<()> = match cli.command {
        Command::Generate(a) => args::run_generate(a),
        Command::Bench(a) => bench::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
