//! The CPU backend's kernels, where a profile showed candle to be the bottleneck. Each has
//! a plain version that the fast one is tested against; docs/performance.md has the
//! measurements that led to each.
//!
//! Greedy confidence: the probability of the argmax is 1 / Σ exp(l - max) over the whole
//! vocabulary (157,184 logits per masked position for LLaDA2.0-mini): [`exp_sum`] computes
//! that sum with a polynomial exp the compiler vectorizes, instead of one libm call per
//! logit.
//!
//! q8_0 matrix products: candle converts two f16 scales per 32-element block in software,
//! which made its q8_0 product several times slower than its f32 and q4k ones. Here the
//! scales are kept in f32 (converted once, exactly), the activations are quantized once
//! per row, and the 32-element int8 dot products use AVX2 (`maddubs`/`madd`), detected at
//! run time.
//!
//! f32 products at inference: candle's gemm repacks the whole weight on every call and
//! hands each small product to its thread pool (a MoE expert gets ~8 rows of a 32-token
//! block). Weights are packed once at load in panels of four rows ([`PackedF32`]) and
//! multiplied four rows by three activation rows at a time.
//!
//! Other products: activations by activations (attention) and the router through `gemm`
//! on llada's pool ([`matmul`]); other ggml blocks (q4k) by candle's kernels in row
//! chunks on llada's pool ([`QuantizedRows`]).

use std::ops::Range;

use rayon::prelude::*;

mod ceilings;
mod matmul;
mod qrows;
mod softmax;

pub(crate) use ceilings::{bf16_loop, fma_loop, FMA_CHAINS};
pub use matmul::{matmul, matmul_f32};
pub use qrows::QuantizedRows;

pub use softmax::{
    contiguous_f32, last_dim, masked_softmax, max8, sum8, MaskedSoftmaxOp, SoftmaxOp,
};

/// Builds the thread pool llada's kernels run on (rayon's global pool) with `threads`
/// threads, else one per physical core (`RAYON_NUM_THREADS` when set, as candle counts
/// them). The pool is built once per process: returns its size, which is an earlier
/// pool's where one exists. Call it first thing, before any other thread exists.
///
/// candle also keeps a pool of its own, for elementwise ops on 64K values or more
/// (training's, and a block's residual adds at LLaDA2.0-mini's width), whose workers
/// spin while they wait: beside a busy process it collapses, and two trainer shards
/// queue on its lock. It is sized once, from `CANDLE_NUM_THREADS`, its only setting:
/// unless the user set that variable, it is set to 1 here, so that candle's ops run in
/// the thread that calls them and llada's pool is the only one.
pub fn init_thread_pool(threads: Option<usize>) -> usize {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    let n = threads.unwrap_or_else(candle_core::utils::get_num_threads);
    // An error means the pool exists already; its size is what counts.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global();
    rayon::current_num_threads()
}

/// Runs `work` on a thread of rayon's global pool, where the parallel loops inside it
/// (ours, candle's, gemm's) start and end without waking a sleeping caller: from a thread
/// outside the pool each of them is a hand-off through the kernel (futex wake and wait),
/// dozens per forward pass of a small model.
pub(crate) fn on_thread_pool<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        work()
    } else {
        rayon::scope(|_| work())
    }
}

/// Elements per q8_0 block.
pub const Q8_BLOCK: usize = 32;

/// A `[rows, cols]` matrix in q8_0 blocks: per block of 32 values of a row, one scale and
/// 32 signed bytes (value = scale * byte). The scales are f16 values (as GGUF stores
/// them) kept in f32.
#[derive(Debug, Clone)]
pub struct Q8Matrix {
    rows: usize,
    cols: usize,
    qs: Vec<i8>,
    scales: Vec<f32>,
}

/// Quantizes one row to q8_0 exactly as ggml does: scale = max|x| / 127 rounded to f16,
/// bytes = round(x / scale), halves away from zero. Activations are quantized before
/// every product, so this is on the hot path: the rounding below vectorizes, libm's
/// `roundf` per element does not.
fn quantize_row(x: &[f32], qs: &mut [i8], scales: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the features were just detected.
            return unsafe { quantize_row_avx2(x, qs, scales) };
        }
    }
    quantize_row_portable(x, qs, scales)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_row_avx2(x: &[f32], qs: &mut [i8], scales: &mut [f32]) {
    quantize_row_portable(x, qs, scales)
}

/// `roundf`: to the nearest integer, halves away from zero (exact for every finite `v`).
#[inline(always)]
fn round_half_away(v: f32) -> f32 {
    let t = v.trunc();
    if (v - t).abs() >= 0.5 {
        t + v.signum()
    } else {
        t
    }
}

#[inline(always)]
fn quantize_row_portable(x: &[f32], qs: &mut [i8], scales: &mut [f32]) {
    for ((block, q), s) in x
        .chunks_exact(Q8_BLOCK)
        .zip(qs.chunks_exact_mut(Q8_BLOCK))
        .zip(scales.iter_mut())
    {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        *s = half::f16::from_f32(d).to_f32();
        for (q, &v) in q.iter_mut().zip(block) {
            *q = round_half_away(v * id) as i8;
        }
    }
}

impl Q8Matrix {
    /// Quantizes a row-major `[rows, cols]` f32 matrix; `cols` must be a multiple of 32.
    pub fn quantize(w: &[f32], rows: usize, cols: usize) -> Self {
        assert!(cols.is_multiple_of(Q8_BLOCK) && w.len() == rows * cols);
        let mut qs = vec![0i8; rows * cols];
        let mut scales = vec![0f32; rows * cols / Q8_BLOCK];
        let per_row = cols / Q8_BLOCK;
        for r in 0..rows {
            quantize_row(
                &w[r * cols..(r + 1) * cols],
                &mut qs[r * cols..(r + 1) * cols],
                &mut scales[r * per_row..(r + 1) * per_row],
            );
        }
        Self {
            rows,
            cols,
            qs,
            scales,
        }
    }

    /// The quantized values (row-major) and one scale per block of 32.
    pub fn blocks(&self) -> (&[i8], &[f32]) {
        (&self.qs, &self.scales)
    }

    /// Reads ggml's q8_0 layout (per block: f16 scale, then 32 bytes).
    pub fn from_ggml(bytes: &[u8], rows: usize, cols: usize) -> Option<Self> {
        const BLOCK_BYTES: usize = 2 + Q8_BLOCK;
        if !cols.is_multiple_of(Q8_BLOCK) || bytes.len() != rows * cols / Q8_BLOCK * BLOCK_BYTES {
            return None;
        }
        let mut qs = Vec::with_capacity(rows * cols);
        let mut scales = Vec::with_capacity(rows * cols / Q8_BLOCK);
        for block in bytes.chunks_exact(BLOCK_BYTES) {
            scales.push(half::f16::from_le_bytes([block[0], block[1]]).to_f32());
            qs.extend(block[2..].iter().map(|&b| b as i8));
        }
        Some(Self {
            rows,
            cols,
            qs,
            scales,
        })
    }

    /// The blocks as ggml stores them (f16 scale, then 32 values); the scales came from
    /// f16, so this is exact.
    pub fn to_ggml(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.storage_bytes());
        for (q, &d) in self.qs.chunks_exact(Q8_BLOCK).zip(&self.scales) {
            out.extend(half::f16::from_f32(d).to_le_bytes());
            out.extend(q.iter().map(|&v| v as u8));
        }
        out
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes of the blocks as ggml stores them (a 2-byte scale per 32 bytes).
    pub fn storage_bytes(&self) -> usize {
        self.qs.len() + 2 * self.scales.len()
    }

    /// The matrix back in f32.
    pub fn dequantize(&self) -> Vec<f32> {
        self.qs
            .chunks_exact(Q8_BLOCK)
            .zip(&self.scales)
            .flat_map(|(q, &d)| q.iter().map(move |&v| v as f32 * d))
            .collect()
    }

    /// Activations quantized to q8_0 per row, as ggml does.
    fn quantize_activations(&self, x: &[f32], m: usize) -> (Vec<i8>, Vec<f32>) {
        assert_eq!(x.len(), m * self.cols, "matmul: x is not [m, cols]");
        let per_row = self.cols / Q8_BLOCK;
        let mut xq = vec![0i8; x.len()];
        let mut xs = vec![0f32; m * per_row];
        for i in 0..m {
            quantize_row(
                &x[i * self.cols..(i + 1) * self.cols],
                &mut xq[i * self.cols..(i + 1) * self.cols],
                &mut xs[i * per_row..(i + 1) * per_row],
            );
        }
        (xq, xs)
    }

    /// Weight row `j` times every activation row, into `out[i * stride]`.
    fn row_products(
        &self,
        j: usize,
        xq: &[i8],
        xs: &[f32],
        row: RowFn,
        out: &mut [f32],
        stride: usize,
    ) {
        let per_row = self.cols / Q8_BLOCK;
        let wq = &self.qs[j * self.cols..(j + 1) * self.cols];
        let ws = &self.scales[j * per_row..(j + 1) * per_row];
        row(wq, ws, xq, xs, out, stride);
    }

    /// Weight rows `rows` times every activation row, into `part` (`[m, rows.len()]`).
    fn rows_into(&self, rows: Range<usize>, xq: &[i8], xs: &[f32], part: &mut [f32]) {
        let (row, stride) = (row_fn(), rows.len());
        for (jj, j) in rows.enumerate() {
            self.row_products(j, xq, xs, row, &mut part[jj..], stride);
        }
    }

    /// `x @ self^T` for `x` row-major `[m, cols]`: returns `[m, rows]`. Weight rows are
    /// shared out over threads.
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        let (xq, xs) = self.quantize_activations(x, m);
        let chunk = (self.rows / (4 * rayon::current_num_threads())).clamp(8, 256);
        split_rows(self.rows, m, chunk, |rows, part| {
            self.rows_into(rows, &xq, &xs, part)
        })
    }

    /// [`Q8Matrix::matmul`] in the calling thread, for callers that run many small
    /// products side by side.
    pub fn matmul_serial(&self, x: &[f32], m: usize) -> Vec<f32> {
        let (xq, xs) = self.quantize_activations(x, m);
        let mut out = vec![0f32; m * self.rows];
        self.rows_into(0..self.rows, &xq, &xs, &mut out);
        out
    }
}

/// The `[m, rows]` result of a product whose weight rows are computed in chunks of
/// `chunk` side by side on the thread pool: `fill(rows, part)` writes the columns `rows`
/// of every output row into `part` (`[m, rows.len()]`); the parts are then put in place.
fn split_rows(
    rows: usize,
    m: usize,
    chunk: usize,
    fill: impl Fn(Range<usize>, &mut [f32]) + Sync,
) -> Vec<f32> {
    let mut out = vec![0f32; m * rows];
    if chunk >= rows {
        fill(0..rows, &mut out);
        return out;
    }
    let parts: Vec<(Range<usize>, Vec<f32>)> = (0..rows)
        .into_par_iter()
        .step_by(chunk.max(1))
        .map(|start| {
            let range = start..(start + chunk).min(rows);
            let mut part = vec![0f32; m * range.len()];
            fill(range.clone(), &mut part);
            (range, part)
        })
        .collect();
    for (range, part) in parts {
        for (i, values) in part.chunks_exact(range.len()).enumerate() {
            out[i * rows + range.start..i * rows + range.end].copy_from_slice(values);
        }
    }
    out
}

/// Rows per panel of a [`PackedF32`] matrix.
const PANEL: usize = 4;

/// A dense f32 matrix `[rows, cols]` stored for inference products: panels of four rows
/// interleaved per 8 columns (`[panel][cols / 8][4][8]`, the last panel padded with zero
/// rows), so that a pass over a panel reads one sequential stream. Row-major rows are four
/// streams at a stride, which a core reads at about half the bandwidth of one stream:
/// that is the limit of products of 1-2 rows, as in an AR step or an expert with few
/// tokens.
#[derive(Debug, Clone)]
pub struct PackedF32 {
    rows: usize,
    cols: usize,
    data: Vec<f32>,
}

impl PackedF32 {
    /// Packs a row-major `[rows, cols]` matrix; `None` unless `cols` is a multiple of 8.
    pub fn pack(w: &[f32], rows: usize, cols: usize) -> Option<Self> {
        if !cols.is_multiple_of(8) || w.len() != rows * cols {
            return None;
        }
        let panels = rows.div_ceil(PANEL);
        let mut data = vec![0f32; panels * PANEL * cols];
        for (j, row) in w.chunks_exact(cols.max(1)).enumerate() {
            let (panel, r) = (j / PANEL, j % PANEL);
            for (k8, chunk) in row.chunks_exact(8).enumerate() {
                let at = (panel * cols / 8 + k8) * PANEL * 8 + r * 8;
                data[at..at + 8].copy_from_slice(chunk);
            }
        }
        Some(Self { rows, cols, data })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The matrix back in row-major order.
    pub fn unpack(&self) -> Vec<f32> {
        let mut w = vec![0f32; self.rows * self.cols];
        for (j, row) in w.chunks_exact_mut(self.cols.max(1)).enumerate() {
            let (panel, r) = (j / PANEL, j % PANEL);
            for (k8, chunk) in row.chunks_exact_mut(8).enumerate() {
                let at = (panel * self.cols / 8 + k8) * PANEL * 8 + r * 8;
                chunk.copy_from_slice(&self.data[at..at + 8]);
            }
        }
        w
    }

    /// Rows `rows` (starting on a panel) times every row of `x` (`[m, cols]`), into `out`
    /// (`[m, rows.len()]`).
    fn rows_into(&self, rows: Range<usize>, x: &[f32], m: usize, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                // SAFETY: the features were just detected; the shapes are the matrix's.
                return unsafe { avx2::panels(self, rows, x, m, out) };
            }
        }
        let stride = rows.len();
        for (jj, j) in rows.enumerate() {
            let (panel, r) = (j / PANEL, j % PANEL);
            for i in 0..m {
                let xr = &x[i * self.cols..(i + 1) * self.cols];
                out[i * stride + jj] = (0..self.cols)
                    .map(|k| {
                        xr[k]
                            * self.data[(panel * self.cols / 8 + k / 8) * PANEL * 8 + r * 8 + k % 8]
                    })
                    .sum();
            }
        }
    }

    /// `x @ self^T` for `x` `[m, cols]`: returns `[m, rows]`, in the calling thread.
    pub fn matmul_serial(&self, x: &[f32], m: usize) -> Vec<f32> {
        assert_eq!(x.len(), m * self.cols, "matmul: x is not [m, cols]");
        let mut out = vec![0f32; m * self.rows];
        self.rows_into(0..self.rows, x, m, &mut out);
        out
    }

    /// `x @ self^T` with the panels shared out over the thread pool (at least 16 panels
    /// per task).
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        assert_eq!(x.len(), m * self.cols, "matmul: x is not [m, cols]");
        let panels = self.rows.div_ceil(PANEL);
        let chunk = panels.div_ceil(2 * rayon::current_num_threads()).max(16) * PANEL;
        split_rows(self.rows, m, chunk, |rows, part| {
            self.rows_into(rows, x, m, part)
        })
    }
}

/// The plain product `x @ w^T` (`w` row-major `[rows, cols]`) the panel product is
/// tested against.
#[cfg(test)]
fn matmul_f32_scalar(w: &[f32], rows: usize, cols: usize, x: &[f32], m: usize, out: &mut [f32]) {
    for i in 0..m {
        for j in 0..rows {
            let (a, b) = (&x[i * cols..(i + 1) * cols], &w[j * cols..(j + 1) * cols]);
            out[i * rows + j] = a.iter().zip(b).map(|(p, q)| p * q).sum();
        }
    }
}

/// exp(x) for x <= 0 (clamped at -87): x = n ln2 + r with |r| <= ln2 / 2 (ln2 split in
/// two parts so that n ln2 is exact enough), exp(r) by its degree-6 Taylor polynomial,
/// 2^n put into the exponent bits. Relative error < 3e-7.
#[inline(always)]
pub fn exp_nonpositive(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.max(-87.0);
    let n = (x * std::f32::consts::LOG2_E).round();
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    p * f32::from_bits(((n as i32 + 127) << 23) as u32)
}

/// Σ exp(x - max) over `xs`, where `max` is at least every element.
pub fn exp_sum(xs: &[f32], max: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the features were just detected.
            return unsafe { exp_sum_avx2(xs, max) };
        }
    }
    exp_sum_portable(xs, max)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_sum_avx2(xs: &[f32], max: f32) -> f32 {
    exp_sum_portable(xs, max)
}

/// Eight independent partial sums so that the loop vectorizes.
#[inline(always)]
fn exp_sum_portable(xs: &[f32], max: f32) -> f32 {
    let mut acc = [0f32; 8];
    let mut chunks = xs.chunks_exact(8);
    for c in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += exp_nonpositive(x - max);
        }
    }
    let tail: f32 = chunks
        .remainder()
        .iter()
        .map(|&x| exp_nonpositive(x - max))
        .sum();
    acc.iter().sum::<f32>() + tail
}

/// One q8_0 weight row (`wq`, `ws`) times every activation row (`xq`, `xs`, rows of the
/// same length), into `out[i * stride]`.
type RowFn = fn(&[i8], &[f32], &[i8], &[f32], &mut [f32], usize);

/// The fastest row product this CPU runs.
fn row_fn() -> RowFn {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return |wq, ws, xq, xs, out, stride| unsafe { avx2::row(wq, ws, xq, xs, out, stride) };
        }
    }
    row_scalar
}

/// [`dot_scalar`] of the weight row with each activation row.
fn row_scalar(wq: &[i8], ws: &[f32], xq: &[i8], xs: &[f32], out: &mut [f32], stride: usize) {
    for (i, (xq, xs)) in xq
        .chunks_exact(wq.len())
        .zip(xs.chunks_exact(ws.len()))
        .enumerate()
    {
        out[i * stride] = dot_scalar(wq, ws, xq, xs);
    }
}

/// Σ over blocks of scale_a * scale_b * Σ a_i b_i: the reference the fast versions are
/// tested against.
fn dot_scalar(a: &[i8], sa: &[f32], b: &[i8], sb: &[f32]) -> f32 {
    a.chunks_exact(Q8_BLOCK)
        .zip(b.chunks_exact(Q8_BLOCK))
        .zip(sa.iter().zip(sb))
        .map(|((x, y), (dx, dy))| {
            let sum: i32 = x.iter().zip(y).map(|(&p, &q)| p as i32 * q as i32).sum();
            sum as f32 * dx * dy
        })
        .sum()
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::Q8_BLOCK;

    /// Activation rows `i..i + C` against one weight row: per 32-byte block the weight is
    /// loaded once and its absolute value taken once for all C rows (the per-pair dot
    /// product loaded and transformed both sides every time). Same integer sums and the
    /// same float operations in the same order as a pair-by-pair dot product.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn row_tile<const C: usize>(
        wq: &[i8],
        ws: &[f32],
        xq: &[i8],
        xs: &[f32],
        i: usize,
        out: &mut [f32],
        stride: usize,
    ) {
        let (cols, blocks) = (wq.len(), ws.len());
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); C];
        for b in 0..blocks {
            let w = _mm256_loadu_si256(wq.as_ptr().add(b * Q8_BLOCK) as *const __m256i);
            // maddubs multiplies unsigned by signed bytes: move w's sign onto x.
            let aw = _mm256_sign_epi8(w, w);
            let dw = _mm256_set1_ps(*ws.get_unchecked(b));
            for (c, acc) in acc.iter_mut().enumerate() {
                let at = (i + c) * cols + b * Q8_BLOCK;
                let x = _mm256_loadu_si256(xq.as_ptr().add(at) as *const __m256i);
                let sums =
                    _mm256_madd_epi16(_mm256_maddubs_epi16(aw, _mm256_sign_epi8(x, w)), ones);
                let d = _mm256_mul_ps(dw, _mm256_set1_ps(*xs.get_unchecked((i + c) * blocks + b)));
                *acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sums), *acc);
            }
        }
        for (c, &a) in acc.iter().enumerate() {
            out[(i + c) * stride] = hsum(a);
        }
    }

    /// # Safety
    /// The CPU must have AVX2 and FMA; `wq`/`xq` rows hold whole blocks, `ws`/`xs` their
    /// scales; `out` has a slot every `stride` for each activation row.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn row(
        wq: &[i8],
        ws: &[f32],
        xq: &[i8],
        xs: &[f32],
        out: &mut [f32],
        stride: usize,
    ) {
        let m = xq.len() / wq.len().max(1);
        debug_assert!(xs.len() == m * ws.len() && wq.len() == ws.len() * Q8_BLOCK);
        let mut i = 0;
        while i + 4 <= m {
            row_tile::<4>(wq, ws, xq, xs, i, out, stride);
            i += 4;
        }
        match m - i {
            3 => row_tile::<3>(wq, ws, xq, xs, i, out, stride),
            2 => row_tile::<2>(wq, ws, xq, xs, i, out, stride),
            1 => row_tile::<1>(wq, ws, xq, xs, i, out, stride),
            _ => {}
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_extractf128_ps(v, 1), _mm256_castps256_ps128(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }

    /// One panel (its first `rows` of four rows valid) times activation rows `i..i + C`,
    /// into `out[(i + c) * stride + col + r]`. The panel is read as one stream; the next
    /// panel's cache lines are prefetched evenly over all passes (`per_step` lines per
    /// 8-column step of pass `pass`), so that memory keeps streaming while the later passes
    /// run from L1.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn panel_tile<const C: usize>(
        panel: *const f32,
        rows: usize,
        cols: usize,
        x: &[f32],
        i: usize,
        (pass, per_step): (usize, usize),
        out: &mut [f32],
        (stride, col): (usize, usize),
    ) {
        let mut acc = [[_mm256_setzero_ps(); C]; 4];
        let xp = x.as_ptr();
        let next = panel.wrapping_add(4 * cols);
        let lines = cols / 4;
        let mut k = 0;
        while k < cols {
            let first = (pass * (cols / 8) + k / 8) * per_step;
            for line in first..(first + per_step).min(lines) {
                _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(line * 16) as *const i8);
            }
            let mut xv = [_mm256_setzero_ps(); C];
            for (c, v) in xv.iter_mut().enumerate() {
                *v = _mm256_loadu_ps(xp.add((i + c) * cols + k));
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                let wv = _mm256_loadu_ps(panel.add(k * 4 + r * 8));
                for (a, &v) in acc.iter_mut().zip(&xv) {
                    *a = _mm256_fmadd_ps(wv, v, *a);
                }
            }
            k += 8;
        }
        for (r, acc) in acc.iter().enumerate().take(rows) {
            for (c, &a) in acc.iter().enumerate() {
                out[(i + c) * stride + col + r] = hsum(a);
            }
        }
    }

    /// # Safety
    /// The CPU must have AVX2 and FMA; `rows` starts on a panel and lies in `w`; `x` is
    /// `[m, w.cols()]`, `out` `[m, rows.len()]`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn panels(
        w: &super::PackedF32,
        rows: std::ops::Range<usize>,
        x: &[f32],
        m: usize,
        out: &mut [f32],
    ) {
        let cols = w.cols;
        let passes = m.div_ceil(3).max(1);
        let per_step = (cols / 4).div_ceil(passes * (cols / 8).max(1)).max(1);
        let stride = rows.len();
        for j in rows.clone().step_by(4) {
            let panel = w.data.as_ptr().add(j * cols);
            let valid = (rows.end - j).min(4);
            let place = (stride, j - rows.start);
            let (mut i, mut pass) = (0, 0);
            while i + 3 <= m {
                panel_tile::<3>(panel, valid, cols, x, i, (pass, per_step), out, place);
                i += 3;
                pass += 1;
            }
            match m - i {
                2 => panel_tile::<2>(panel, valid, cols, x, i, (pass, per_step), out, place),
                1 => panel_tile::<1>(panel, valid, cols, x, i, (pass, per_step), out, place),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect()
    }

    #[test]
    fn the_fast_row_product_equals_the_scalar_one() {
        // 9 activation rows: tiles of 4, 4 and 1.
        let (m, cols) = (9, 256);
        let w = Q8Matrix::quantize(&random(cols, 1), 1, cols);
        let x = Q8Matrix::quantize(&random(m * cols, 2), m, cols);
        let (mut want, mut got) = (vec![0f32; 2 * m], vec![0f32; 2 * m]);
        row_scalar(&w.qs, &w.scales, &x.qs, &x.scales, &mut want, 2);
        row_fn()(&w.qs, &w.scales, &x.qs, &x.scales, &mut got, 2);
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{a} vs {b}");
        }
    }

    #[test]
    fn matmul_equals_candles_q8_0_and_is_close_to_f32() {
        use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
        use candle_core::{Device, Module, Tensor};
        let (m, k, n) = (5, 256, 70);
        let w = random(n * k, 3);
        let x = random(m * k, 4);
        let ours = Q8Matrix::quantize(&w, n, k).matmul(&x, m);
        let wt = Tensor::from_vec(w.clone(), (n, k), &Device::Cpu).unwrap();
        let xt = Tensor::from_vec(x.clone(), (m, k), &Device::Cpu).unwrap();
        let q = QMatMul::from_qtensor(QTensor::quantize(&wt, GgmlDType::Q8_0).unwrap()).unwrap();
        let theirs: Vec<f32> = q
            .forward(&xt)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let exact: Vec<f32> = xt
            .matmul(&wt.t().unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let scale = exact.iter().map(|v| v.abs()).sum::<f32>() / exact.len() as f32;
        for ((a, b), e) in ours.iter().zip(&theirs).zip(&exact) {
            // Same blocks, same activation quantization: equal up to summation order.
            assert!((a - b).abs() < 1e-4 * (1.0 + b.abs()), "{a} vs candle {b}");
            assert!(
                (a - e).abs() < 0.03 * scale,
                "{a} vs f32 {e} (scale {scale})"
            );
        }
    }

    #[test]
    fn packed_products_equal_the_plain_product() {
        // Rows that do not fill the last panel, every remainder of m by 3, enough panels
        // to be shared out over threads.
        for &(m, k, n) in &[
            (1, 64, 6),
            (2, 512, 256),
            (3, 16, 1),
            (8, 256, 70),
            (33, 40, 130),
        ] {
            let w = random(n * k, 7);
            let x = random(m * k, 8);
            let mut want = vec![0f32; m * n];
            matmul_f32_scalar(&w, n, k, &x, m, &mut want);
            let packed = PackedF32::pack(&w, n, k).unwrap();
            assert_eq!(packed.unpack(), w);
            for got in [packed.matmul_serial(&x, m), packed.matmul(&x, m)] {
                for (a, b) in got.iter().zip(&want) {
                    assert!(
                        (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                        "{a} vs {b} ({m}x{k}x{n})"
                    );
                }
            }
        }
        assert!(PackedF32::pack(&[0.0; 12], 2, 6).is_none());
    }

    #[test]
    fn rounding_is_roundf() {
        let mut values: Vec<f32> = random(4096, 11).iter().map(|v| v * 130.0).collect();
        values.extend([
            0.5,
            -0.5,
            1.5,
            -1.5,
            2.5,
            -2.5,
            0.49999997,
            -0.49999997,
            126.5,
            0.0,
            -0.0,
        ]);
        for v in values {
            assert_eq!(round_half_away(v), v.round(), "{v}");
        }
    }

    #[test]
    fn serial_q8_matmul_equals_the_parallel_one() {
        let (m, k, n) = (7, 128, 45);
        let w = Q8Matrix::quantize(&random(n * k, 9), n, k);
        let x = random(m * k, 10);
        assert_eq!(w.matmul_serial(&x, m), w.matmul(&x, m));
    }

    #[test]
    fn exp_sum_matches_libm() {
        let xs: Vec<f32> = random(157_187, 6).iter().map(|v| v * 30.0).collect();
        let max = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let want: f64 = xs.iter().map(|&x| ((x - max) as f64).exp()).sum();
        let got = exp_sum(&xs, max) as f64;
        // f32 sums of 157k terms: rounding of the sum itself dominates (~sqrt(n) ulp).
        assert!((got - want).abs() / want < 2e-5, "{got} vs {want}");
        for x in [0.0f32, -1e-3, -0.5, -1.0, -10.0, -50.0, -86.0] {
            let rel = (exp_nonpositive(x) as f64 - (x as f64).exp()).abs() / (x as f64).exp();
            assert!(rel < 3e-7, "exp({x}): relative error {rel}");
        }
        assert_eq!(exp_nonpositive(-200.0), exp_nonpositive(-87.0));
        assert!(exp_nonpositive(-200.0) < 1e-37);
    }

    #[test]
    fn ggml_blocks_read_back_exactly() {
        use candle_core::quantized::{GgmlDType, QTensor};
        use candle_core::{Device, Tensor};
        let (n, k) = (4, 64);
        let w = random(n * k, 5);
        let wt = Tensor::from_vec(w.clone(), (n, k), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&wt, GgmlDType::Q8_0).unwrap();
        let from_ggml = Q8Matrix::from_ggml(&q.data().unwrap(), n, k).unwrap();
        let ours = Q8Matrix::quantize(&w, n, k);
        assert_eq!(from_ggml.qs, ours.qs);
        assert_eq!(from_ggml.scales, ours.scales);
        let back = q
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(from_ggml.dequantize(), back);
        assert!(Q8Matrix::from_ggml(&[0u8; 10], n, k).is_none());
    }
}
