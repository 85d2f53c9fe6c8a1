//! Running a recipe: stages in order, each resumable from its latest checkpoint.
//!
//! Every step's randomness (batch order, mask rates, masks) is derived from the seed,
//! the stage and the step number, so a resumed run continues exactly as the
//! uninterrupted one would have: only the steps since the last checkpoint are lost.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use llada::synthetic::{Init, SyntheticSource};
use llada::{Llada2Config, Tokenizer, WeightSource, WeightStore};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::checkpoint::{self, CheckpointFiles, MetricsLog, StepMetrics, TrainerState};
use crate::data::{load_chat, pack_text, ChatExample, Packed};
use crate::loss::{losses, LossRow};
use crate::objective::{combine, draws_text_row, Objective};
use crate::optim::AdamW;
use crate::params::{SpecialIds, TrainableModel};
use crate::recipe::{Recipe, Stage, StageKind};
use crate::{Result, TrainError};

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Hide the progress bar.
    pub quiet: bool,
    /// Stop after this many optimizer steps in this invocation (a checkpoint is written
    /// where it stops; running the recipe again resumes there).
    pub max_steps: Option<usize>,
    /// Threads a step's examples are split over (0 or 1: one). Each thread runs forward
    /// and backward of its share in a thread pool of its own, so that its ops stay on
    /// it; the gradients are summed. A step is many small ops: splitting each of them over
    /// the cores gains little, splitting the examples nearly the thread count
    /// (docs/training-speed.md). The sums' order follows the thread count, so runs with
    /// different counts differ in the last bits.
    pub threads: usize,
}

/// Standard deviation of a new model's random weights.
const INIT_STD: f32 = 0.02;

/// Where a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum RunOutcome {
    /// Every stage finished; the last stage's final checkpoint.
    Finished(PathBuf),
    /// Stopped by `max_steps`; resume by running the recipe again.
    Stopped { stage: String, step: usize },
}

enum Examples {
    Text(Vec<Packed>),
    Chat(Vec<ChatExample>),
}

impl Examples {
    fn len(&self) -> usize {
        match self {
            Examples::Text(v) => v.len(),
            Examples::Chat(v) => v.len(),
        }
    }
}

pub fn run(recipe: &Recipe, opts: &RunOptions) -> Result<RunOutcome> {
    let tok = Tokenizer::from_dir(&recipe.tokenizer)?;
    let (Some(eos), Some(mask_id)) = (tok.eos_id(), tok.mask_id()) else {
        return Err(TrainError::Invalid(format!(
            "the tokenizer in {} needs EOS and <|mask|> tokens",
            recipe.tokenizer.display()
        )));
    };
    let origin = recipe.out.join("config.json");
    let cfg = Llada2Config::from_json(recipe.config_json(), &origin)?;
    if cfg.vocab_size < tok.vocab_size() {
        return Err(TrainError::Invalid(format!(
            "model vocab_size {} is smaller than the tokenizer's {}",
            cfg.vocab_size,
            tok.vocab_size()
        )));
    }
    let mut budget = opts.max_steps;
    let threads = opts.threads.max(1);
    let mut previous: Option<PathBuf> = recipe.init_from.clone();
    for stage in &recipe.stages {
        let dir = recipe.out.join(&stage.name);
        let final_dir = dir.join("final");
        if let Some(from) = &stage.from {
            // Checked at load: an earlier stage, so its final checkpoint exists by now.
            previous = Some(recipe.out.join(from).join("final"));
        }
        if final_dir.join("model.safetensors").is_file() {
            previous = Some(final_dir);
            continue;
        }
        let ctx = StageRun {
            recipe,
            stage,
            stream: stage_stream(&stage.name),
            dir: &dir,
            cfg: &cfg,
            tok: &tok,
            eos,
            mask_id,
            threads,
        };
        match ctx.run(previous.as_deref(), &mut budget, opts.quiet)? {
            Some(done) => previous = Some(done),
            None => {
                let step = checkpoint::latest(&dir)?.map_or(0, |(_, s)| s.step);
                return Ok(RunOutcome::Stopped {
                    stage: stage.name.clone(),
                    step,
                });
            }
        }
    }
    Ok(RunOutcome::Finished(previous.expect("at least one stage")))
}

struct StageRun<'a> {
    recipe: &'a Recipe,
    stage: &'a Stage,
    /// The stage's random stream (from its name, so adding, removing or reordering other
    /// stages, or running a branch in a recipe of its own, leaves its randomness as is).
    stream: u64,
    dir: &'a Path,
    cfg: &'a Llada2Config,
    tok: &'a Tokenizer,
    eos: u32,
    mask_id: u32,
    threads: usize,
}

impl StageRun<'_> {
    /// Runs the stage; `Some(final checkpoint)` when finished, `None` when the step
    /// budget ran out first (after checkpointing where it stopped).
    fn run(
        &self,
        init: Option<&Path>,
        budget: &mut Option<usize>,
        quiet: bool,
    ) -> Result<Option<PathBuf>> {
        let stage = self.stage;
        let resume = checkpoint::latest(self.dir)?;
        let store;
        let random;
        let source: &dyn WeightSource = match resume.as_ref().map(|(dir, _)| dir.as_path()).or(init)
        {
            Some(dir) => {
                store = WeightStore::open(dir, &Device::Cpu, candle_core::DType::F32)?;
                &store
            }
            None => {
                random =
                    SyntheticSource::with_init(self.recipe.seed, Init::Normal { std: INIT_STD });
                &random
            }
        };
        let model = TrainableModel::new(self.cfg, source)?;
        let buffers = expert_biases(self.cfg, source)?;
        let mut opt = AdamW::new(model.params.clone(), stage.optimizer)?;
        let mut start = 0;
        if let Some((dir, state)) = &resume {
            checkpoint::restore_optimizer(dir, &mut opt, state)?;
            start = state.step;
        }
        let data = self.load_data()?;
        std::fs::create_dir_all(self.dir).map_err(|source| TrainError::Write {
            path: self.dir.to_path_buf(),
            source,
        })?;
        let mut metrics = MetricsLog::open(self.dir, start)?;
        let bar = progress(stage, start, quiet);
        let mut last_loss = resume.as_ref().map_or(f32::NAN, |(_, s)| s.loss);
        let mut saved = start;
        for step in start..stage.steps {
            if let Some(left) = budget {
                if *left == 0 {
                    if saved < step {
                        let name = format!("checkpoint-{step}");
                        self.checkpoint(&name, &model, &buffers, &opt, step, last_loss)?;
                    }
                    bar.abandon();
                    return Ok(None);
                }
                *left -= 1;
            }
            let started = Instant::now();
            let m = self.step(&model, &mut opt, &data, step)?;
            let tokens = stage.batch_size * stage.seq_len;
            let m = StepMetrics {
                tokens_per_second: tokens as f64 / started.elapsed().as_secs_f64(),
                ..m
            };
            last_loss = m.loss;
            metrics.append(&m)?;
            bar.set_message(format!(
                "loss {:.4} | {:.0} tok/s",
                m.loss, m.tokens_per_second
            ));
            bar.inc(1);
            let done = step + 1;
            if done % stage.checkpoint_every == 0 || done == stage.steps {
                let name = format!("checkpoint-{done}");
                self.checkpoint(&name, &model, &buffers, &opt, done, last_loss)?;
                saved = done;
            }
        }
        bar.finish();
        let final_dir = self.checkpoint("final", &model, &buffers, &opt, stage.steps, last_loss)?;
        Ok(Some(final_dir))
    }

    /// The stage's examples, and the text mixed into an SFT stage.
    fn load_data(&self) -> Result<StageData> {
        let stage = self.stage;
        let examples = match stage.kind {
            StageKind::Ar | StageKind::Wsd => {
                Examples::Text(pack_text(&stage.data, self.tok, self.eos, stage.seq_len)?)
            }
            StageKind::Sft | StageKind::SftAr => Examples::Chat(load_chat(
                &stage.data[0],
                self.tok,
                self.eos,
                stage.seq_len,
            )?),
        };
        let text_mix = if stage.text_data.is_empty() {
            None
        } else {
            Some(pack_text(
                &stage.text_data,
                self.tok,
                self.eos,
                stage.seq_len,
            )?)
        };
        Ok(StageData { examples, text_mix })
    }

    /// One optimizer step: the batch's rows, their mean loss, backward, update.
    fn step(
        &self,
        model: &TrainableModel,
        opt: &mut AdamW,
        data: &StageData,
        step: usize,
    ) -> Result<StepMetrics> {
        let stage = self.stage;
        let mut rng = ChaCha8Rng::seed_from_u64(
            self.recipe.seed ^ (self.stream << 40) ^ (step as u64).wrapping_mul(0x9E37_79B9),
        );
        let block = block_of(stage, step);
        let objective = Objective {
            stage,
            mask_id: self.mask_id,
            eos: self.eos,
        };
        // Every example's rows (two views for an SFT example) go through one forward
        // pass together; each example's loss is then folded back from its rows.
        let mut rows = Vec::new();
        let mut per_example = Vec::new();
        for example in batch_indices(
            data.examples.len(),
            stage.batch_size,
            step,
            self.recipe.seed ^ self.stream,
        ) {
            let made = match (&data.text_mix, &data.examples) {
                (Some(texts), _) if draws_text_row(&mut rng, stage.text_fraction) => {
                    let seq = &texts[rng.random_range(0..texts.len())];
                    objective.text(model, seq, block, step, &mut rng)?
                }
                (_, Examples::Text(seqs)) if stage.kind == StageKind::Ar => {
                    objective.causal(&seqs[example])?
                }
                (_, Examples::Text(seqs)) => {
                    objective.text(model, &seqs[example], block, step, &mut rng)?
                }
                (_, Examples::Chat(chats)) => {
                    objective.chat(model, &chats[example], block, &mut rng)?
                }
            };
            per_example.push(made.len());
            rows.extend(made);
        }
        let shards = shard_examples(&per_example, self.threads);
        let total = per_example.len();
        let run_shard = |shard: &Shard| {
            shard_backward(
                model,
                &rows[shard.rows.clone()],
                &per_example[shard.examples.clone()],
                total,
            )
        };
        let mut done: Vec<ShardOutput> = if shards.len() == 1 {
            vec![run_shard(&shards[0])?]
        } else {
            std::thread::scope(|scope| {
                let handles: Vec<_> = shards
                    .iter()
                    .map(|shard| scope.spawn(move || on_own_thread(|| run_shard(shard))))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join()
                            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                    })
                    .collect::<Result<Vec<_>>>()
            })?
        };
        let mut first = done.remove(0);
        for other in done {
            first.loss += other.loss;
            first.ce += other.ce;
            add_grads(&mut first.grads, &other.grads, &model.params)?;
        }
        let lr = stage.lr.at(step);
        let grad_norm = opt.step(&first.grads, lr)?;
        Ok(StepMetrics {
            stage: stage.name.clone(),
            step: step + 1,
            loss: first.loss,
            ce: first.ce / total as f32,
            lr,
            grad_norm,
            block,
            tokens_per_second: 0.0,
        })
    }

    fn checkpoint(
        &self,
        name: &str,
        model: &TrainableModel,
        buffers: &HashMap<String, Tensor>,
        opt: &AdamW,
        step: usize,
        loss: f32,
    ) -> Result<PathBuf> {
        // The block length of the last step taken: how this checkpoint decodes by default
        // (1 for an autoregressive stage).
        let generation = serde_json::json!({
            "eos_token_id": self.eos, "pad_token_id": self.eos, "mask_token_id": self.mask_id,
            "block_length": block_of(self.stage, step.saturating_sub(1)),
        });
        let files = CheckpointFiles {
            config: &self.recipe.checkpoint_config_json(SpecialIds {
                eos: self.eos,
                mask: self.mask_id,
            })?,
            generation_config: &generation,
            tokenizer: &self.recipe.tokenizer,
        };
        let state = TrainerState {
            stage: self.stage.name.clone(),
            step,
            optimizer_t: opt.t,
            loss,
        };
        checkpoint::write(self.dir, name, &files, &model.tensors(buffers), opt, &state)
    }
}

/// The block length a stage trains with at `step` (0-based).
fn block_of(stage: &Stage, step: usize) -> usize {
    match (&stage.kind, &stage.block_schedule) {
        (StageKind::Wsd, Some(s)) => s.block_at(step),
        (StageKind::Ar | StageKind::SftAr, _) => 1,
        _ => stage.block,
    }
}

struct StageData {
    examples: Examples,
    /// sft: packed text mixed into the batches.
    text_mix: Option<Vec<Packed>>,
}

/// `expert_bias` buffers of the MoE layers (kept from the source, else zero).
fn expert_biases(cfg: &Llada2Config, source: &dyn WeightSource) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    if let Some(shape) = cfg.moe_shape() {
        for layer in (0..cfg.num_hidden_layers).filter(|&l| cfg.is_moe_layer(l)) {
            let name = format!("model.layers.{layer}.mlp.gate.expert_bias");
            let t = match source.get_optional(&name, &[shape.num_experts])? {
                Some(t) => t,
                None => Tensor::zeros(shape.num_experts, candle_core::DType::F32, &Device::Cpu)?,
            };
            out.insert(name, t);
        }
    }
    Ok(out)
}

/// A share of a step's examples and the rows they made.
struct Shard {
    examples: std::ops::Range<usize>,
    rows: std::ops::Range<usize>,
}

/// Splits the examples (each made `rows_per_example[i]` rows, stored one example after
/// another) into up to `threads` contiguous shards of near-equal example counts.
fn shard_examples(rows_per_example: &[usize], threads: usize) -> Vec<Shard> {
    let n = rows_per_example.len();
    let count = threads.clamp(1, n.max(1));
    let mut shards = Vec::with_capacity(count);
    let mut row = 0;
    for i in 0..count {
        let examples = i * n / count..(i + 1) * n / count;
        let len: usize = rows_per_example[examples.clone()].iter().sum();
        shards.push(Shard {
            examples,
            rows: row..row + len,
        });
        row += len;
    }
    shards
}

/// Runs `work` with this thread as its only pool thread: the parallel loops inside a
/// shard's ops stay on its thread instead of competing for the others'.
fn on_own_thread<R: Send>(work: impl FnOnce() -> Result<R> + Send) -> Result<R> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .use_current_thread()
        .build()
        .map_err(|e| TrainError::Invalid(format!("cannot set up a training thread: {e}")))?;
    pool.install(work)
}

/// What one shard's backward pass gives.
struct ShardOutput {
    grads: candle_core::backprop::GradStore,
    /// The shard's part of the step's mean loss.
    loss: f32,
    /// Sum of its examples' masked cross-entropies.
    ce: f32,
}

/// Forward and backward of one shard: its examples' losses summed and divided by the
/// step's example count `total`, so the shards' gradients add up to the mean loss's.
fn shard_backward(
    model: &TrainableModel,
    rows: &[LossRow],
    rows_per_example: &[usize],
    total: usize,
) -> Result<ShardOutput> {
    let mut outputs = losses(&model.model, rows)?.into_iter();
    let mut example_losses = Vec::with_capacity(rows_per_example.len());
    let mut ce = 0f32;
    for &n in rows_per_example {
        let out = combine(outputs.by_ref().take(n).collect())?;
        ce += out.masked_ce;
        example_losses.push(out.loss);
    }
    let loss = (Tensor::stack(&example_losses, 0)?.sum_all()? / total as f64)?;
    Ok(ShardOutput {
        grads: loss.backward()?,
        loss: loss.to_scalar::<f32>()?,
        ce,
    })
}

/// Adds `other`'s gradients of the parameters into `into`.
fn add_grads(
    into: &mut candle_core::backprop::GradStore,
    other: &candle_core::backprop::GradStore,
    params: &[(String, candle_core::Var)],
) -> Result<()> {
    for (_, p) in params {
        let Some(g) = other.get(p) else { continue };
        let sum = match into.get(p) {
            Some(mine) => (mine + g)?,
            None => g.clone(),
        };
        into.insert(p, sum);
    }
    Ok(())
}

/// A stage's random stream number: FNV-1a of its name (24 bits, shifted above the step).
fn stage_stream(name: &str) -> u64 {
    llada::synthetic::stable_hash(name) & 0xff_ffff
}

/// Example indices of `step`: epochs walk a seeded permutation of the data.
fn batch_indices(n: usize, batch: usize, step: usize, seed: u64) -> Vec<usize> {
    (step * batch..(step + 1) * batch)
        .map(|i| {
            let epoch = i / n;
            let mut order: Vec<usize> = (0..n).collect();
            order.shuffle(&mut ChaCha8Rng::seed_from_u64(
                seed ^ (epoch as u64).wrapping_mul(0x2545_F491),
            ));
            order[i % n]
        })
        .collect()
}

fn progress(stage: &Stage, start: usize, quiet: bool) -> ProgressBar {
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(stage.steps as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_prefix(stage.name.clone());
    bar.set_position(start as u64);
    bar
}
