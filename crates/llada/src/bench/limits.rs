//! The machine's physical limits, measured in-process: how fast it reads memory, how many
//! multiply-adds its cores can issue and how fast llada's linear layers multiply
//! matrices (f32, q8_0, q4k), so that a benchmark can say how far a forward pass is from
//! the floor its weight bytes and multiply-accumulates impose.

use std::time::Instant;

use candle_core::{Device, Tensor};
use serde::Serialize;

use crate::error::Result;
use crate::kernels::{bf16_loop, fma_loop, FMA_CHAINS};
use crate::quant::{LinearWeight, Quant};

/// What this machine sustains.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Machine {
    pub threads: usize,
    /// Reading a buffer far larger than the caches, all threads.
    pub read_gb_per_s: f64,
    /// Reading an 8 MiB buffer again and again (within a usual L3 cache), all threads:
    /// the bandwidth a model whose weights fit in the cache sees.
    pub cache_read_gb_per_s: f64,
    /// Independent 8-lane f32 multiply-adds on registers, all threads (billions of MACs
    /// per second): the ceiling of any f32 product on this machine; 0 where llada has no
    /// such loop for the CPU (not x86-64 with AVX2 and FMA).
    pub fma_peak_gmacs: f64,
    /// The same for bf16 pair dot products into f32 (AVX-512 BF16 `vdpbf16ps`), counted
    /// as MACs: the ceiling of a bf16 compute path, which llada does not have; 0 where the
    /// CPU lacks the instruction.
    pub bf16_peak_gmacs: f64,
    /// Matrix products at their best (512 x 2048 times a 2048 x 2048 weight), all
    /// threads: the compute limit.
    pub peak: Rates,
    /// The shape of one block forward at LLaDA2.0-mini's width (32 rows).
    pub block: Rates,
}

/// Multiply-accumulates per second (billions) by weight type.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Rates {
    pub f32: f64,
    pub q8_0: f64,
    pub q4k: f64,
}

impl Rates {
    fn measure(rows: usize) -> Result<Self> {
        Ok(Self {
            f32: matmul_rate(rows, 2048, 2048, None)?,
            q8_0: matmul_rate(rows, 2048, 2048, Some(Quant::Q8_0))?,
            q4k: matmul_rate(rows, 2048, 2048, Some(Quant::Q4k))?,
        })
    }

    /// The rate of linear layers that run in `compute` blocks (`None`: f32).
    pub fn for_weights(&self, compute: Option<Quant>) -> f64 {
        match compute {
            Some(Quant::Q4k) => self.q4k,
            Some(Quant::Q8_0) => self.q8_0,
            None => self.f32,
        }
    }
}

/// Best of `runs` timings of `f`, in seconds.
fn best(runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut best = f64::INFINITY;
    for _ in 0..runs {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// Reads a buffer of `mib` MiB split over `threads` threads, each its part `passes` times
/// (a wrapping integer sum, which the compiler vectorizes, so that the adds never limit
/// the reading).
fn read_bandwidth(threads: usize, mib: usize, passes: usize) -> Result<f64> {
    let buf = vec![1u64; mib << 17];
    let chunk = buf.len().div_ceil(threads);
    let seconds = best(3, || {
        let total: u64 = std::thread::scope(|s| {
            let handles: Vec<_> = buf
                .chunks(chunk)
                .map(|part| {
                    s.spawn(move || {
                        (0..passes).fold(0u64, |acc, _| {
                            let sum = part.iter().fold(0u64, |a, &b| a.wrapping_add(b));
                            acc.wrapping_add(std::hint::black_box(sum))
                        })
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or(0))
                .fold(0, u64::wrapping_add)
        });
        std::hint::black_box(total);
        Ok(())
    })?;
    Ok((buf.len() * 8 * passes) as f64 / seconds / 1e9)
}

/// MAC/s (billions) of `run(iters)` (`macs_per_iter` each) on `threads` threads: the
/// best of several short runs, as a neighbour on the shared machine can halve one; 0
/// where `run` has no loop for this CPU.
fn register_peak(
    threads: usize,
    macs_per_iter: usize,
    run: impl Fn(usize) -> Option<f32> + Sync,
) -> Result<f64> {
    const ITERS: usize = 5_000_000;
    if run(0).is_none() {
        return Ok(0.0);
    }
    let seconds = best(9, || {
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| std::hint::black_box(run(ITERS)));
            }
        });
        Ok(())
    })?;
    Ok((threads * ITERS * macs_per_iter) as f64 / seconds / 1e9)
}

/// MAC/s of `[m, k] x [k, n]^T` through the linear layers llada runs (`quant` None: f32).
fn matmul_rate(m: usize, k: usize, n: usize, quant: Option<Quant>) -> Result<f64> {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
    let w = Tensor::randn(0f32, 0.02, (n, k), &dev)?;
    let linear = LinearWeight::new(w, None, quant)?;
    let seconds = best(5, || {
        std::hint::black_box(linear.forward(&x)?);
        Ok(())
    })?;
    Ok((m * k * n) as f64 / seconds / 1e9)
}

/// Measures the machine (several seconds).
pub fn measure() -> Result<Machine> {
    let threads = rayon::current_num_threads();
    Ok(Machine {
        threads,
        read_gb_per_s: read_bandwidth(threads, 512, 1)?,
        cache_read_gb_per_s: read_bandwidth(threads, 8, 32)?,
        fma_peak_gmacs: register_peak(threads, FMA_CHAINS * 8, fma_loop)?,
        bf16_peak_gmacs: register_peak(threads, FMA_CHAINS * 32, bf16_loop)?,
        peak: Rates::measure(512)?,
        block: Rates::measure(32)?,
    })
}

/// How one forward compares with the floors its work imposes.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Floor {
    pub weight_mb: f64,
    pub mmacs: f64,
    /// Reading the weights once at the measured bandwidth.
    pub memory_floor_ms: f64,
    /// The multiply-accumulates at the measured matrix rate.
    pub compute_floor_ms: f64,
    /// max(floors) / measured: 1.0 would be at the limit.
    pub fraction_of_limit: f64,
}

impl Floor {
    /// The larger of the two floors.
    pub fn floor_ms(&self) -> f64 {
        self.memory_floor_ms.max(self.compute_floor_ms)
    }

    pub fn of(
        cost: crate::ForwardCost,
        passes: usize,
        ms: f64,
        read_gb_per_s: f64,
        gmacs: f64,
    ) -> Self {
        let per = passes.max(1) as f64;
        let bytes = cost.weight_bytes as f64 / per;
        let macs = cost.macs as f64 / per;
        let memory_floor_ms = bytes / (read_gb_per_s * 1e9) * 1e3;
        let compute_floor_ms = macs / (gmacs * 1e9) * 1e3;
        Self {
            weight_mb: bytes / 1e6,
            mmacs: macs / 1e6,
            memory_floor_ms,
            compute_floor_ms,
            fraction_of_limit: memory_floor_ms.max(compute_floor_ms) / ms,
        }
    }
}
