//! The cores' own arithmetic ceilings: loops of independent multiply-adds on registers,
//! no memory traffic, that `llada bench --limits` times to say how far a product is from
//! what the cores can do at all.

/// Independent accumulators: more than an FMA's latency times the FMAs issued per cycle.
pub(crate) const FMA_CHAINS: usize = 12;

/// `iters` rounds of `FMA_CHAINS` 8-lane multiply-adds; `None` without AVX2 and FMA.
pub(crate) fn fma_loop(iters: usize) -> Option<f32> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the features were just detected.
            return Some(unsafe { fma_loop_avx2(iters) });
        }
    }
    let _ = iters;
    None
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_loop_avx2(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let a = _mm256_set1_ps(0.999_999);
    let b = _mm256_set1_ps(1e-7);
    let mut acc = [_mm256_setzero_ps(); FMA_CHAINS];
    for _ in 0..iters {
        for x in acc.iter_mut() {
            *x = _mm256_fmadd_ps(*x, a, b);
        }
    }
    let mut lanes = [0f32; 8];
    let mut sum = _mm256_setzero_ps();
    for x in acc {
        sum = _mm256_add_ps(sum, x);
    }
    _mm256_storeu_ps(lanes.as_mut_ptr(), sum);
    lanes.iter().sum()
}

/// `iters` rounds of `FMA_CHAINS` 16-lane bf16 pair dot products (32 MACs each); `None`
/// without AVX-512 BF16.
pub(crate) fn bf16_loop(iters: usize) -> Option<f32> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bf16") {
            // SAFETY: the features were just detected.
            return Some(unsafe { bf16_loop_avx512(iters) });
        }
    }
    let _ = iters;
    None
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn bf16_loop_avx512(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    // 1.0 in bf16 in both halves of every lane.
    let one: __m512bh = std::mem::transmute(_mm512_set1_epi32(0x3f80_3f80));
    let mut acc = [_mm512_setzero_ps(); FMA_CHAINS];
    for _ in 0..iters {
        for x in acc.iter_mut() {
            *x = _mm512_dpbf16_ps(*x, one, one);
        }
    }
    let mut sum = _mm512_setzero_ps();
    for x in acc {
        sum = _mm512_add_ps(sum, x);
    }
    _mm512_reduce_add_ps(sum)
}
