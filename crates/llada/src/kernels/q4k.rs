//! q4k (ggml's Q4_K) matrix products on llada's thread pool, instead of candle's, whose
//! barrier pool spins while it waits: with busy processes beside it on two cores, a q4k
//! block forward of llada2-63m went from 14.4 to 175.7 ms and an AR step from 2.6 to
//! 68.6 ms. Activations are quantized to q8k blocks as ggml does (candle's
//! `from_float`); the AVX2 kernel unpacks a weight block once for four activation rows
//! and does per row exactly the arithmetic of candle's `vec_dot_q4k_q8k`, so each
//! output equals candle's dot product bit for bit (tested), at a quarter of the
//! unpacking.

use candle_core::quantized::k_quants::{BlockQ4K, BlockQ8K, GgmlType, QK_K};
use candle_core::quantized::{GgmlDType, QTensor};

/// A `[rows, cols]` matrix in q4k super-blocks of 256 values.
#[derive(Debug, Clone)]
pub struct Q4kMatrix {
    rows: usize,
    cols: usize,
    blocks: Vec<BlockQ4K>,
}

impl Q4kMatrix {
    /// The blocks of a 2-D q4k tensor (`None` for any other).
    pub fn from_qtensor(q: &QTensor) -> Option<Self> {
        let [rows, cols] = *q.shape().dims() else {
            return None;
        };
        if q.dtype() != GgmlDType::Q4K || !cols.is_multiple_of(QK_K) {
            return None;
        }
        let bytes = q.data().ok()?;
        let count = rows * cols / QK_K;
        if bytes.len() != count * std::mem::size_of::<BlockQ4K>() {
            return None;
        }
        let mut blocks = vec![BlockQ4K::zeros(); count];
        // SAFETY: BlockQ4K is repr(C) of f16s and bytes, for which every bit pattern is a
        // value, and the lengths were checked above.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                blocks.as_mut_ptr() as *mut u8,
                bytes.len(),
            );
        }
        Some(Self { rows, cols, blocks })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes of the blocks (144 per 256 values).
    pub fn storage_bytes(&self) -> usize {
        self.blocks.len() * std::mem::size_of::<BlockQ4K>()
    }

    /// Each row of `x` (`[m, cols]`) in q8k blocks, as ggml quantizes activations.
    fn quantize_activations(&self, x: &[f32], m: usize) -> Vec<Q8k> {
        assert_eq!(x.len(), m * self.cols, "matmul: x is not [m, cols]");
        quantize_q8k(x)
    }

    /// Weight rows `rows` times every activation row, into `part` (`[m, rows.len()]`).
    fn rows_into(&self, rows: std::ops::Range<usize>, xq: &[Q8k], part: &mut [f32]) {
        let per_row = self.cols / QK_K;
        let stride = rows.len();
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                for (jj, j) in rows.enumerate() {
                    let w = mirror_weights(&self.blocks[j * per_row..(j + 1) * per_row]);
                    // SAFETY: the features were just detected; xq holds whole rows.
                    unsafe { avx2::row(w, xq, &mut part[jj..], stride) };
                }
                return;
            }
        }
        let xq = candle_blocks(xq);
        for (jj, j) in rows.enumerate() {
            let w = &self.blocks[j * per_row..(j + 1) * per_row];
            for (i, x) in xq.chunks_exact(per_row).enumerate() {
                part[i * stride + jj] = BlockQ4K::vec_dot(self.cols, w, x);
            }
        }
    }

    /// `x @ self^T` for `x` row-major `[m, cols]`: returns `[m, rows]`, weight rows
    /// shared out over the thread pool.
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        let xq = self.quantize_activations(x, m);
        let chunk = (self.rows / (4 * rayon::current_num_threads())).clamp(8, 256);
        super::split_rows(self.rows, m, chunk, |rows, part| {
            self.rows_into(rows, &xq, part)
        })
    }

    /// [`Q4kMatrix::matmul`] in the calling thread.
    pub fn matmul_serial(&self, x: &[f32], m: usize) -> Vec<f32> {
        let xq = self.quantize_activations(x, m);
        let mut out = vec![0f32; m * self.rows];
        self.rows_into(0..self.rows, &xq, &mut out);
        out
    }
}

/// candle's q4k block, field for field (its fields are private to candle).
#[repr(C)]
struct Q4k {
    d: half::f16,
    dmin: half::f16,
    scales: [u8; 12],
    qs: [u8; QK_K / 2],
}

/// candle's q8k block (an activation row's 256 values), field for field.
#[derive(Clone)]
#[repr(C)]
struct Q8k {
    d: f32,
    qs: [i8; QK_K],
    bsums: [i16; QK_K / 16],
}

const _: () = assert!(std::mem::size_of::<Q4k>() == std::mem::size_of::<BlockQ4K>());
const _: () = assert!(std::mem::size_of::<Q8k>() == std::mem::size_of::<BlockQ8K>());

#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn mirror_weights(ws: &[BlockQ4K]) -> &[Q4k] {
    // SAFETY: both are repr(C) with the same fields in the same order (sizes checked
    // above), so they share layout and alignment.
    unsafe { std::slice::from_raw_parts(ws.as_ptr() as *const Q4k, ws.len()) }
}

fn candle_blocks(xs: &[Q8k]) -> &[BlockQ8K] {
    // SAFETY: as in `mirror_weights`.
    unsafe { std::slice::from_raw_parts(xs.as_ptr() as *const BlockQ8K, xs.len()) }
}

crate::avx2_when_present! {
    /// `x` (whole blocks of 256) quantized to q8k exactly as ggml's `quantize_row_q8_K`
    /// (and candle's `from_float`) does: scale -127 / (the first value of largest
    /// magnitude), rounding halves away from zero, sums of 16. Written so that the loops
    /// vectorize (a sixth of a q4k block forward went to candle's scalar version).
    fn quantize_q8k(x: &[f32]) -> Vec<Q8k> {
        x.chunks_exact(QK_K)
            .map(|xs| {
                let mut y = Q8k { d: 0.0, qs: [0; QK_K], bsums: [0; QK_K / 16] };
                let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
                if amax == 0.0 {
                    return y;
                }
                let max = xs.iter().copied().find(|v| v.abs() == amax).unwrap_or(amax);
                let iscale = -127f32 / max;
                let mut scaled = [0f32; QK_K];
                for (s, &v) in scaled.iter_mut().zip(xs) {
                    *s = super::round_half_away(iscale * v).clamp(-128.0, 127.0);
                }
                for (q, &s) in y.qs.iter_mut().zip(&scaled) {
                    *q = s as i8;
                }
                for (sum, qs) in y.bsums.iter_mut().zip(y.qs.chunks_exact(16)) {
                    *sum = qs.iter().map(|&q| q as i16).sum();
                }
                y.d = 1.0 / iscale;
                y
            })
            .collect()
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{Q4k, Q8k, QK_K};

    const KMASK1: u32 = 0x3f3f3f3f;
    const KMASK2: u32 = 0x0f0f0f0f;
    const KMASK3: u32 = 0x03030303;

    /// The 6-bit scales (low half) and mins (high half) of a block as 16 i16s.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn mins_and_scales(scales: &[u8; 12]) -> __m256i {
        let mut utmp = [0u32; 4];
        for (i, u) in utmp.iter_mut().take(3).enumerate() {
            *u = u32::from_le_bytes([
                scales[4 * i],
                scales[4 * i + 1],
                scales[4 * i + 2],
                scales[4 * i + 3],
            ]);
        }
        utmp[3] = ((utmp[2] >> 4) & KMASK2) | (((utmp[1] >> 6) & KMASK3) << 4);
        let uaux = utmp[1] & KMASK1;
        utmp[1] = (utmp[2] & KMASK2) | (((utmp[0] >> 6) & KMASK3) << 4);
        utmp[2] = uaux;
        utmp[0] &= KMASK1;
        _mm256_cvtepu8_epi16(_mm_set_epi32(
            utmp[3] as i32,
            utmp[2] as i32,
            utmp[1] as i32,
            utmp[0] as i32,
        ))
    }

    /// Byte shuffles that spread scale `i` (an i16) over a vector, for i in 0..8.
    const SCALE_SHUFFLE: [[u8; 32]; 8] = {
        let mut t = [[0u8; 32]; 8];
        let mut i = 0;
        while i < 8 {
            let mut b = 0;
            while b < 32 {
                t[i][b] = (2 * i + b % 2) as u8;
                b += 1;
            }
            i += 1;
        }
        t
    };

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn scale_shuffle(i: usize) -> __m256i {
        _mm256_loadu_si256(SCALE_SHUFFLE[i].as_ptr() as *const __m256i)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(x: __m256) -> f32 {
        let r = _mm_add_ps(_mm256_extractf128_ps(x, 1), _mm256_castps256_ps128(x));
        let r = _mm_add_ps(r, _mm_movehl_ps(r, r));
        _mm_cvtss_f32(_mm_add_ss(r, _mm_movehdup_ps(r)))
    }

    /// One weight row against activation rows `i..i + R`, into `out[(i + r) * stride]`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile<const R: usize>(
        w: &[Q4k],
        xq: &[Q8k],
        i: usize,
        out: &mut [f32],
        stride: usize,
    ) {
        let per_row = w.len();
        let m4 = _mm256_set1_epi8(0xF);
        let mut acc = [_mm256_setzero_ps(); R];
        let mut acc_m = [_mm_setzero_ps(); R];
        for (b, x) in w.iter().enumerate() {
            let (xd, xdmin) = (x.d.to_f32(), x.dmin.to_f32());
            let ms = mins_and_scales(&x.scales);
            let sc128 = _mm256_extracti128_si256(ms, 0);
            let scales = _mm256_insertf128_si256(_mm256_castsi128_si256(sc128), sc128, 1);
            let mins = _mm256_extracti128_si256(ms, 1);
            let mut sumi = [_mm256_setzero_si256(); R];
            for r in 0..R {
                let y = &xq[(i + r) * per_row + b];
                let q8sums = _mm256_loadu_si256(y.bsums.as_ptr() as *const __m256i);
                let q8s = _mm_hadd_epi16(
                    _mm256_extracti128_si256(q8sums, 0),
                    _mm256_extracti128_si256(q8sums, 1),
                );
                let prod = _mm_madd_epi16(mins, q8s);
                let dmin = -y.d * xdmin;
                acc_m[r] = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(prod), acc_m[r]);
            }
            for j in 0..QK_K / 64 {
                let scale_l = _mm256_shuffle_epi8(scales, scale_shuffle(2 * j));
                let scale_h = _mm256_shuffle_epi8(scales, scale_shuffle(2 * j + 1));
                let q4bits = _mm256_loadu_si256(x.qs.as_ptr().add(32 * j) as *const __m256i);
                let q4l = _mm256_and_si256(q4bits, m4);
                let q4h = _mm256_and_si256(_mm256_srli_epi16(q4bits, 4), m4);
                for (r, sumi) in sumi.iter_mut().enumerate() {
                    let y = &xq[(i + r) * per_row + b];
                    let q8 = y.qs.as_ptr().add(64 * j);
                    let q8l = _mm256_loadu_si256(q8 as *const __m256i);
                    let p16l = _mm256_madd_epi16(scale_l, _mm256_maddubs_epi16(q4l, q8l));
                    *sumi = _mm256_add_epi32(*sumi, p16l);
                    let q8h = _mm256_loadu_si256(q8.add(32) as *const __m256i);
                    let p16h = _mm256_madd_epi16(scale_h, _mm256_maddubs_epi16(q4h, q8h));
                    *sumi = _mm256_add_epi32(*sumi, p16h);
                }
            }
            for (r, sumi) in sumi.iter().enumerate() {
                let y = &xq[(i + r) * per_row + b];
                let vd = _mm256_set1_ps(y.d * xd);
                acc[r] = _mm256_fmadd_ps(vd, _mm256_cvtepi32_ps(*sumi), acc[r]);
            }
        }
        for r in 0..R {
            let m = _mm_add_ps(acc_m[r], _mm_movehl_ps(acc_m[r], acc_m[r]));
            let m = _mm_add_ss(m, _mm_movehdup_ps(m));
            out[(i + r) * stride] = hsum(acc[r]) + _mm_cvtss_f32(m);
        }
    }

    /// # Safety
    /// The CPU must have AVX2 and FMA; `xq` holds whole rows of `w.len()` blocks and
    /// `out` a slot every `stride` for each of them.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn row(w: &[Q4k], xq: &[Q8k], out: &mut [f32], stride: usize) {
        let m = xq.len() / w.len().max(1);
        let mut i = 0;
        while i + 4 <= m {
            tile::<4>(w, xq, i, out, stride);
            i += 4;
        }
        match m - i {
            3 => tile::<3>(w, xq, i, out, stride),
            2 => tile::<2>(w, xq, i, out, stride),
            1 => tile::<1>(w, xq, i, out, stride),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QMatMul;
    use candle_core::{Device, Module, Tensor};

    #[test]
    fn products_equal_candles_q4k() {
        let dev = Device::Cpu;
        let (m, k, n) = (5, 512, 70);
        let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q4K).unwrap();
        let ours = Q4kMatrix::from_qtensor(&q).unwrap();
        assert_eq!(ours.storage_bytes(), q.storage_size_in_bytes());
        let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let theirs: Vec<f32> = QMatMul::from_qtensor(q)
            .unwrap()
            .forward(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        // Activations quantized as candle does, and each output candle's dot product of
        // the pair, bit for bit.
        let per_row = k / QK_K;
        let xq = ours.quantize_activations(&xs, m);
        let mut theirs_q = vec![BlockQ8K::zeros(); m * per_row];
        BlockQ8K::from_float(&xs, &mut theirs_q);
        assert_eq!(candle_blocks(&xq), theirs_q.as_slice());
        let xq = candle_blocks(&xq);
        let mut pairs = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                pairs[i * n + j] = BlockQ4K::vec_dot(
                    k,
                    &ours.blocks[j * per_row..(j + 1) * per_row],
                    &xq[i * per_row..(i + 1) * per_row],
                );
            }
        }
        assert_eq!(ours.matmul(&xs, m), pairs);
        assert_eq!(ours.matmul_serial(&xs, m), pairs);
        for got in [ours.matmul(&xs, m), ours.matmul_serial(&xs, m)] {
            for (a, b) in got.iter().zip(&theirs) {
                // The same blocks and activation quantization; candle may sum in another
                // order (its repacked kernels).
                assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{a} vs candle {b}");
            }
        }
        assert!(
            Q4kMatrix::from_qtensor(&QTensor::quantize(&w, GgmlDType::Q8_0).unwrap()).is_none()
        );
    }
}
