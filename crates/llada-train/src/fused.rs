//! Fused differentiable ops for training (f32, CPU): softmax under an additive mask,
//! RMSNorm, SwiGLU and cross-entropy, each one pass forward and one backward.
//!
//! candle composes them from elementwise ops (softmax: max, sub, exp, sum, div, and a
//! backward of about three ops per op), each a pass over memory with a fresh allocation;
//! attention's `[heads, n, n]` scores made them the larger part of a training step
//! (docs/training-speed.md has the profile). The softmax's forward is the engine's
//! ([`SoftmaxOp`], [`MaskedSoftmaxOp`], which inference runs too). Each op here is tested
//! against the plain candle composition, values and gradients.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use llada::avx2_when_present;
use llada::kernels::{
    contiguous_f32, exp_nonpositive, exp_sum, last_dim, matmul_f32, max8, sum8, MaskedSoftmaxOp,
    SoftmaxOp,
};

type Result<T> = candle_core::Result<T>;

/// `lhs @ rhs` (rank 2 or 3, f32) with gradients, on llada's product
/// ([`llada::kernels::matmul`]: candle's `gemm` call on llada's thread pool, so candle's
/// results bit for bit). The backward is candle's: `g @ rhs^T` and `lhs^T @ g`.
pub fn matmul(lhs: &Tensor, rhs: &Tensor) -> Result<Tensor> {
    lhs.apply_op2(rhs, MatMul)
}

struct MatMul;

impl CustomOp2 for MatMul {
    fn name(&self) -> &'static str {
        "llada-matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(a), CpuStorage::F32(b)) = (s1, s2) else {
            return Err(candle_core::Error::Msg(format!(
                "{}: f32 tensors only",
                self.name()
            )));
        };
        let Some((out, shape)) = matmul_f32((a, l1), (b, l2)) else {
            return Err(candle_core::Error::Msg(format!(
                "{}: cannot multiply {:?} by {:?}",
                self.name(),
                l1.dims(),
                l2.dims()
            )));
        };
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }

    fn bwd(
        &self,
        lhs: &Tensor,
        rhs: &Tensor,
        _out: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let lhs_grad = llada::kernels::matmul(g, &rhs.t()?)?;
        let rhs_grad = llada::kernels::matmul(&lhs.t()?, g)?;
        Ok((Some(lhs_grad), Some(rhs_grad)))
    }
}

/// Softmax over the last dimension of `x + mask`, with a gradient for `x`; `mask`
/// (additive: 0 or -inf; no gradient) holds the last two dimensions of `x`, and repeats
/// over the leading ones (`[rows, keys]` for scores `[heads, rows, keys]`).
pub fn masked_softmax(x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let x = x.contiguous()?;
    match mask {
        Some(mask) => x.apply_op2(&mask.contiguous()?, MaskedSoftmax),
        None => x.apply_op1(Softmax),
    }
}

avx2_when_present! {
    fn softmax_backward_rows(y: &[f32], g: &[f32], d: usize) -> Vec<f32> {
        let mut out = vec![0f32; y.len()];
        for ((y, g), o) in y
            .chunks_exact(d)
            .zip(g.chunks_exact(d))
            .zip(out.chunks_exact_mut(d))
        {
            let dot = sum8(d, |i| y[i] * g[i]);
            for ((o, &y), &g) in o.iter_mut().zip(y).zip(g) {
                *o = y * (g - dot);
            }
        }
        out
    }
}

/// The gradient of softmax: `y * (g - Σ g y)` per row.
fn softmax_backward(y: &Tensor, g: &Tensor) -> Result<Tensor> {
    y.apply_op2_no_bwd(&g.contiguous()?, &SoftmaxBackward)
}

/// The engine's softmax op with a backward.
struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "llada-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        SoftmaxOp.cpu_fwd(s, l)
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(softmax_backward(y, g)?))
    }
}

/// The engine's masked softmax op with a backward (none for the mask).
struct MaskedSoftmax;

impl CustomOp2 for MaskedSoftmax {
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
        MaskedSoftmaxOp.cpu_fwd(s1, l1, s2, l2)
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _mask: &Tensor,
        y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(softmax_backward(y, g)?), None))
    }
}

struct SoftmaxBackward;

impl CustomOp2 for SoftmaxBackward {
    fn name(&self) -> &'static str {
        "llada-softmax-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = contiguous_f32(s1, l1, self.name())?;
        let g = contiguous_f32(s2, l2, self.name())?;
        let d = last_dim(l1, self.name())?;
        Ok((
            CpuStorage::F32(softmax_backward_rows(y, g, d)),
            l1.shape().clone(),
        ))
    }
}

/// Cross-entropy of each row of `logits` (`[rows, vocab]`) against `targets` (one id per
/// row): `-log softmax(row)[target]`, a `[rows]` tensor. One pass forward and one
/// backward (`g (softmax - onehot)`), where candle's `log_softmax` and `gather` take six
/// ops and the backward of each.
pub fn cross_entropy(logits: &Tensor, targets: &[u32]) -> Result<Tensor> {
    let (rows, vocab) = logits.dims2()?;
    if targets.len() != rows || targets.iter().any(|&t| t as usize >= vocab) {
        return Err(candle_core::Error::Msg(format!(
            "cross-entropy: {} targets for {rows} rows of {vocab} logits (one in range per row)",
            targets.len()
        )));
    }
    logits.contiguous()?.apply_op1(CrossEntropy {
        targets: std::sync::Arc::new(targets.to_vec()),
    })
}

struct CrossEntropy {
    targets: std::sync::Arc<Vec<u32>>,
}

/// The row's maximum and log Σ exp(x - max).
#[inline(always)]
fn log_sum_exp(x: &[f32]) -> (f32, f32) {
    let max = max8(x);
    (max, exp_sum(x, max).ln())
}

avx2_when_present! {
    fn cross_entropy_rows(x: &[f32], targets: &[u32], vocab: usize) -> Vec<f32> {
        x.chunks_exact(vocab)
            .zip(targets)
            .map(|(row, &t)| {
                let (max, lse) = log_sum_exp(row);
                max + lse - row[t as usize]
            })
            .collect()
    }
}

avx2_when_present! {
    fn cross_entropy_backward_rows(x: &[f32], g: &[f32], targets: &[u32], vocab: usize) -> Vec<f32> {
        let mut out = vec![0f32; x.len()];
        for (((row, o), &g), &t) in x
            .chunks_exact(vocab)
            .zip(out.chunks_exact_mut(vocab))
            .zip(g)
            .zip(targets)
        {
            let (max, lse) = log_sum_exp(row);
            let shift = max + lse;
            for (o, &v) in o.iter_mut().zip(row) {
                *o = g * exp_nonpositive(v - shift);
            }
            o[t as usize] -= g;
        }
        out
    }
}

impl CustomOp1 for CrossEntropy {
    fn name(&self) -> &'static str {
        "llada-cross-entropy"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name())?;
        let vocab = last_dim(l, self.name())?;
        let rows = self.targets.len();
        Ok((
            CpuStorage::F32(cross_entropy_rows(x, &self.targets, vocab)),
            Shape::from(rows),
        ))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(
            &g.contiguous()?,
            &CrossEntropyBackward(self.targets.clone()),
        )?))
    }
}

struct CrossEntropyBackward(std::sync::Arc<Vec<u32>>);

impl CustomOp2 for CrossEntropyBackward {
    fn name(&self) -> &'static str {
        "llada-cross-entropy-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, self.name())?;
        let g = contiguous_f32(s2, l2, self.name())?;
        let vocab = last_dim(l1, self.name())?;
        Ok((
            CpuStorage::F32(cross_entropy_backward_rows(x, g, &self.0, vocab)),
            l1.shape().clone(),
        ))
    }
}

/// RMSNorm over the last dimension: `x / sqrt(mean(x²) + eps) * weight`, with gradients
/// for `x` and `weight`.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2(&weight.contiguous()?, RmsNorm { eps: eps as f32 })
}

#[derive(Clone, Copy)]
struct RmsNorm {
    eps: f32,
}

impl RmsNorm {
    /// 1 / sqrt(mean(x²) + eps) of one row.
    #[inline(always)]
    fn inv_rms(&self, x: &[f32]) -> f32 {
        let ms = sum8(x.len(), |i| x[i] * x[i]) / x.len() as f32;
        1.0 / (ms + self.eps).sqrt()
    }
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "llada-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, self.name())?;
        let w = contiguous_f32(s2, l2, self.name())?;
        let d = last_dim(l1, self.name())?;
        if w.len() != d {
            return Err(candle_core::Error::Msg(format!(
                "{}: weight of {} for rows of {d}",
                self.name(),
                w.len()
            )));
        }
        let mut out = vec![0f32; x.len()];
        for (x, o) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
            let r = self.inv_rms(x);
            for ((o, &x), &w) in o.iter_mut().zip(x).zip(w) {
                *o = x * r * w;
            }
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?;
        let dx = x.apply_op3_no_bwd(w, &g, &RmsNormBackward(*self))?;
        let dw = x.apply_op2_no_bwd(&g, &RmsNormWeightGrad(*self))?;
        Ok((Some(dx), Some(dw)))
    }
}

/// dx = r (g w) - x r³ / d Σ (g w x), per row (r = 1 / rms).
struct RmsNormBackward(RmsNorm);

impl CustomOp3 for RmsNormBackward {
    fn name(&self) -> &'static str {
        "llada-rms-norm-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, self.name())?;
        let w = contiguous_f32(s2, l2, self.name())?;
        let g = contiguous_f32(s3, l3, self.name())?;
        let d = last_dim(l1, self.name())?;
        let mut out = vec![0f32; x.len()];
        for ((x, g), o) in x
            .chunks_exact(d)
            .zip(g.chunks_exact(d))
            .zip(out.chunks_exact_mut(d))
        {
            let r = self.0.inv_rms(x);
            let dot = sum8(d, |i| x[i] * g[i] * w[i]);
            let c = r * r * r * dot / d as f32;
            for (((o, &x), &g), &w) in o.iter_mut().zip(x).zip(g).zip(w) {
                *o = r * g * w - x * c;
            }
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// dw = Σ over rows of g x r.
struct RmsNormWeightGrad(RmsNorm);

impl CustomOp2 for RmsNormWeightGrad {
    fn name(&self) -> &'static str {
        "llada-rms-norm-weight-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, self.name())?;
        let g = contiguous_f32(s2, l2, self.name())?;
        let d = last_dim(l1, self.name())?;
        let mut out = vec![0f32; d];
        for (x, g) in x.chunks_exact(d).zip(g.chunks_exact(d)) {
            let r = self.0.inv_rms(x);
            for ((o, &x), &g) in out.iter_mut().zip(x).zip(g) {
                *o += g * x * r;
            }
        }
        Ok((CpuStorage::F32(out), Shape::from(d)))
    }
}

/// SwiGLU's product `silu(gate) * up` (shapes equal), with gradients for both.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)
}

/// The logistic function, through exp of a non-positive number only.
#[inline(always)]
fn sigmoid(a: f32) -> f32 {
    let e = exp_nonpositive(-a.abs());
    let s = 1.0 / (1.0 + e);
    if a >= 0.0 {
        s
    } else {
        e * s
    }
}

avx2_when_present! {
    fn swiglu_rows(a: &[f32], u: &[f32]) -> Vec<f32> {
        a.iter().zip(u).map(|(&a, &u)| a * sigmoid(a) * u).collect()
    }
}

avx2_when_present! {
    fn swiglu_backward_rows(a: &[f32], u: &[f32], g: &[f32]) -> Vec<f32> {
        let n = a.len();
        let mut out = vec![0f32; 2 * n];
        let (da, du) = out.split_at_mut(n);
        for ((((da, du), &a), &u), &g) in da.iter_mut().zip(du).zip(a).zip(u).zip(g) {
            let s = sigmoid(a);
            *da = g * u * s * (1.0 + a * (1.0 - s));
            *du = g * a * s;
        }
        out
    }
}

struct SwiGlu;

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "llada-swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let a = contiguous_f32(s1, l1, self.name())?;
        let u = contiguous_f32(s2, l2, self.name())?;
        if l1.dims() != l2.dims() {
            return Err(candle_core::Error::Msg(format!(
                "{}: gate {:?} and up {:?} differ",
                self.name(),
                l1.dims(),
                l2.dims()
            )));
        }
        Ok((CpuStorage::F32(swiglu_rows(a, u)), l1.shape().clone()))
    }

    fn bwd(
        &self,
        a: &Tensor,
        u: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // Both gradients come from one pass, stacked: [2, ...] then split.
        let both = a.apply_op3_no_bwd(u, &g.contiguous()?, &SwiGluBackward)?;
        Ok((Some(both.get(0)?), Some(both.get(1)?)))
    }
}

/// d gate = g u s (1 + a (1 - s)), d up = g a s (s = sigmoid(a)), stacked.
struct SwiGluBackward;

impl CustomOp3 for SwiGluBackward {
    fn name(&self) -> &'static str {
        "llada-swiglu-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let a = contiguous_f32(s1, l1, self.name())?;
        let u = contiguous_f32(s2, l2, self.name())?;
        let g = contiguous_f32(s3, l3, self.name())?;
        let mut dims = vec![2];
        dims.extend_from_slice(l1.dims());
        Ok((
            CpuStorage::F32(swiglu_backward_rows(a, u, g)),
            Shape::from(dims),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    fn random(shape: &[usize], seed: u64) -> Tensor {
        let n = shape.iter().product();
        let v = llada::synthetic::gaussian(n, 1.5, seed);
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// Runs `f` (fused) and `plain` on the same inputs, a random weighted sum of the
    /// output as the loss: outputs and every input's gradient agree.
    fn check(
        inputs: &[Tensor],
        fused: impl Fn(&[Tensor]) -> Result<Tensor>,
        plain: impl Fn(&[Tensor]) -> Result<Tensor>,
        tol: f32,
    ) {
        let run = |f: &dyn Fn(&[Tensor]) -> Result<Tensor>| {
            let vars: Vec<Var> = inputs
                .iter()
                .map(|t| Var::from_tensor(t).unwrap())
                .collect();
            let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
            let y = f(&ts).unwrap();
            let w = random(y.dims(), 99);
            let grads = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let g: Vec<Tensor> = vars
                .iter()
                .map(|v| grads.get(v).expect("a gradient").clone())
                .collect();
            (y, g)
        };
        let (y1, g1) = run(&fused);
        let (y2, g2) = run(&plain);
        assert_eq!(y1.dims(), y2.dims());
        let d = max_diff(&y1, &y2);
        assert!(d <= tol, "outputs differ by {d}");
        for (i, (a, b)) in g1.iter().zip(&g2).enumerate() {
            assert_eq!(a.dims(), b.dims());
            let d = max_diff(a, b);
            assert!(d <= tol, "gradient of input {i} differs by {d}");
        }
    }

    fn plain_softmax(x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::softmax(x, D::Minus1)
    }

    #[test]
    fn masked_softmax_equals_candles() {
        // Block-causal-like mask over 6 keys, 2 query heads stacked (12 rows), 3 groups.
        let mut m = vec![0f32; 12 * 6];
        for r in 0..12 {
            for k in 0..6 {
                if k > r % 6 {
                    m[r * 6 + k] = f32::NEG_INFINITY;
                }
            }
        }
        let mask = Tensor::from_vec(m, (12, 6), &Device::Cpu).unwrap();
        let x = random(&[3, 12, 6], 1);
        check(
            std::slice::from_ref(&x),
            |t| masked_softmax(&t[0], Some(&mask)),
            |t| plain_softmax(&t[0].broadcast_add(&mask)?),
            1e-5,
        );
        check(
            &[random(&[5, 37], 2)],
            |t| masked_softmax(&t[0], None),
            |t| plain_softmax(&t[0]),
            1e-5,
        );
    }

    #[test]
    fn matmul_equals_candles_values_and_gradients() {
        check(
            &[random(&[3, 5, 8], 11), random(&[3, 7, 8], 12)],
            |t| matmul(&t[0], &t[1].t()?),
            |t| t[0].matmul(&t[1].t()?),
            0.0,
        );
        check(
            &[random(&[6, 8], 13), random(&[4, 8], 14)],
            |t| matmul(&t[0], &t[1].t()?),
            |t| t[0].matmul(&t[1].t()?),
            0.0,
        );
    }

    #[test]
    fn cross_entropy_equals_log_softmax_and_gather() {
        let targets = [3u32, 0, 40, 17, 17];
        let index = Tensor::new(&targets, &Device::Cpu).unwrap();
        check(
            &[random(&[5, 41], 9)],
            |t| cross_entropy(&t[0], &targets),
            |t| {
                candle_nn::ops::log_softmax(&t[0], D::Minus1)?
                    .gather(&index.unsqueeze(1)?, 1)?
                    .squeeze(1)?
                    .neg()
            },
            1e-5,
        );
        let x = random(&[2, 41], 10);
        assert!(cross_entropy(&x, &[1]).is_err());
        assert!(cross_entropy(&x, &[1, 41]).is_err());
    }

    #[test]
    fn rms_norm_equals_the_plain_ops() {
        let eps = 1e-6;
        check(
            &[random(&[7, 3, 32], 4), random(&[32], 5)],
            |t| rms_norm(&t[0], &t[1], eps),
            |t| {
                let ms = t[0].sqr()?.mean_keepdim(D::Minus1)?;
                t[0].broadcast_div(&(ms + eps)?.sqrt()?)?
                    .broadcast_mul(&t[1])
            },
            1e-4,
        );
    }

    #[test]
    fn swiglu_equals_candles_silu_times_up() {
        check(
            &[random(&[9, 40], 6), random(&[9, 40], 7)],
            |t| swiglu(&t[0], &t[1]),
            |t| candle_nn::ops::silu(&t[0])? * &t[1],
            1e-5,
        );
    }
}
