//! `llada`: run, chat with, serve, benchmark and train LLaDA2 diffusion LMs.
//! A thin binary: flags are parsed here and handed to the library crates.

mod args;
mod bench;
mod chat;
mod default_model;
mod download;
mod eval;
mod generate_cmd;
mod quantize;
mod serve;
mod train;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "llada",
    version,
    about = "Block-diffusion language models (LLaDA2) on your machine"
)]
struct Cli {
    /// Threads for the model's matrix work; in `train run`, threads that each train a
    /// share of every step's examples (default: the physical cores, or
    /// RAYON_NUM_THREADS when set).
    #[arg(long, global = true, value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: Option<u16>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate an answer to one prompt.
    Generate(generate_cmd::GenerateArgs),
    /// Time decoding: the cached engine, the no-cache reference loop and AR decoding
    /// (block length 1) side by side in one run.
    Bench(bench::BenchArgs),
    /// Chat with a model: multi-turn, streaming, with tokens/s and TPF after each answer.
    Chat(chat::ChatArgs),
    /// Write a model as GGUF (llama.cpp's llada2 layout, q8_0 or q4k blocks): one file, or a folder.
    Quantize(quantize::QuantizeArgs),
    /// Evaluate: task accuracy and TPF, held-out NELBO.
    Eval(eval::EvalArgs),
    /// Training: tokenizer, task set, recipe stages (ar, wsd, sft), export.
    Train(train::TrainArgs),
    /// Serve a model over an OpenAI-compatible HTTP API with batched decoding.
    Serve(serve::ServeArgs),
    /// Download a model from the Hugging Face Hub into the local cache.
    Download(download::DownloadArgs),
}

fn main() {
    let cli = Cli::parse();
    llada::kernels::init_thread_pool(cli.threads.map(usize::from));
    tracing_subscriber::fmt()
        .with_env_filter(
            // Warnings, and `llada serve`'s access log. The GPU driver layers log every
            // adapter they fail to open; llada says what matters in its own error.
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                "warn,llada_server::access=info,wgpu_hal=off,wgpu_core=error,naga=error".into()
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    let result: Result<()> = match cli.command {
        Command::Generate(a) => generate_cmd::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Download(a) => download::run(a),
        Command::Chat(a) => chat::run(a),
        Command::Quantize(a) => quantize::run(a),
        Command::Train(a) => train::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Serve(a) => serve::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
