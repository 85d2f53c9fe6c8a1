//! Timing decoding: each row of a benchmark is one decoding setting on one prompt, timed
//! over several runs after a warm-up, with the work the model did ([`ForwardCost`]); the
//! machine's limits ([`measure_machine`]) say how far each forward is from its floor.

mod context;
mod limits;

pub use context::{context_growth, ContextRow};
pub use limits::{measure as measure_machine, Floor, Machine, Rates};

use serde::Serialize;

use crate::backend::ForwardCost;
use crate::error::{Error, Result};
use crate::generate::{generate, run_batch, GenerateStats, Generation};
use crate::model::Model;
use crate::params::{BlockCache, GenerateParams};

/// The label of the cached row (the reference decoding with llada's KV cache).
pub const CACHED: &str = "cached";
/// The label of the autoregressive row (block length 1).
pub const AR: &str = "AR: block 1, cached";

/// The rows a benchmark can run, by name.
pub const MODE_NAMES: &[&str] = &["cached", "dual", "no-cache", "ar"];

/// One row to measure: a decoding setting and how many copies of the prompt decode
/// together.
#[derive(Debug, Clone)]
pub struct Mode {
    pub label: &'static str,
    pub params: GenerateParams,
    /// Copies of the prompt decoded together, one batched forward pass per step.
    pub copies: usize,
}

/// The rows `names` name ([`MODE_NAMES`]), each `base` with what the mode changes (`dual`: the
/// approximate block cache refreshed every `refresh` steps), after a batched row of
/// `batch` copies when `batch` > 1.
pub fn modes(
    names: &[String],
    base: &GenerateParams,
    refresh: usize,
    batch: usize,
) -> Result<Vec<Mode>> {
    let mut modes = Vec::new();
    if batch > 1 {
        modes.push(Mode {
            label: "cached, batched (below)",
            params: base.clone(),
            copies: batch,
        });
    }
    for name in names {
        let (label, params) = match name.as_str() {
            "cached" => (CACHED, base.clone()),
            "dual" => (
                "cached, dual block cache",
                GenerateParams {
                    block_cache: BlockCache::Dual { refresh },
                    ..base.clone()
                },
            ),
            "no-cache" => (
                "no-cache (reference loop)",
                GenerateParams {
                    use_cache: false,
                    block_cache: BlockCache::Exact,
                    ..base.clone()
                },
            ),
            "ar" => (
                AR,
                GenerateParams {
                    block_length: 1,
                    steps: 1,
                    block_cache: BlockCache::Exact,
                    ..base.clone()
                },
            ),
            other => {
                return Err(Error::param(
                    "modes",
                    format!("unknown mode {other:?} (known: {})", MODE_NAMES.join(", ")),
                ))
            }
        };
        modes.push(Mode {
            label,
            params,
            copies: 1,
        });
    }
    if modes.is_empty() {
        return Err(Error::param("modes", "no row to run"));
    }
    Ok(modes)
}

/// One measured row.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub mode: &'static str,
    pub tokens: usize,
    /// Forward passes per run (batched passes for a batched row).
    pub forwards: usize,
    pub tokens_per_forward: f64,
    pub ms_per_forward: f64,
    pub tokens_per_second: f64,
    /// Bytes of routed experts' weights a forward read, on average (each expert any
    /// token of the pass chose, once per MoE layer).
    pub expert_bytes_per_forward: f64,
    /// The work of the timed runs, counted by the backend.
    #[serde(skip)]
    pub cost: ForwardCost,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits: Option<Floor>,
}

/// Runs `mode` once untimed, then `runs` timed times.
pub fn measure(model: &Model, prompt: &[u32], mode: &Mode, runs: usize) -> Result<Row> {
    if runs == 0 {
        return Err(Error::param("runs", "must be at least 1"));
    }
    let decode = || -> Result<(GenerateStats, usize)> {
        if mode.copies > 1 {
            return decode_together(model, prompt, &mode.params, mode.copies);
        }
        let s = generate(model, prompt, &mode.params, &mut |_| {})?.stats;
        Ok((s, s.forwards))
    };
    decode()?;
    let before = model.cost();
    let (mut total, mut passes) = (GenerateStats::default(), 0);
    for _ in 0..runs {
        let (s, p) = decode()?;
        total.tokens += s.tokens;
        total.forwards += s.forwards;
        total.seconds += s.seconds;
        passes += p;
    }
    let cost = model.cost() - before;
    Ok(Row {
        mode: mode.label,
        expert_bytes_per_forward: cost.expert_bytes as f64 / passes.max(1) as f64,
        tokens: total.tokens / runs,
        forwards: passes / runs,
        tokens_per_forward: total.tokens_per_forward(),
        ms_per_forward: 1e3 * total.seconds / passes.max(1) as f64,
        tokens_per_second: total.tokens_per_second(),
        cost,
        limits: None,
    })
}

/// Decodes `n` copies of `prompt` through shared forward passes. Returns the summed
/// per-sequence statistics (wall time once) and the number of batched passes.
fn decode_together(
    model: &Model,
    prompt: &[u32],
    params: &GenerateParams,
    n: usize,
) -> Result<(GenerateStats, usize)> {
    let started = std::time::Instant::now();
    let mut gens = (0..n)
        .map(|_| Generation::new(model, prompt, params.clone()))
        .collect::<Result<Vec<_>>>()?;
    let passes = run_batch(model, &mut gens, &mut |_, _| {})?;
    let mut total = GenerateStats::default();
    for g in gens {
        let s = g.finish().stats;
        total.tokens += s.tokens;
        total.forwards += s.forwards;
    }
    total.seconds = started.elapsed().as_secs_f64();
    Ok((total, passes))
}

/// The cost of a block forward against an AR step of the same model, in one run: the
/// tokens per forward at which diffusion decoding ties autoregressive decoding.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct BreakEven {
    /// ms per forward of the cached row (one block of `block_length` tokens).
    pub block_forward_ms: f64,
    /// ms per forward of the AR row (block length 1).
    pub ar_step_ms: f64,
    /// block_forward_ms / ar_step_ms.
    pub break_even_tpf: f64,
    /// Tokens per forward the cached row reached with these settings.
    pub measured_tpf: f64,
    /// measured_tpf / break_even_tpf: diffusion's speed relative to AR decoding.
    pub speed_vs_ar: f64,
    /// The break-even if both forwards ran at their floors (the larger of memory and
    /// compute floor each), when the limits were measured: how much of the break-even
    /// is physics.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at_floors: Option<f64>,
}

impl BreakEven {
    /// From the cached and AR rows, when both ran.
    pub fn of(rows: &[Row]) -> Option<Self> {
        let find = |mode: &str| rows.iter().find(|r| r.mode == mode);
        let (block, ar) = (find(CACHED)?, find(AR)?);
        let break_even_tpf = block.ms_per_forward / ar.ms_per_forward;
        Some(Self {
            block_forward_ms: block.ms_per_forward,
            ar_step_ms: ar.ms_per_forward,
            break_even_tpf,
            measured_tpf: block.tokens_per_forward,
            speed_vs_ar: block.tokens_per_forward / break_even_tpf,
            at_floors: block
                .limits
                .zip(ar.limits)
                .map(|(b, a)| b.floor_ms() / a.floor_ms()),
        })
    }
}

/// Adds to each row how far its forwards are from the floors of a device that reads
/// `read_gb_per_s` and multiplies at `gmacs` (the product rate of the model's weights).
pub fn add_limits(rows: &mut [Row], runs: usize, read_gb_per_s: f64, gmacs: f64) {
    for r in rows {
        let passes = r.forwards * runs;
        r.limits = Some(Floor::of(
            r.cost,
            passes,
            r.ms_per_forward,
            read_gb_per_s,
            gmacs,
        ));
    }
}

/// A fixed pseudo-random prompt of `len` ids below `vocab` that avoids the special ids.
pub fn synthetic_prompt(len: usize, vocab: usize, params: &GenerateParams) -> Vec<u32> {
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

/// Resident memory of this process now (Linux `VmRSS`).
pub fn rss() -> Option<u64> {
    status_bytes("VmRSS:")
}

/// Peak resident memory of this process (Linux `VmHWM`).
pub fn peak_rss() -> Option<u64> {
    status_bytes("VmHWM:")
}

/// A memory line of `/proc/self/status` (in kB there) in bytes.
fn status_bytes(key: &str) -> Option<u64> {
    crate::cache::proc_bytes("/proc/self/status", key)
}
