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
    /// Instead of the rows: how cost grows with the context, at these prompt lengths
    /// (comma-separated, e.g. 1024,8192,32768): prefill time (in --prefill-chunk
    /// chunks), a block forward and an AR step after the prompt, the KV cache's size
    /// (--kv-cache) and the process's memory.
    #[arg(long, value_delimiter = ',')]
    pub context: Vec<usize>,
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
    // Before any forward pass: what loading alone keeps resident (kernels may lay out
    // copies of the weights they multiply as they first use them).
    let loaded_rss = bench::rss();
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
    if !args.context.is_empty() {
        return context_growth(&args, &loaded, &base, load_seconds);
    }
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
        "model {source}, {} layers, on {}, weights {}: {:.2} GiB in memory, loaded in {load_seconds:.1} s, RSS after loading {}, peak RSS {}",
        loaded.model.config().num_hidden_layers,
        loaded.model.device_name(),
        loaded.weights,
        gib(loaded.model.weight_bytes() as f64),
        loaded_rss.map_or("unknown".into(), |b| format!("{:.2} GiB", gib(b as f64))),
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
    let experts = loaded.model.expert_weight_bytes() as f64;
    if experts > 0.0 {
        println!(
            "routed experts' weights read per forward, of {:.0} MiB ({}):",
            experts / (1u64 << 20) as f64,
            routing(loaded.model.config())
        );
        for r in &rows {
            println!(
                "  {:<26} {:>9.1} MiB ({:.1}%)",
                r.mode,
                r.expert_bytes_per_forward / (1u64 << 20) as f64,
                100.0 * r.expert_bytes_per_forward / experts
            );
        }
    }
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

/// How the model routes its experts, for people.
fn routing(cfg: &llada::Llada2Config) -> String {
    match cfg.expert_capacity {
        0 => "no block routing (each token picks its experts alone)".to_string(),
        c => format!(
            "block routing: each routing block of {} positions picks {c} of {} experts ({:.1}%)",
            cfg.routing_block(),
            cfg.num_experts.unwrap_or(0),
            100.0 * c as f64 / cfg.num_experts.unwrap_or(1) as f64
        ),
    }
}

/// `--context`: the context-growth table.
fn context_growth(
    args: &BenchArgs,
    loaded: &llada::LoadedModel,
    base: &llada::GenerateParams,
    load_seconds: f64,
) -> Result<()> {
    let rows =
        bench::context_growth(&loaded.model, &args.context, base, args.runs).map_err(flag_error)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let opt = |b: Option<u64>| b.map_or("?".into(), |b| format!("{:.0}", mib(b)));
    println!(
        "model {}, {} layers, on {}, weights {} ({:.0} MiB, loaded in {load_seconds:.1} s); KV cache {}, prefill chunks of {} tokens, block {}, {} runs per forward",
        args.synthetic.as_deref().map_or_else(|| loaded.files.dir.display().to_string(), |s| format!("synthetic {s}")),
        loaded.model.config().num_hidden_layers,
        loaded.model.device_name(),
        loaded.weights,
        mib(loaded.model.weight_bytes() as u64),
        base.kv_cache.name(),
        base.prefill_chunk_tokens(),
        base.block_length,
        args.runs
    );
    let experts = loaded.model.expert_weight_bytes() as u64;
    println!(
        "routed experts' weights: {:.0} MiB; {}",
        mib(experts),
        routing(loaded.model.config())
    );
    let head = [
        "prompt",
        "prefill s",
        "prefill t/s",
        "block fwd ms",
        "AR step ms",
        "break-even TPF",
        "block experts MiB",
        "AR experts MiB",
        "KV cache MiB",
        "RSS MiB",
        "peak MiB",
    ];
    println!("| {} |", head.join(" | "));
    println!("|{}|", head.map(|h| "-".repeat(h.len() + 2)).join("|"));
    let share = |b: u64| 100.0 * b as f64 / experts.max(1) as f64;
    for r in &rows {
        let cells = [
            r.prompt_tokens.to_string(),
            format!("{:.2}", r.prefill_seconds),
            format!("{:.1}", r.prefill_tokens_per_second),
            format!("{:.2}", r.block_forward_ms),
            format!("{:.2}", r.ar_step_ms),
            format!("{:.2}", r.break_even_tpf),
            format!(
                "{:.1} ({:.1}%)",
                mib(r.block_expert_bytes),
                share(r.block_expert_bytes)
            ),
            format!(
                "{:.1} ({:.1}%)",
                mib(r.ar_expert_bytes),
                share(r.ar_expert_bytes)
            ),
            format!("{:.1}", mib(r.kv_cache_bytes)),
            opt(r.rss_bytes),
            opt(r.peak_rss_bytes),
        ];
        let cells: Vec<String> = cells
            .iter()
            .zip(head)
            .map(|(c, h)| format!("{c:>w$}", w = h.len()))
            .collect();
        println!("| {} |", cells.join(" | "));
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
