//! `llada train ...`: the training pipeline's commands.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};
use llada_train::recipe::Recipe;
use llada_train::tokenizer::{train_tokenizer, TokenizerTraining};
use llada_train::trainer::{self, RunOptions, RunOutcome};

#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(subcommand)]
    pub command: TrainCommand,
}

#[derive(Subcommand, Debug)]
pub enum TrainCommand {
    /// Train a byte-level BPE tokenizer with LLaDA2's special tokens and chat template.
    Tokenizer(TokenizerArgs),
    /// Run (or resume) the stages of a recipe: ar, wsd (conversion), sft, sft_ar.
    Run(RunArgs),
    /// Copy a checkpoint's model files (no optimizer state) into a model folder,
    /// optionally storing the weights in bf16.
    Export(ExportArgs),
    /// Average the k checkpoints with the lowest validation NELBO into one model.
    Merge(MergeArgs),
    /// Generate the checkable task set as chat JSONL (five short kinds: add, copy,
    /// reverse, sort, compare; eight with 10-40-token answers: copy-long, reverse-long,
    /// sort-long, count, spell, add-long, sub-long, repeat).
    Tasks(TasksArgs),
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// A checkpoint folder written by `llada train run`.
    pub checkpoint: PathBuf,
    #[arg(long, short = 'o')]
    pub out: PathBuf,
    /// Store the weights as bf16 (half the size).
    #[arg(long)]
    pub bf16: bool,
}

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// Checkpoint folders to choose from.
    #[arg(long, num_args = 1.., required = true)]
    pub checkpoints: Vec<PathBuf>,
    /// How many of the best to average.
    #[arg(long, default_value_t = 3)]
    pub top_k: usize,
    /// Held-out text for the validation NELBO.
    #[arg(long, num_args = 1.., required = true)]
    pub validation: Vec<PathBuf>,
    #[arg(long, default_value_t = 128)]
    pub seq_len: usize,
    #[arg(long, default_value_t = 32)]
    pub block: usize,
    #[arg(long, short = 'o')]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct TasksArgs {
    /// Output folder: tasks-train.jsonl and tasks-eval.jsonl.
    #[arg(long, short = 'o')]
    pub out: PathBuf,
    #[arg(long, default_value_t = 20000)]
    pub train: usize,
    #[arg(long, default_value_t = 200)]
    pub eval: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Which kinds: `short` (the five short kinds only: the default model's first SFT
    /// phase) or `all`.
    #[arg(long, default_value = "all")]
    pub kinds: llada_train::tasks::Mix,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The recipe (TOML); running it again resumes from the latest checkpoints.
    pub recipe: PathBuf,
    /// Stop after this many optimizer steps (resume later by running again).
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct TokenizerArgs {
    /// Plain-text files to learn from.
    #[arg(long = "input", short = 'i', required = true, num_args = 1..)]
    pub inputs: Vec<PathBuf>,
    /// Vocabulary size, special tokens included.
    #[arg(long, default_value_t = 4096)]
    pub vocab_size: usize,
    /// Least count for a merge.
    #[arg(long, default_value_t = 2)]
    pub min_frequency: u64,
    /// Output folder (tokenizer.json, tokenizer_config.json).
    #[arg(long, short = 'o')]
    pub out: PathBuf,
    /// Keep numbers whole (GPT-2's pre-tokenizer, as the earlier default model's
    /// tokenizer) instead of one piece per digit.
    #[arg(long)]
    pub whole_numbers: bool,
}

pub fn run(args: TrainArgs) -> Result<()> {
    match args.command {
        TrainCommand::Tokenizer(a) => {
            let opts = TokenizerTraining {
                vocab_size: a.vocab_size,
                min_frequency: a.min_frequency,
                split_digits: !a.whole_numbers,
            };
            train_tokenizer(&a.inputs, &opts, &a.out)?;
            println!("wrote {}", a.out.join("tokenizer.json").display());
            Ok(())
        }
        TrainCommand::Export(a) => {
            let bytes = llada_train::params::export(&a.checkpoint, &a.out, a.bf16)?;
            println!(
                "wrote {} ({:.1} MiB of weights)",
                a.out.display(),
                bytes as f64 / (1u64 << 20) as f64
            );
            Ok(())
        }
        TrainCommand::Merge(a) => {
            let mut scored = Vec::new();
            for dir in &a.checkpoints {
                let m = llada::load_model(dir)?;
                let r = llada_train::eval::nelbo(&m, &a.validation, a.seq_len, a.block, 2, 32)?;
                println!("{}: {:.4} bits/token", dir.display(), r.bits_per_token);
                scored.push((dir.clone(), r.bits_per_token));
            }
            let best = llada_train::merge::top_k(&scored, a.top_k);
            llada_train::merge::average(&best, &a.out)?;
            println!(
                "averaged {} checkpoints into {}",
                best.len(),
                a.out.display()
            );
            Ok(())
        }
        TrainCommand::Tasks(a) => {
            std::fs::create_dir_all(&a.out)?;
            use llada_train::tasks::{generate, Split};
            // The two splits partition all questions, so no eval item is ever trained on.
            let train = generate(a.train, a.seed, Split::Train, a.kinds)?;
            let eval = generate(a.eval, a.seed ^ 0xE7A1, Split::HeldOut, a.kinds)?;
            llada_train::tasks::write_jsonl(&train, &a.out.join("tasks-train.jsonl"))?;
            llada_train::tasks::write_jsonl(&eval, &a.out.join("tasks-eval.jsonl"))?;
            println!(
                "wrote {} training and {} eval tasks to {}",
                a.train,
                a.eval,
                a.out.display()
            );
            Ok(())
        }
        TrainCommand::Run(a) => {
            let recipe = Recipe::load(&a.recipe)?;
            // Each thread trains a share of every step's examples on its own (see
            // RunOptions::threads).
            let threads = rayon::current_num_threads();
            let opts = RunOptions {
                quiet: a.quiet,
                max_steps: a.max_steps,
                threads,
            };
            match trainer::run(&recipe, &opts)? {
                RunOutcome::Finished(dir) => {
                    println!("finished: {}", dir.display());
                    eprintln!("chat with it: llada chat --model {}", dir.display());
                }
                RunOutcome::Stopped { stage, step } => {
                    println!("stopped in stage {stage}; last checkpoint at step {step}");
                    eprintln!("resume with: llada train run {}", a.recipe.display());
                }
            }
            Ok(())
        }
    }
}
