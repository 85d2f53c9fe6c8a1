//! f32 matrix products of activations (attention's scores and weighted values, the
//! router) through the `gemm` crate, the one candle's CPU matmul calls, with the same
//! arguments, so the results are candle's bit for bit. What differs is the thread count:
//! candle asks for it on every product (it reads `RAYON_NUM_THREADS`, or else counts the
//! cores in /proc/cpuinfo each time, a system call per product); here it is the size of
//! the rayon pool the product runs on.

use candle_core::{CpuStorage, Layout, Tensor};

type Result<T> = candle_core::Result<T>;

/// `lhs @ rhs` for f32 CPU tensors of rank 2 or 3 (`[b, m, k] @ [b, k, n]`), any strides
/// candle's matmul accepts along the last two dimensions; other inputs go to candle.
pub fn matmul(lhs: &Tensor, rhs: &Tensor) -> Result<Tensor> {
    let product = {
        let (ls, ll) = lhs.storage_and_layout();
        let (rs, rl) = rhs.storage_and_layout();
        match (&*ls, &*rs) {
            (
                candle_core::Storage::Cpu(CpuStorage::F32(l)),
                candle_core::Storage::Cpu(CpuStorage::F32(r)),
            ) => matmul_f32((l, ll), (r, rl)),
            _ => None,
        }
    };
    match product {
        Some((out, shape)) => Tensor::from_vec(out, shape, lhs.device()),
        None => lhs.matmul(rhs),
    }
}

/// The product of two f32 buffers with their layouts (as a custom op receives them):
/// the values and shape, or `None` where [`matmul`] would hand the product to candle.
pub fn matmul_f32(
    (l, ll): (&[f32], &Layout),
    (r, rl): (&[f32], &Layout),
) -> Option<(Vec<f32>, Vec<usize>)> {
    let (dims, rdims) = (ll.dims(), rl.dims());
    let rank = dims.len();
    if rank != rdims.len() || !(2..=3).contains(&rank) {
        return None;
    }
    let (m, k, n) = (dims[rank - 2], dims[rank - 1], rdims[rank - 1]);
    let batch = if rank == 3 { dims[0] } else { 1 };
    if rdims[rank - 2] != k || (rank == 3 && rdims[0] != batch) {
        return None;
    }
    let skips = batch_skips(ll, rl, m, k, n)?;
    // gemm reads through raw pointers: every element the layouts reach must lie in the
    // buffers.
    if !within(ll, l.len(), batch, skips.0) || !within(rl, r.len(), batch, skips.1) {
        return None;
    }
    let out = product(
        &l[ll.start_offset()..],
        ll.stride(),
        &r[rl.start_offset()..],
        rl.stride(),
        (batch, m, n, k),
        skips,
    );
    let shape = if rank == 3 {
        vec![batch, m, n]
    } else {
        vec![m, n]
    };
    Some((out, shape))
}

/// How far apart consecutive batch matrices lie, as candle computes it; `None` for
/// layouts it refuses.
fn batch_skips(ll: &Layout, rl: &Layout, m: usize, k: usize, n: usize) -> Option<(usize, usize)> {
    let skip = |l: &Layout, whole: usize| match l.stride() {
        [_, _] => Some(whole),
        [stride, _, _] => Some(*stride),
        _ => None,
    };
    Some((skip(ll, m * k)?, skip(rl, n * k)?))
}

/// Whether every element `layout` reaches (its last two dimensions, `batch` matrices
/// `skip` apart) lies inside a buffer of `len` elements.
fn within(layout: &Layout, len: usize, batch: usize, skip: usize) -> bool {
    let (dims, stride) = (layout.dims(), layout.stride());
    if dims.contains(&0) {
        return true;
    }
    let rank = dims.len();
    let last: usize = (rank - 2..rank).map(|d| (dims[d] - 1) * stride[d]).sum();
    layout.start_offset() + last + (batch - 1) * skip < len
}

/// The product, batch by batch, as candle's CPU matmul calls `gemm`.
fn product(
    lhs: &[f32],
    lhs_stride: &[usize],
    rhs: &[f32],
    rhs_stride: &[usize],
    (batch, m, n, k): (usize, usize, usize, usize),
    (a_skip, b_skip): (usize, usize),
) -> Vec<f32> {
    let rank = lhs_stride.len();
    let (lhs_cs, lhs_rs) = (lhs_stride[rank - 1], lhs_stride[rank - 2]);
    let (rhs_cs, rhs_rs) = (rhs_stride[rank - 1], rhs_stride[rank - 2]);
    let threads = rayon::current_num_threads();
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // A batch-invariant rhs lets the batches of lhs stack into the rows of one product.
    let (batch, m) = if b_skip == 0 && a_skip == m * k {
        (1, batch * m)
    } else {
        (batch, m)
    };
    let mut dst = vec![0f32; batch * m * n];
    for step in 0..batch {
        let (lhs, rhs) = (&lhs[step * a_skip..], &rhs[step * b_skip..]);
        let dst = &mut dst[step * m * n..];
        // SAFETY: the slices cover every element the strides reach (the tensors'
        // layouts), and dst holds m * n elements of row stride n.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                dst.as_mut_ptr(),
                1,
                n as isize,
                false,
                lhs.as_ptr(),
                lhs_cs as isize,
                lhs_rs as isize,
                rhs.as_ptr(),
                rhs_cs as isize,
                rhs_rs as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            )
        }
    }
    dst
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn products_equal_candles_bit_for_bit() {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (4, 6, 16), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (4, 9, 16), &dev).unwrap();
        let w = Tensor::randn(0f32, 1.0, (5, 16), &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (7, 16), &dev).unwrap();
        let k_t = k.t().unwrap();
        let narrow = k.narrow(1, 2, 5).unwrap();
        for (a, b) in [
            (&q, &k_t),
            (&x, &w.t().unwrap()),
            (&q.narrow(1, 1, 3).unwrap(), &narrow.t().unwrap()),
        ] {
            let want: Vec<f32> = a
                .matmul(b)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let got = matmul(a, b).unwrap();
            assert_eq!(got.dims(), a.matmul(b).unwrap().dims());
            let got: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(got, want);
        }
    }
}
