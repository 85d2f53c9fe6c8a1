//! Running a recipe: stages in order, each resumable from its latest checkpoint.
//!
//! Every step's randomness (batch order, mask rates, masks) is derived from the seed,
//! the stage and the step number, so a resumed run continues exactly as the
//! uninterrupted one would have: only the steps since the last checkpoint are lost.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use llada::{Llada2Config, Tokenizer, WeightSource, WeightStore};
use rand::seq::SliceRandom;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::data::{load_chat, pack_text, ChatExample, Packed};
use crate::init::InitSource;
use crate::loss::{autoregressive_loss, block_diffusion_loss, Weighting};
use crate::noise::{complement, mask_tokens, sample_t, sample_t_between};
use crate::optim::AdamW;
use crate::params::{save_safetensors, TrainableModel};
use crate::recipe::{Recipe, Stage, StageKind};
use crate::{write_atomic, Result, TrainError};

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Hide the progress bar.
    pub quiet: bool,
    /// Stop after this many optimizer steps in this invocation (tests use it to
    /// simulate a kill).
    pub max_steps: Option<usize>,
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepMetrics {
    pub stage: String,
    pub step: usize,
    pub loss: f32,
    /// Mean cross-entropy over supervised tokens (nats).
    pub ce: f32,
    pub lr: f64,
    pub grad_norm: f64,
    pub block: usize,
    pub tokens_per_second: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TrainerState {
    stage: String,
    step: usize,
    optimizer_t: u64,
    loss: f32,
}

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
    let mut previous: Option<PathBuf> = recipe.init_from.clone();
    for (index, stage) in recipe.stages.iter().enumerate() {
        let dir = recipe.out.join(&stage.name);
        let final_dir = dir.join("final");
        if final_dir.join("model.safetensors").is_file() {
            previous = Some(final_dir);
            continue;
        }
        let ctx = StageRun {
            recipe,
            stage,
            index,
            dir: &dir,
            cfg: &cfg,
            tok: &tok,
            eos,
            mask_id,
        };
        match ctx.run(previous.as_deref(), &mut budget, opts.quiet)? {
            Some(done) => previous = Some(done),
            None => {
                let step = read_state(&dir)?.map_or(0, |s| s.step);
                return Ok(RunOutcome::Stopped {
                    stage: stage.name.clone(),
                    step,
                });
            }
        }
    }
    Ok(RunOutcome::Finished(previous.expect("at least one stage")))
}

fn read_state(dir: &Path) -> Result<Option<TrainerState>> {
    let latest = dir.join("latest");
    let Ok(name) = std::fs::read_to_string(&latest) else {
        return Ok(None);
    };
    let path = dir.join(name.trim()).join("trainer_state.json");
    let text = std::fs::read_to_string(&path).map_err(|source| TrainError::Read {
        path: path.clone(),
        source,
    })?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| TrainError::Invalid(format!("{}: {e}", path.display())))
}

struct StageRun<'a> {
    recipe: &'a Recipe,
    stage: &'a Stage,
    index: usize,
    dir: &'a Path,
    cfg: &'a Llada2Config,
    tok: &'a Tokenizer,
    eos: u32,
    mask_id: u32,
}

impl StageRun<'_> {
    /// Runs the stage; `Some(final checkpoint)` when finished, `None` when the step
    /// budget ran out first.
    fn run(
        &self,
        init: Option<&Path>,
        budget: &mut Option<usize>,
        quiet: bool,
    ) -> Result<Option<PathBuf>> {
        let stage = self.stage;
        let resume = read_state(self.dir)?;
        let resume_dir = match &resume {
            Some(_) => {
                let name = std::fs::read_to_string(self.dir.join("latest")).unwrap_or_default();
                Some(self.dir.join(name.trim()))
            }
            None => None,
        };
        let store;
        let init_source;
        let source: &dyn WeightSource = match resume_dir.as_deref().or(init) {
            Some(dir) => {
                store = WeightStore::open(dir, &Device::Cpu, candle_core::DType::F32)?;
                &store
            }
            None => {
                init_source = InitSource::new(self.recipe.seed, 0.02);
                &init_source
            }
        };
        let model = TrainableModel::new(self.cfg, source)?;
        let buffers = expert_biases(self.cfg, source)?;
        let mut opt = AdamW::new(model.params.clone(), stage.optimizer)?;
        let mut start = 0;
        if let (Some(state), Some(dir)) = (&resume, &resume_dir) {
            let moments =
                candle_core::safetensors::load(dir.join("optimizer.safetensors"), &Device::Cpu)?;
            opt.load_state(&moments, state.optimizer_t)?;
            start = state.step;
        }
        let data = match stage.kind {
            StageKind::Ar | StageKind::Wsd => {
                Examples::Text(pack_text(&stage.data, self.tok, self.eos, stage.seq_len)?)
            }
            StageKind::Sft => Examples::Chat(load_chat(
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
        std::fs::create_dir_all(self.dir).map_err(|source| TrainError::Write {
            path: self.dir.to_path_buf(),
            source,
        })?;
        let bar = progress(stage, start, quiet);
        let mut metrics = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("metrics.jsonl"))
            .map_err(|source| TrainError::Write {
                path: self.dir.join("metrics.jsonl"),
                source,
            })?;
        let mut last_loss = f32::NAN;
        for step in start..stage.steps {
            if let Some(left) = budget {
                if *left == 0 {
                    bar.abandon();
                    return Ok(None);
                }
                *left -= 1;
            }
            let started = Instant::now();
            let m = self.step(&model, &mut opt, &data, text_mix.as_deref(), step)?;
            let tokens = stage.batch_size * stage.seq_len;
            let m = StepMetrics {
                tokens_per_second: tokens as f64 / started.elapsed().as_secs_f64(),
                ..m
            };
            last_loss = m.loss;
            writeln!(
                metrics,
                "{}",
                serde_json::to_string(&m).expect("metrics JSON")
            )
            .map_err(|source| TrainError::Write {
                path: self.dir.join("metrics.jsonl"),
                source,
            })?;
            bar.set_message(format!(
                "loss {:.4} | {:.0} tok/s",
                m.loss, m.tokens_per_second
            ));
            bar.inc(1);
            let done = step + 1;
            if done % stage.checkpoint_every.max(1) == 0 || done == stage.steps {
                self.checkpoint(
                    &format!("checkpoint-{done}"),
                    &model,
                    &buffers,
                    &opt,
                    done,
                    last_loss,
                )?;
            }
        }
        bar.finish();
        let final_dir = self.checkpoint("final", &model, &buffers, &opt, stage.steps, last_loss)?;
        Ok(Some(final_dir))
    }

    fn step(
        &self,
        model: &TrainableModel,
        opt: &mut AdamW,
        data: &Examples,
        text_mix: Option<&[Packed]>,
        step: usize,
    ) -> Result<StepMetrics> {
        let stage = self.stage;
        let mut rng = ChaCha8Rng::seed_from_u64(
            self.recipe.seed
                ^ ((self.index as u64 + 1) << 40)
                ^ (step as u64).wrapping_mul(0x9E37_79B9),
        );
        let block = match (&stage.kind, &stage.block_schedule) {
            (StageKind::Wsd, Some(s)) => s.block_at(step),
            (StageKind::Ar, _) => 1,
            _ => stage.block,
        };
        let mut losses = Vec::new();
        let mut ce = 0f32;
        for example in batch_indices(
            data.len(),
            stage.batch_size,
            step,
            self.recipe.seed ^ self.index as u64,
        ) {
            // SFT with text mixing: this row is a packed text sequence instead (the
            // draws happen only when mixing is on, so other recipes keep their streams).
            if let Some(texts) = text_mix {
                if rng.random::<f64>() < stage.text_fraction {
                    let seq = &texts[rng.random_range(0..texts.len())];
                    let out = self.text_loss(model, seq, block, step, &mut rng)?;
                    ce += out.masked_ce;
                    losses.push(out.loss);
                    continue;
                }
            }
            let out = match data {
                Examples::Text(seqs) => {
                    let seq = &seqs[example];
                    match stage.kind {
                        StageKind::Ar => {
                            autoregressive_loss(&model.model, &seq.tokens, Some(&seq.doc_ids))?
                        }
                        _ => self.text_loss(model, seq, block, step, &mut rng)?,
                    }
                }
                Examples::Chat(chats) => {
                    let ex = &chats[example];
                    let (lo, hi) = stage.t_range;
                    let t = sample_t_between(&mut rng, lo, hi);
                    let noised =
                        mask_tokens(&ex.tokens, t, self.mask_id, Some(&ex.prompt), &mut rng);
                    let mut views = vec![noised.clone()];
                    if stage.complementary {
                        views.push(complement(
                            &ex.tokens,
                            &noised,
                            self.mask_id,
                            Some(&ex.prompt),
                        ));
                    }
                    let mut total: Option<crate::loss::LossOutput> = None;
                    for v in views.iter().filter(|v| v.masked.contains(&true)) {
                        let o = block_diffusion_loss(
                            &model.model,
                            &ex.tokens,
                            v,
                            block,
                            None,
                            Weighting::MaskedMean,
                            stage.cap_weight,
                            None,
                        )?;
                        total = Some(match total {
                            None => o,
                            Some(prev) => crate::loss::LossOutput {
                                loss: (prev.loss + o.loss)?,
                                masked_ce: (prev.masked_ce + o.masked_ce) / 2.0,
                                masked_tokens: prev.masked_tokens + o.masked_tokens,
                            },
                        });
                    }
                    total.ok_or_else(|| {
                        TrainError::Invalid("an SFT example has no answer tokens".into())
                    })?
                }
            };
            ce += out.masked_ce;
            losses.push(out.loss);
        }
        let n = losses.len() as f64;
        let loss = (Tensor::stack(&losses, 0)?.sum_all()? / n)?;
        let lr = stage.lr.at(step);
        let grads = loss.backward()?;
        let grad_norm = opt.step(&grads, lr)?;
        Ok(StepMetrics {
            stage: stage.name.clone(),
            step: step + 1,
            loss: loss.to_scalar::<f32>()?,
            ce: ce / n as f32,
            lr,
            grad_norm,
            block,
            tokens_per_second: 0.0,
        })
    }

    /// Block-diffusion loss of a packed text sequence at a random mask rate, 1/t
    /// weighted, with embedding noise in the stage's first steps (wsd, and the text rows
    /// mixed into sft).
    fn text_loss(
        &self,
        model: &TrainableModel,
        seq: &Packed,
        block: usize,
        step: usize,
        rng: &mut ChaCha8Rng,
    ) -> Result<crate::loss::LossOutput> {
        let stage = self.stage;
        let t = sample_t(rng, stage.eps);
        let noised = mask_tokens(&seq.tokens, t, self.mask_id, None, rng);
        let noise = (step < stage.embed_noise_steps)
            .then(|| (stage.embed_noise_std as f32, rng.next_u64()));
        block_diffusion_loss(
            &model.model,
            &seq.tokens,
            &noised,
            block,
            Some(&seq.doc_ids),
            Weighting::InverseT,
            0.0,
            noise,
        )
    }

    /// Writes an HF-layout folder (loadable by `llada generate/chat`) plus optimizer and
    /// trainer state, under a temporary name renamed into place.
    fn checkpoint(
        &self,
        name: &str,
        model: &TrainableModel,
        buffers: &HashMap<String, Tensor>,
        opt: &AdamW,
        step: usize,
        loss: f32,
    ) -> Result<PathBuf> {
        let target = self.dir.join(name);
        let tmp = self.dir.join(format!(".tmp-{name}"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|source| TrainError::Write {
                path: tmp.clone(),
                source,
            })?;
        }
        save_safetensors(&tmp, &model.tensors(buffers))?;
        candle_core::safetensors::save(&opt.state(), tmp.join("optimizer.safetensors"))?;
        let json = |v: &serde_json::Value| serde_json::to_string_pretty(v).expect("JSON");
        write_atomic(
            &tmp.join("config.json"),
            json(&self.recipe.config_json()).as_bytes(),
        )?;
        let gen = serde_json::json!({"eos_token_id": self.eos, "pad_token_id": self.eos, "mask_token_id": self.mask_id});
        write_atomic(&tmp.join("generation_config.json"), json(&gen).as_bytes())?;
        for file in ["tokenizer.json", "tokenizer_config.json"] {
            let from = self.recipe.tokenizer.join(file);
            if from.is_file() {
                std::fs::copy(&from, tmp.join(file))
                    .map_err(|source| TrainError::Read { path: from, source })?;
            }
        }
        let state = TrainerState {
            stage: self.stage.name.clone(),
            step,
            optimizer_t: opt.t,
            loss,
        };
        let state = serde_json::to_string_pretty(&state).expect("state JSON");
        write_atomic(&tmp.join("trainer_state.json"), state.as_bytes())?;
        if target.exists() {
            std::fs::remove_dir_all(&target).map_err(|source| TrainError::Write {
                path: target.clone(),
                source,
            })?;
        }
        std::fs::rename(&tmp, &target).map_err(|source| TrainError::Write {
            path: target.clone(),
            source,
        })?;
        if name != "final" {
            write_atomic(&self.dir.join("latest"), name.as_bytes())?;
        }
        Ok(target)
    }
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
