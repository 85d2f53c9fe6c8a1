//! Load-time quantization for CPU inference: attention, MLP/expert and lm_head matrices
//! become ggml-style blocks (candle's q8_0 / q4k) and run through quantized matmuls.
//! The router, norms, `expert_bias` and embeddings stay f32.

use std::str::FromStr;

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::kernels::{PackedF32, Q8Matrix, QuantizedRows};

/// The quantization a user can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quant {
    /// 8-bit blocks of 32 (8.5 bits per weight).
    Q8_0,
    /// 4-bit k-quant super-blocks of 256 (4.5 bits per weight).
    Q4k,
}

impl Quant {
    pub fn name(self) -> &'static str {
        match self {
            Quant::Q8_0 => "q8_0",
            Quant::Q4k => "q4k",
        }
    }

    /// The block type for a matrix whose rows have `row_len` elements. Rows that the
    /// type's block does not divide fall back to a finer type (q4k → q8_0), then to f32,
    /// as llama.cpp does for such tensors.
    pub fn dtype_for(self, row_len: usize) -> Option<GgmlDType> {
        let order: &[GgmlDType] = match self {
            Quant::Q8_0 => &[GgmlDType::Q8_0],
            Quant::Q4k => &[GgmlDType::Q4K, GgmlDType::Q8_0],
        };
        order
            .iter()
            .copied()
            .find(|d| row_len.is_multiple_of(d.block_size()))
    }
}

impl FromStr for Quant {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "q8_0" | "q8" => Ok(Quant::Q8_0),
            "q4k" | "q4_k" | "q4_k_m" => Ok(Quant::Q4k),
            other => Err(Error::InvalidRequest(format!(
                "unknown quantization {other:?} (use q8_0 or q4k)"
            ))),
        }
    }
}

/// A weight matrix `[out, in]` applied as `x @ W^T (+ b)`, dense or quantized.
#[derive(Debug, Clone)]
pub enum LinearWeight {
    Dense {
        weight: Tensor,
        bias: Option<Tensor>,
    },
    /// Other ggml blocks (q4k, ...): candle's kernels in row chunks on llada's pool.
    Quantized {
        weight: Arc<QuantizedRows>,
        bias: Option<Tensor>,
    },
    /// q8_0 blocks multiplied by [`crate::kernels`] (candle's q8_0 product is slow).
    Q8 {
        weight: Arc<Q8Matrix>,
        bias: Option<Tensor>,
    },
    /// An f32 matrix not being trained, in panels for [`crate::kernels`]' products.
    Packed {
        weight: Arc<PackedF32>,
        bias: Option<Tensor>,
    },
}

impl LinearWeight {
    /// Quantizes a dense `[out, in]` matrix if `quant` applies to its row length.
    pub fn new(weight: Tensor, bias: Option<Tensor>, quant: Option<Quant>) -> Result<Self> {
        let row_len = weight.dim(1)?;
        match quant.and_then(|q| q.dtype_for(row_len)) {
            Some(GgmlDType::Q8_0) => {
                let (rows, cols) = weight.dims2()?;
                let values = weight
                    .to_dtype(candle_core::DType::F32)?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                Ok(LinearWeight::Q8 {
                    weight: Arc::new(Q8Matrix::quantize(&values, rows, cols)),
                    bias,
                })
            }
            Some(dtype) => {
                let q = QTensor::quantize(&weight, dtype)?;
                Ok(Self::from_qtensor(q, bias)?)
            }
            None => Self::dense(weight, bias),
        }
    }

    /// A dense matrix: packed for llada's kernels when it is f32 and not a trained
    /// variable (training needs candle's ops and their gradients).
    fn dense(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        if weight.dtype() == candle_core::DType::F32 && !weight.track_op() {
            if let Ok((rows, cols)) = weight.dims2() {
                let values = weight.flatten_all()?.to_vec1::<f32>()?;
                if let Some(packed) = PackedF32::pack(&values, rows, cols) {
                    return Ok(LinearWeight::Packed {
                        weight: Arc::new(packed),
                        bias,
                    });
                }
            }
        }
        Ok(LinearWeight::Dense { weight, bias })
    }

    pub fn from_qtensor(q: QTensor, bias: Option<Tensor>) -> Result<Self> {
        if q.dtype() == GgmlDType::Q8_0 {
            if let [rows, cols] = *q.shape().dims() {
                if let Some(m) = Q8Matrix::from_ggml(&q.data()?, rows, cols) {
                    return Ok(LinearWeight::Q8 {
                        weight: Arc::new(m),
                        bias,
                    });
                }
            }
        }
        Ok(LinearWeight::Quantized {
            weight: Arc::new(QuantizedRows::new(q, rayon::current_num_threads())?),
            bias,
        })
    }

    /// The same weight with `bias` added to its output.
    pub fn with_bias(self, bias: Tensor) -> Self {
        let bias = Some(bias);
        match self {
            LinearWeight::Dense { weight, .. } => LinearWeight::Dense { weight, bias },
            LinearWeight::Quantized { weight, .. } => LinearWeight::Quantized { weight, bias },
            LinearWeight::Q8 { weight, .. } => LinearWeight::Q8 { weight, bias },
            LinearWeight::Packed { weight, .. } => LinearWeight::Packed { weight, bias },
        }
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (y, bias) = match self {
            LinearWeight::Dense { weight, bias } => (x.matmul(&weight.t()?)?, bias),
            LinearWeight::Quantized { weight, bias } => (weight.forward(x)?, bias),
            LinearWeight::Q8 { weight, bias } => (q8_forward(weight, x)?, bias),
            LinearWeight::Packed { weight, bias } => (packed_forward(weight, x)?, bias),
        };
        match bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }

    /// Whether [`LinearWeight::apply_rows`] runs its product in the calling thread as
    /// well as [`LinearWeight::forward`] does: f32 panels, q8_0, and other ggml blocks
    /// small enough to be one chunk (a chunked one quantizes its input once per chunk);
    /// not trained or unpackable dense matrices, whose candle product is slower there.
    pub fn runs_in_place(&self) -> bool {
        match self {
            LinearWeight::Q8 { .. } | LinearWeight::Packed { .. } => true,
            LinearWeight::Quantized { weight, .. } => weight.chunks() == 1,
            LinearWeight::Dense { .. } => false,
        }
    }

    /// `x @ W^T (+ b)` for `m` row-major f32 rows, computed in the calling thread: for
    /// callers that run many small products side by side (the experts of a MoE layer).
    pub fn apply_rows(&self, x: &[f32], m: usize) -> candle_core::Result<Vec<f32>> {
        let (out, _) = self.dims();
        let (mut y, bias) = match self {
            LinearWeight::Q8 { weight, bias } => (weight.matmul_serial(x, m), bias),
            LinearWeight::Packed { weight, bias } => (weight.matmul_serial(x, m), bias),
            LinearWeight::Quantized { weight, bias } => {
                let x = Tensor::from_slice(x, (m, weight.cols()), &candle_core::Device::Cpu)?;
                let y = weight.forward_serial(&x)?.flatten_all()?.to_vec1::<f32>()?;
                (y, bias)
            }
            LinearWeight::Dense { .. } => return self.apply_rows_with_candle(x, m),
        };
        if let Some(b) = bias {
            let b = b.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
            for row in y.chunks_exact_mut(out) {
                row.iter_mut().zip(&b).for_each(|(v, b)| *v += b);
            }
        }
        Ok(y)
    }

    fn apply_rows_with_candle(&self, x: &[f32], m: usize) -> candle_core::Result<Vec<f32>> {
        let (_, inp) = self.dims();
        let x = Tensor::from_slice(x, (m, inp), &candle_core::Device::Cpu)?;
        self.forward(&x)?
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1()
    }

    /// `(out, in)`.
    pub fn dims(&self) -> (usize, usize) {
        let dims = match self {
            LinearWeight::Dense { weight, .. } => weight.dims(),
            LinearWeight::Quantized { weight, .. } => return (weight.rows(), weight.cols()),
            LinearWeight::Q8 { weight, .. } => return (weight.rows(), weight.cols()),
            LinearWeight::Packed { weight, .. } => return (weight.rows(), weight.cols()),
        };
        match dims {
            [out, inp] => (*out, *inp),
            _ => (0, 0),
        }
    }

    /// Bytes the weight occupies in memory.
    /// The matrix's values, row-major, when it is dense (`None` when quantized).
    pub fn dense_values(&self) -> Result<Option<Vec<f32>>> {
        Ok(match self {
            LinearWeight::Dense { weight, .. } => Some(
                weight
                    .to_dtype(candle_core::DType::F32)?
                    .flatten_all()?
                    .to_vec1::<f32>()?,
            ),
            LinearWeight::Packed { weight, .. } => Some(weight.unpack()),
            LinearWeight::Quantized { .. } | LinearWeight::Q8 { .. } => None,
        })
    }

    /// The ggml block type and bytes of a quantized matrix (`None` when it is dense).
    pub fn ggml_blocks(&self) -> Result<Option<(GgmlDType, Vec<u8>)>> {
        Ok(match self {
            LinearWeight::Q8 { weight, .. } => Some((GgmlDType::Q8_0, weight.to_ggml())),
            LinearWeight::Quantized { weight, .. } => weight.ggml_blocks()?,
            LinearWeight::Dense { .. } | LinearWeight::Packed { .. } => None,
        })
    }

    /// The bias, if the layer has one.
    pub fn bias(&self) -> Option<&Tensor> {
        match self {
            LinearWeight::Dense { bias, .. }
            | LinearWeight::Quantized { bias, .. }
            | LinearWeight::Q8 { bias, .. }
            | LinearWeight::Packed { bias, .. } => bias.as_ref(),
        }
    }

    /// What the matrix holds: "f32", "q8_0", "q4k", ...
    pub fn kind(&self) -> String {
        match self {
            LinearWeight::Dense { weight, .. } => format!("{:?}", weight.dtype()).to_lowercase(),
            LinearWeight::Packed { .. } => "f32".into(),
            LinearWeight::Q8 { .. } => "q8_0".into(),
            LinearWeight::Quantized { .. } => "k-quant".into(),
        }
    }

    pub fn memory_bytes(&self) -> usize {
        match self {
            LinearWeight::Dense { weight, .. } => {
                weight.elem_count() * weight.dtype().size_in_bytes()
            }
            LinearWeight::Quantized { weight, .. } => weight.storage_bytes(),
            LinearWeight::Q8 { weight, .. } => weight.storage_bytes(),
            LinearWeight::Packed { weight, .. } => 4 * weight.rows() * weight.cols(),
        }
    }
}

/// `f` on the data of a contiguous f32 CPU tensor, read in place; `None` for any other.
pub(crate) fn with_f32_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
    if t.dtype() != candle_core::DType::F32 || !t.is_contiguous() {
        return None;
    }
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        return None;
    };
    let start = layout.start_offset();
    let data = cpu
        .as_slice::<f32>()
        .ok()?
        .get(start..start + t.elem_count())?;
    Some(f(data))
}

/// Rows of `x` per pass over a packed weight's panels: each pass reads them again for
/// every panel, so that many stay in the cache.
const PACKED_CHUNK_ROWS: usize = 64;

/// `x @ W^T` for x `[.., in]` through the panel kernel, [`PACKED_CHUNK_ROWS`] rows of `x`
/// at a time.
fn packed_forward(weight: &PackedF32, x: &Tensor) -> candle_core::Result<Tensor> {
    kernel_forward(x, weight.rows(), weight.cols(), |data, m| {
        let k = weight.cols().max(1);
        let mut y = Vec::with_capacity(m * weight.rows());
        for chunk in data.chunks(PACKED_CHUNK_ROWS * k) {
            y.extend(weight.matmul(chunk, chunk.len() / k));
        }
        y
    })
}

/// `x @ W^T` for x `[.., in]` through the q8_0 kernel.
fn q8_forward(weight: &Q8Matrix, x: &Tensor) -> candle_core::Result<Tensor> {
    kernel_forward(x, weight.rows(), weight.cols(), |data, m| {
        weight.matmul(data, m)
    })
}

/// A product by one of llada's kernels on x's f32 rows, read in place: `product(rows of
/// x, their number)` returns `[m, out]`.
fn kernel_forward(
    x: &Tensor,
    out: usize,
    inp: usize,
    product: impl FnOnce(&[f32], usize) -> Vec<f32>,
) -> candle_core::Result<Tensor> {
    let x = x.to_dtype(candle_core::DType::F32)?.contiguous()?;
    let mut out_shape = x.dims().to_vec();
    let k = out_shape.pop().unwrap_or(0);
    if k != inp {
        candle_core::bail!("matmul: input width {k}, weight {inp}");
    }
    let m = x.elem_count() / k.max(1);
    let Some(y) = with_f32_slice(&x, |data| product(data, m)) else {
        candle_core::bail!("llada's kernels run on the CPU");
    };
    out_shape.push(out);
    Tensor::from_vec(y, out_shape, x.device())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_types_fall_back_for_short_rows() {
        assert_eq!(Quant::Q4k.dtype_for(2048), Some(GgmlDType::Q4K));
        assert_eq!(Quant::Q4k.dtype_for(64), Some(GgmlDType::Q8_0));
        assert_eq!(Quant::Q8_0.dtype_for(48), None);
        assert!("q5".parse::<Quant>().is_err());
        assert_eq!("Q4K".parse::<Quant>().unwrap(), Quant::Q4k);
    }

    #[test]
    fn quantized_matmul_is_close_to_dense() {
        let dev = candle_core::Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (64, 256), &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (3, 256), &dev).unwrap();
        let dense = LinearWeight::new(w.clone(), None, None)
            .unwrap()
            .forward(&x)
            .unwrap();
        for quant in [Quant::Q8_0, Quant::Q4k] {
            let q = LinearWeight::new(w.clone(), None, Some(quant)).unwrap();
            assert!(!matches!(q, LinearWeight::Dense { .. }));
            let y = q.forward(&x).unwrap();
            let err = (y - &dense).unwrap().abs().unwrap().mean_all().unwrap();
            let scale = dense.abs().unwrap().mean_all().unwrap();
            let rel = err.to_scalar::<f32>().unwrap() / scale.to_scalar::<f32>().unwrap();
            assert!(rel < 0.1, "{quant:?}: relative error {rel}");
        }
    }
}
