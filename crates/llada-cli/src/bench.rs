//! `llada bench`: the cached engine next to its baselines, measured in the same run.

use anyhow::{bail, Result};
use clap::Args;
use llada::backend::gpu::GpuLimits;
use llada::bench::{self, BreakEven, Machine, Row};
use llada::{Model, WeightFormat};

use crate::args::{flag_error, DecodeArgs, ModelArgs, PromptArgs};

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
    /// llada2-mini, llada2_2-mini, llada2-flash or llada2-63m (built in memory at the
    /// chosen --quant).
    #[arg(long, conflicts_with = "model")]
    pub synthetic: Option<String>,
    /// With --synthetic: keep only the first N layers (e.g. to fit flash in memory).
    #[arg(long, requires = "synthetic")]
    pub layers: Option<usize>,
    /// Which rows to run: cached, dual (approximate block caching, see
    /// --block-cache-refresh), no-cache, ar (comma-separated).
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

pub fn run(args: BenchArgs) -> Result<()> {
    // Before the model loads (a large one takes a while).
    if args.runs == 0 {
        bail!("invalid --runs: must be at least 1");
    }
    if let Some(bad) = args
        .modes
        .iter()
        .find(|m| !bench::MODE_NAMES.contains(&m.as_str()))
    {
        bail!(
            "invalid --modes: unknown mode {bad:?} (known: {})",
            bench::MODE_NAMES.join(", ")
        );
    }
    let started = std::time::Instant::now();
    let loaded = match &args.synthetic {
        Some(name) => {
            let loaded = llada::load_synthetic_on(
                name,
                args.layers,
                args.model.quant,
                0,
                args.model.device()?,
            )?;
            eprintln!("llada: running on {}", loaded.model.device_name());
            loaded
        }
        None => args.model.load()?,
    };
    let load_seconds = started.elapsed().as_secs_f64();
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
        None => {
            bench::synthetic_prompt(args.prompt_length, loaded.model.config().vocab_size, &base)
        }
    };
    let modes =
        bench::modes(&args.modes, &base, refresh, args.batch as usize).map_err(flag_error)?;
    let mut rows = modes
        .iter()
        .map(|mode| bench::measure(&loaded.model, &prompt, mode, args.runs))
        .collect::<llada::Result<Vec<Row>>>()
        .map_err(flag_error)?;
    let limits = if args.limits {
        let limits = Limits::measure(&loaded)?;
        let (read, gmacs) = limits.floors_rates(&loaded);
        bench::add_limits(&mut rows, args.runs, read, gmacs);
        Some(limits)
    } else {
        None
    };
    let break_even = BreakEven::of(&rows);
    if args.json {
        let report =
            serde_json::json!({ "rows": rows, "break_even": break_even, "limits": limits });
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let source = args.synthetic.as_deref().map_or_else(
        || loaded.files.dir.display().to_string(),
        |s| format!("synthetic {s} (random weights)"),
    );
    let gib = |bytes: f64| bytes / (1u64 << 30) as f64;
    println!(
        "model {source}, {} layers, on {}, weights {}: {:.2} GiB in memory, loaded in {load_seconds:.1} s, peak RSS {}",
        loaded.model.config().num_hidden_layers,
        loaded.model.device_name(),
        loaded.weights,
        gib(loaded.model.weight_bytes() as f64),
        bench::peak_rss().map_or("unknown".into(), |b| format!("{:.2} GiB", gib(b as f64))),
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
    if args.batch > 1 {
        println!(
            "row 1: {} copies of the prompt decoded together; tokens and tokens/s are summed over them, forwards and ms/forward count batched passes, TPF is per sequence",
            args.batch
        );
    }
    print_rows(&rows);
    if let Some(l) = &limits {
        l.print();
        print_floors(&rows);
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
        if let Some(at_floors) = b.at_floors {
            println!(
                "break-even TPF at the floors {at_floors:.2} (block floor / AR floor): the part of the break-even that is physics"
            );
        }
    }
    Ok(())
}

fn print_rows(rows: &[Row]) {
    println!(
        "| {:<26} | {:>6} | {:>8} | {:>6} | {:>10} | {:>9} | {:>8} |",
        "mode", "tokens", "forwards", "TPF", "ms/forward", "tokens/s", "vs row 1"
    );
    println!(
        "|{:-<28}|{:->8}|{:->10}|{:->8}|{:->12}|{:->11}|{:->10}|",
        "", "", "", "", "", "", ""
    );
    let reference = rows[0].tokens_per_second;
    for r in rows {
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
}

/// The limits of the device the model runs on.
#[derive(serde::Serialize)]
#[serde(untagged)]
enum Limits {
    Cpu(Machine),
    Gpu { device: String, gpu: GpuLimits },
}

impl Limits {
    fn measure(loaded: &llada::LoadedModel) -> Result<Self> {
        Ok(match &loaded.model {
            Model::Cpu(_) => Limits::Cpu(bench::measure_machine()?),
            Model::Gpu(m) => Limits::Gpu {
                device: m.backend().name(),
                gpu: m.backend().measure_limits()?,
            },
        })
    }

    /// Read bandwidth and product rate for the floors of `loaded`'s weights.
    fn floors_rates(&self, loaded: &llada::LoadedModel) -> (f64, f64) {
        match self {
            Limits::Cpu(m) => (
                m.read_gb_per_s,
                m.peak.for_weights(loaded.weights.compute()),
            ),
            Limits::Gpu { gpu, .. } => {
                let bf16 = matches!(
                    loaded.weights.format,
                    WeightFormat::Safetensors(candle_core::DType::BF16) | WeightFormat::Random
                );
                (
                    gpu.read_gb_per_s,
                    if bf16 { gpu.bf16_gmacs } else { gpu.f32_gmacs },
                )
            }
        }
    }

    fn print(&self) {
        match self {
            Limits::Cpu(m) => println!(
                "machine ({} threads): reads memory at {:.1} GB/s (an 8 MiB buffer, from the caches: {:.1}); f32 multiply-adds on registers {:.1} GMAC/s (bf16 dot products {:.1}); matrix products (GMAC/s, f32 / q8_0 / q4k) at their best (512 x 2048 x 2048) {:.1} / {:.1} / {:.1}, at a block's shape (32 x 2048 x 2048) {:.1} / {:.1} / {:.1}",
                m.threads, m.read_gb_per_s, m.cache_read_gb_per_s, m.fma_peak_gmacs, m.bf16_peak_gmacs, m.peak.f32, m.peak.q8_0, m.peak.q4k, m.block.f32, m.block.q8_0, m.block.q4k
            ),
            Limits::Gpu { device, gpu: g } => println!(
                "device {device}: reads memory at {:.1} GB/s; llada's product kernel (GMAC/s, f32 / bf16 weights) at its best (512 rows) {:.1} / {:.1}, at a block's shape (32 rows) {:.1} / {:.1}",
                g.read_gb_per_s, g.f32_gmacs, g.bf16_gmacs, g.block_f32_gmacs, g.block_bf16_gmacs
            ),
        }
    }
}

fn print_floors(rows: &[Row]) {
    println!(
        "| {:<26} | {:>10} | {:>10} | {:>11} | {:>12} | {:>9} |",
        "per forward", "weights MB", "MMAC", "memory floor", "compute floor", "of limit"
    );
    println!(
        "|{:-<28}|{:->12}|{:->12}|{:->13}|{:->14}|{:->11}|",
        "", "", "", "", "", ""
    );
    for r in rows {
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
