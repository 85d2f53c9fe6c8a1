//! Softmax under an additive attention mask, one pass per row with a vectorized exp
//! (candle's softmax adds the mask in a pass of its own, then calls libm's `expf` per
//! score), and the helpers CPU custom ops share (the trainer's ops with gradients, in
//! `llada-train`, use them too).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};

type Result<T> = candle_core::Result<T>;

/// The f32 data of a contiguous CPU storage, as a custom op's `cpu_fwd` receives it.
pub fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        return Err(candle_core::Error::Msg(format!("{op}: f32 tensors only")));
    };
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&v[start..end]),
        None => Err(candle_core::Error::Msg(format!(
            "{op}: contiguous tensors only"
        ))),
    }
}

/// The length of a layout's last dimension (rows are along it); an error when empty.
pub fn last_dim(l: &Layout, op: &str) -> Result<usize> {
    match l.dims().last() {
        Some(&d) if d > 0 => Ok(d),
        _ => Err(candle_core::Error::Msg(format!(
            "{op}: needs a non-empty last dimension"
        ))),
    }
}

/// Defines `fn $name` running `$body` compiled for AVX2 + FMA where the CPU has them
/// (the loops vectorize eight wide and `exp_nonpositive`'s rounding is one instruction),
/// plain otherwise. For row kernels of CPU ops, here and in other crates.
#[macro_export]
macro_rules! avx2_when_present {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) -> $ret {
            #[inline(always)]
            fn imp($($arg: $ty),*) -> $ret $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2($($arg: $ty),*) -> $ret {
                imp($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                // SAFETY: the features were just detected.
                return unsafe { avx2($($arg),*) };
            }
            imp($($arg),*)
        }
    };
}

/// Softmax over the last dimension of `x + mask` (no gradient); `mask` (additive: 0 or
/// -inf) holds the last two dimensions of `x`, and repeats over the leading ones
/// (`[rows, keys]` for scores `[heads, rows, keys]`).
pub fn masked_softmax(x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let x = x.contiguous()?;
    match mask {
        Some(mask) => x.apply_op2_no_bwd(&mask.contiguous()?, &MaskedSoftmaxOp),
        None => x.apply_op1_no_bwd(&SoftmaxOp),
    }
}

/// Σ f(i) over `0..n` in eight interleaved partial sums, so that the loop vectorizes (a
/// single running sum is a chain of dependent adds).
#[inline(always)]
pub fn sum8(n: usize, f: impl Fn(usize) -> f32) -> f32 {
    let mut acc = [0f32; 8];
    let full = n / 8 * 8;
    for i in (0..full).step_by(8) {
        for (j, a) in acc.iter_mut().enumerate() {
            *a += f(i + j);
        }
    }
    let tail: f32 = (full..n).map(&f).sum();
    acc.iter().sum::<f32>() + tail
}

/// The largest of `xs` (-inf when empty), eight lanes at a time.
#[inline(always)]
pub fn max8(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let mut chunks = xs.chunks_exact(8);
    for c in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = if x > *a { x } else { *a };
        }
    }
    let tail = chunks
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    acc.iter().copied().fold(tail, f32::max)
}

/// softmax(x + mask) of one row into `out`. Entries more than 87 below the row's
/// maximum weigh e^-87 or less: they are set to 0, as -inf ones are.
#[inline(always)]
fn softmax_row(x: &[f32], mask: Option<&[f32]>, out: &mut [f32]) {
    match mask {
        Some(m) => {
            for ((o, &a), &b) in out.iter_mut().zip(x).zip(m) {
                *o = a + b;
            }
        }
        None => out.copy_from_slice(x),
    }
    let max = max8(out);
    for o in out.iter_mut() {
        let d = *o - max;
        let e = super::exp_nonpositive(d);
        *o = if d < -87.0 { 0.0 } else { e };
    }
    let inv = 1.0 / sum8(out.len(), |i| out[i]);
    for o in out.iter_mut() {
        *o *= inv;
    }
}

avx2_when_present! {
    /// softmax(row + mask row) of every row of `x` (rows of `d`); the mask's rows repeat.
    fn softmax_rows(x: &[f32], mask: Option<&[f32]>, d: usize) -> Vec<f32> {
        let mut out = vec![0f32; x.len()];
        let mask_rows = mask.map_or(1, |m| m.len() / d);
        for (r, (row, o)) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)).enumerate() {
            let m = mask.map(|m| &m[(r % mask_rows) * d..(r % mask_rows + 1) * d]);
            softmax_row(row, m, o);
        }
        out
    }
}

/// Checks that `mask` (layout `lm`) repeats over scores of layout `lx`.
fn check_mask(lx: &Layout, lm: &Layout, mask: &[f32], x: &[f32], op: &str) -> Result<()> {
    if last_dim(lm, op)? != last_dim(lx, op)?
        || mask.is_empty()
        || !x.len().is_multiple_of(mask.len())
    {
        return Err(candle_core::Error::Msg(format!(
            "{op}: mask {:?} does not repeat over scores {:?}",
            lm.dims(),
            lx.dims()
        )));
    }
    Ok(())
}

/// Softmax over the last dimension as a candle op without a backward (a training op
/// adds one around its forward).
pub struct SoftmaxOp;

impl CustomOp1 for SoftmaxOp {
    fn name(&self) -> &'static str {
        "llada-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name())?;
        let d = last_dim(l, self.name())?;
        Ok((CpuStorage::F32(softmax_rows(x, None, d)), l.shape().clone()))
    }
}

/// Softmax of scores plus a repeating additive mask (the second operand) as a candle op
/// without a backward.
pub struct MaskedSoftmaxOp;

impl CustomOp2 for MaskedSoftmaxOp {
    fn name(&self) -> &'static str {
        "llada-masked-softmax"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, self.name())?;
        let mask = contiguous_f32(s2, l2, self.name())?;
        check_mask(l1, l2, mask, x, self.name())?;
        let d = last_dim(l1, self.name())?;
        Ok((
            CpuStorage::F32(softmax_rows(x, Some(mask), d)),
            l1.shape().clone(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, D};

    /// Largest |a - b| between llada's softmax and candle's on `x` (+ `mask`).
    fn gap(x: &Tensor, mask: Option<&Tensor>) -> f32 {
        let masked = match mask {
            Some(m) => x.broadcast_add(m).unwrap(),
            None => x.clone(),
        };
        let plain = candle_nn::ops::softmax(&masked, D::Minus1).unwrap();
        let ours = masked_softmax(x, mask).unwrap();
        (ours - plain)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    #[test]
    fn masked_softmax_equals_candles() {
        // A block-causal-like mask over 6 keys for 2 query heads stacked (12 rows),
        // repeated over 3 groups of scores.
        let rows: Vec<f32> = (0..12 * 6)
            .map(|i| {
                if i % 6 > (i / 6) % 6 {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
            .collect();
        let mask = Tensor::from_vec(rows, (12, 6), &Device::Cpu).unwrap();
        let scores = Tensor::randn(0f32, 1.5, (3, 12, 6), &Device::Cpu).unwrap();
        assert!(gap(&scores, Some(&mask)) < 1e-5);
        let scores = Tensor::randn(0f32, 1.5, (5, 37), &Device::Cpu).unwrap();
        assert!(gap(&scores, None) < 1e-5);
        // A mask that does not repeat over the scores is refused.
        let wrong = Tensor::zeros((4, 6), candle_core::DType::F32, &Device::Cpu).unwrap();
        let scores = Tensor::randn(0f32, 1.5, (2, 5, 6), &Device::Cpu).unwrap();
        assert!(masked_softmax(&scores, Some(&wrong)).is_err());
    }
}
