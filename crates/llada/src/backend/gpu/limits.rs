//! The GPU's limits, measured with llada's own kernels: read bandwidth and the rate of
//! the product kernel, for `bench --limits --device gpu`.

use std::time::Instant;

use super::kernels::{grid, Variant};
use super::Gpu;
use crate::error::Result;

/// What the GPU sustains, measured.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct GpuLimits {
    /// Reading a buffer far larger than the caches (GB/s).
    pub read_gb_per_s: f64,
    /// The product kernel at its best shape (512 rows), billions of MACs per second, with
    /// f32 and with bf16 weights.
    pub f32_gmacs: f64,
    pub bf16_gmacs: f64,
    /// The same at a block's shape (32 rows).
    pub block_f32_gmacs: f64,
    pub block_bf16_gmacs: f64,
}

impl Gpu {
    /// Best of `runs` timings of `f` followed by a wait for the device, in seconds.
    fn time(&self, runs: usize, f: impl Fn()) -> Result<f64> {
        f();
        self.finish("warming up")?;
        let mut best = f64::INFINITY;
        for _ in 0..runs {
            let t = Instant::now();
            f();
            self.finish("timing")?;
            best = best.min(t.elapsed().as_secs_f64());
        }
        Ok(best)
    }

    /// Measures the device (a few seconds on a GPU; software adapters get small shapes).
    pub fn measure_limits(&self) -> Result<GpuLimits> {
        let small = self.is_software();
        let mib = if small { 64 } else { 1024 }
            .min((self.max_binding >> 20) as usize / 2)
            .max(1);
        let vec4s = mib * (1 << 20) / 16;
        let data = self.kernels.zeros("bandwidth probe", vec4s * 16);
        let threads = 64 * 1024;
        let out = self.kernels.zeros("probe sums", threads * 4);
        let seconds = self.time(if small { 2 } else { 10 }, || {
            self.kernels.dispatch(
                &Variant::plain("read_sum"),
                &[vec4s as u32, threads as u32],
                &[&data, &out],
                grid(threads),
            );
        })?;
        let read_gb_per_s = (vec4s * 16) as f64 / seconds / 1e9;
        let k = if small { 512 } else { 4096 };
        let rate = |rows: usize, bf16: bool| -> Result<f64> {
            // Weights whose values are all bf16 (0.5) are stored as bf16.
            let value = if bf16 { 0.5 } else { 0.3 };
            let w = self.weight(&vec![value; k * k], k, k, true)?;
            let x = self.weight(&vec![0.1; rows * k], rows, k, false)?;
            let seconds = self.time(if small { 1 } else { 10 }, || {
                self.product(&x, &w, None);
            })?;
            Ok((rows * k * k) as f64 / seconds / 1e9)
        };
        Ok(GpuLimits {
            read_gb_per_s,
            f32_gmacs: rate(512, false)?,
            bf16_gmacs: rate(512, true)?,
            block_f32_gmacs: rate(32, false)?,
            block_bf16_gmacs: rate(32, true)?,
        })
    }
}
