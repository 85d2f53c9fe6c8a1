//! `llada download`: fetch a model into the Hugging Face cache.

use anyhow::{Context, Result};
use clap::Args;

#[derive(Args, Debug)]
pub struct DownloadArgs {
    /// Repository id, e.g. inclusionAI/LLaDA2.0-mini (optionally @revision).
    pub repo: String,
}

pub fn run(args: DownloadArgs) -> Result<()> {
    let id = llada::hub::RepoId::parse(&args.repo)
        .with_context(|| format!("{:?} is not a repo id of the form org/name", args.repo))?;
    let dir = llada::hub::download(&id, true)?;
    println!("{}", dir.display());
    eprintln!("run it with: llada chat --model {}", id.repo);
    Ok(())
}
