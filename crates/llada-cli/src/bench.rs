//! `llada bench`: the cached engine next to its baselines, measured in the same run.

use anyhow::{bail, Result};
use clap::Args;
use llada::{
    generate, run_batch, BlockCache, GenerateParams, GenerateStats, Generation, Llada2Model,
};
use serde::Serialize;

use crate::args::{DecodeArgs, ModelArgs, PromptArgs};
use crate::limits::{self, Floor};

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub prompt: PromptArgs,
    /// Length of the synthetic prompt used when no --prompt-ids are given.
    #[arg(long, default_value_t = 32)]
    pub prompt_length: usize,
    #[command(flatten)]
    pub decode: DecodeArgs,
    /// Timed runs per mode (after one untimed warm-up run).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Print the rows as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Benchmark a known architecture with random weights instead of --model:
    /// llada2-mini, llada2-flash or llada2-63m (built in memory at the chosen --quant).
    #[arg(long, conflicts_with = "model")]
    pub synthetic: Option<String>,
    /// With --synthetic: keep only the first N layers (e.g. to fit flash in memory).
    #[arg(long, requires = "synthetic")]
    pub layers: Option<usize>,
    /// Which rows to run: cached, dual (approximate block caching, see --block-cache),
    /// no-cache, ar (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "cached,no-cache,ar")]
    pub modes: Vec<String>,
    /// Also decode N copies of the prompt together, one batched forward pass per step
    /// (as `llada serve` does): a row with the aggregate tokens/s.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub batch: u32,
    /// Stop each row where the model ends its answer (EOS), as a user would see it.
    /// By default every row decodes exactly --gen-length tokens, so that the rows
    /// compare the same amount of work.
    #[arg(long, conflicts_with = "ignore_eos")]
    pub stop_at_eos: bool,
    /// Also measure the machine (memory bandwidth, matrix multiply rates; a few seconds)
    /// and show how far each row's forward is from the floor its weight bytes and
    /// multiply-accumulates impose.
    #[arg(long)]
    pub limits: bool,
}

/// The cost of a block forward against an AR step of the same model, in one run: the
/// tokens per forward at which diffusion decoding ties autoregressive decoding.
#[derive(Serialize)]
struct BreakEven {
    /// ms per forward of the cached row (one block of `block_length` tokens).
    block_forward_ms: f64,
    /// ms per forward of the AR row (block length 1).
    ar_step_ms: f64,
    /// block_forward_ms / ar_step_ms.
    break_even_tpf: f64,
    /// Tokens per forward the cached row reached with these settings.
    measured_tpf: f64,
    /// measured_tpf / break_even_tpf: diffusion's speed relative to AR decoding.
    speed_vs_ar: f64,
}

impl BreakEven {
    fn of(rows: &[Row]) -> Option<Self> {
        let find = |mode: &str| rows.iter().find(|r| r.mode == mode);
        let (block, ar) = (find(CACHED)?, find(AR)?);
        let break_even_tpf = block.ms_per_forward / ar.ms_per_forward;
        Some(Self {
            block_forward_ms: block.ms_per_forward,
            ar_step_ms: ar.ms_per_forward,
            break_even_tpf,
            measured_tpf: block.tokens_per_forward,
            speed_vs_ar: block.tokens_per_forward / break_even_tpf,
        })
    }
}

const CACHED: &str = "cached";
const AR: &str = "AR: block 1, cached";

#[derive(Serialize)]
struct Row {
    mode: &'static str,
    tokens: usize,
    forwards: usize,
    tokens_per_forward: f64,
    ms_per_forward: f64,
    tokens_per_second: f64,
    /// The work of the timed runs (counted by the model).
    #[serde(skip)]
    cost: llada::ForwardCost,
    #[serde(skip_serializing_if = "Option::is_none")]
    limits: Option<Floor>,
}

pub fn run(args: BenchArgs) -> Result<()> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let started = std::time::Instant::now();
    let loaded = match &args.synthetic {
        Some(name) => llada::load_synthetic(name, args.layers, args.model.quant, 0)?,
        None => args.model.load()?,
    };
    let load_seconds = started.elapsed().as_secs_f64();
    let weight_gib = loaded.model.weight_bytes() as f64 / (1u64 << 30) as f64;
    // --block-cache-refresh alone configures the dual row; the other rows stay exact.
    let refresh = args.decode.settings.block_cache_refresh.unwrap_or(0);
    let mut decode = args.decode.clone();
    if decode.settings.block_cache.is_none() {
        decode.settings.block_cache_refresh = None;
    }
    let mut base = decode.params(&loaded)?;
    base.ignore_eos = !args.stop_at_eos;
    let prompt = match args.prompt.ids(&loaded)? {
        Some(ids) => ids,
        None => synthetic_prompt(args.prompt_length, loaded.model.config().vocab_size, &base),
    };
    let mut modes = Vec::new();
    for mode in &args.modes {
        modes.push(match mode.as_str() {
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
            other => bail!("unknown mode {other:?} (cached, dual, no-cache, ar)"),
        });
    }
    if modes.is_empty() {
        bail!("--modes is empty");
    }
    let mut rows = Vec::new();
    let model = &loaded.model;
    if args.batch > 1 {
        let n = args.batch as usize;
        rows.push(timed_row(
            "cached, batched (below)",
            args.runs,
            model,
            || run_batched(model, &prompt, &base, n),
        )?);
    }
    for (mode, params) in modes {
        rows.push(timed_row(mode, args.runs, model, || {
            let s = generate(model, &prompt, &params, &mut |_| {})?.stats;
            Ok((s, s.forwards))
        })?);
    }
    let machine = if args.limits {
        let m = limits::measure()?;
        let gmacs = m.peak.for_weights(loaded.weights.compute());
        for r in &mut rows {
            let passes = r.forwards * args.runs;
            r.limits = Some(Floor::of(r.cost, passes, r.ms_per_forward, &m, gmacs));
        }
        Some(m)
    } else {
        None
    };
    let break_even = BreakEven::of(&rows);
    if args.json {
        let report =
            serde_json::json!({ "rows": rows, "break_even": break_even, "machine": machine });
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let source = args.synthetic.as_deref().map_or_else(
        || loaded.files.dir.display().to_string(),
        |s| format!("synthetic {s} (random weights)"),
    );
    println!(
        "model {source}, {} layers, weights {}: {weight_gib:.2} GiB in memory, loaded in {load_seconds:.1} s, peak RSS {}",
        loaded.model.config().num_hidden_layers,
        loaded.weights,
        peak_rss().map_or("unknown".into(), |b| format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)),
    );
    println!(
        "prompt {} tokens, gen_length {}, block {}, steps {}, decoder {}, {} runs per mode",
        prompt.len(),
        base.gen_length,
        base.block_length,
        base.steps,
        base.decoder.describe(),
        args.runs
    );
    if args.stop_at_eos {
        if rows.iter().any(|r| r.tokens != rows[0].tokens) {
            println!("rows stopped at EOS after different numbers of tokens: compare ms/forward, not tokens/s");
        }
    } else {
        println!(
            "every row decodes exactly {} tokens (EOS ignored; --stop-at-eos stops at the answer's end)",
            base.gen_length
        );
    }
    println!(
        "| {:<26} | {:>6} | {:>8} | {:>6} | {:>10} | {:>9} | {:>8} |",
        "mode", "tokens", "forwards", "TPF", "ms/forward", "tokens/s", "vs row 1"
    );
    println!(
        "|{:-<28}|{:->8}|{:->10}|{:->8}|{:->12}|{:->11}|{:->10}|",
        "", "", "", "", "", "", ""
    );
    let reference = rows[0].tokens_per_second;
    if args.batch > 1 {
        println!(
            "row 1: {} copies of the prompt decoded together; tokens and tokens/s are summed over them, forwards and ms/forward count batched passes, TPF is per sequence",
            args.batch
        );
    }
    for r in &rows {
        println!(
            "| {:<26} | {:>6} | {:>8} | {:>6.2} | {:>10.2} | {:>9.1} | {:>7.2}x |",
            r.mode,
            r.tokens,
            r.forwards,
            r.tokens_per_forward,
            r.ms_per_forward,
            r.tokens_per_second,
            r.tokens_per_second / reference
        );
    }
    if let Some(m) = machine {
        println!(
            "machine ({} threads): reads memory at {:.1} GB/s (an 8 MiB buffer, from the caches: {:.1}); f32 multiply-adds on registers {:.1} GMAC/s (bf16 dot products {:.1}); matrix products (GMAC/s, f32 / q8_0 / q4k) at their best (512 x 2048 x 2048) {:.1} / {:.1} / {:.1}, at a block's shape (32 x 2048 x 2048) {:.1} / {:.1} / {:.1}",
            m.threads, m.read_gb_per_s, m.cache_read_gb_per_s, m.fma_peak_gmacs, m.bf16_peak_gmacs, m.peak.f32, m.peak.q8_0, m.peak.q4k, m.block.f32, m.block.q8_0, m.block.q4k
        );
        println!(
            "| {:<26} | {:>10} | {:>10} | {:>11} | {:>12} | {:>9} |",
            "per forward", "weights MB", "MMAC", "memory floor", "compute floor", "of limit"
        );
        println!(
            "|{:-<28}|{:->12}|{:->12}|{:->13}|{:->14}|{:->11}|",
            "", "", "", "", "", ""
        );
        for r in &rows {
            if let Some(f) = r.limits {
                println!(
                    "| {:<26} | {:>10.2} | {:>10.2} | {:>8.3} ms | {:>9.3} ms | {:>8.1}% |",
                    r.mode,
                    f.weight_mb,
                    f.mmacs,
                    f.memory_floor_ms,
                    f.compute_floor_ms,
                    100.0 * f.fraction_of_limit
                );
            }
        }
    }
    if let Some(b) = break_even {
        println!(
            "break-even TPF {:.2}: a {}-token block forward costs {:.3} ms, an AR step {:.3} ms; \
             at the measured {:.2} tokens per forward diffusion runs at {:.2}x AR speed",
            b.break_even_tpf,
            base.block_length,
            b.block_forward_ms,
            b.ar_step_ms,
            b.measured_tpf,
            b.speed_vs_ar
        );
    }
    Ok(())
}

/// One untimed warm-up call of `decode`, then `runs` timed ones, as a table row.
/// `decode` returns its statistics and the forward passes it ran (batched passes when
/// several sequences share them).
fn timed_row(
    mode: &'static str,
    runs: usize,
    model: &Llada2Model,
    mut decode: impl FnMut() -> Result<(GenerateStats, usize)>,
) -> Result<Row> {
    decode()?;
    let before = model.backend().cost();
    let (mut total, mut passes) = (GenerateStats::default(), 0);
    for _ in 0..runs {
        let (s, p) = decode()?;
        total.tokens += s.tokens;
        total.forwards += s.forwards;
        total.seconds += s.seconds;
        passes += p;
    }
    Ok(Row {
        mode,
        tokens: total.tokens / runs,
        forwards: passes / runs,
        tokens_per_forward: total.tokens_per_forward(),
        ms_per_forward: 1e3 * total.seconds / passes.max(1) as f64,
        tokens_per_second: total.tokens_per_second(),
        cost: model.backend().cost() - before,
        limits: None,
    })
}

/// Decodes `n` copies of `prompt` through shared forward passes. Returns the summed
/// per-sequence statistics (wall time once) and the number of batched passes.
fn run_batched(
    model: &Llada2Model,
    prompt: &[u32],
    params: &GenerateParams,
    n: usize,
) -> Result<(GenerateStats, usize)> {
    let started = std::time::Instant::now();
    let mut gens = (0..n)
        .map(|_| Generation::new(model, prompt, params.clone()))
        .collect::<llada::Result<Vec<_>>>()?;
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

/// Peak resident memory of this process (Linux `VmHWM`).
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A fixed pseudo-random prompt that avoids the special ids.
fn synthetic_prompt(len: usize, vocab: usize, params: &GenerateParams) -> Vec<u32> {
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
