//! Matrices in ggml blocks other than q8_0 (q4k, and whatever else a GGUF file holds),
//! multiplied by candle's quantized kernels (its AVX2 / AVX-512 VNNI / AMX tiles) but
//! on llada's thread pool: the rows are split into chunks, each its own candle matrix,
//! and the chunks' products run side by side on rayon's pool while candle's own pool,
//! whose workers spin as they wait, stays at one thread (`init_thread_pool`): beside a
//! busy process, a spinning worker waits for one that is not running, and q4k forwards
//! slowed ten-fold (docs/performance.md).
//!
//! Chunks hold whole 16-row tiles of candle's repacked layout, so every output is the
//! value candle computes for the whole matrix (when its rows are whole tiles too, as
//! every LLaDA2 matrix's are).

use candle_core::quantized::ggml_file::qtensor_from_ggml;
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Module, Tensor};
use rayon::prelude::*;

type Result<T> = candle_core::Result<T>;

/// Rows per chunk are a multiple of this (candle's x86 tiles are 16 rows).
const TILE_ROWS: usize = 16;
/// No chunk holds fewer weights than this: each chunk quantizes the activations again
/// (candle's scalar q8k quantization is a large part of a q4k forward), and a smaller
/// product is over before a thread hand-off pays off.
const MIN_CHUNK_WEIGHTS: usize = 1 << 20;
/// Large matrices (an LLaDA2.0-mini lm_head has 322M weights) are cut into chunks of at
/// most this many, so that the threads share them out evenly as they come free; not
/// smaller, as every chunk quantizes the activations again (docs/performance.md).
const MAX_CHUNK_WEIGHTS: usize = 1 << 26;

/// A `[rows, cols]` matrix in ggml blocks, in row chunks.
pub struct QuantizedRows {
    rows: usize,
    cols: usize,
    bytes: usize,
    chunks: Vec<(usize, QMatMul)>,
}

impl std::fmt::Debug for QuantizedRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "QuantizedRows({} x {}, {} chunks)",
            self.rows,
            self.cols,
            self.chunks.len()
        )
    }
}

impl QuantizedRows {
    /// Splits a 2-D quantized tensor into chunks for `threads` threads (one per thread at
    /// least).
    pub fn new(q: QTensor, threads: usize) -> Result<Self> {
        let &[rows, cols] = q.shape().dims() else {
            candle_core::bail!(
                "a quantized matrix must have two dimensions, got {:?}",
                q.shape()
            );
        };
        let bytes = q.storage_size_in_bytes();
        let wanted = threads
            .max((rows * cols).div_ceil(MAX_CHUNK_WEIGHTS))
            .max(1);
        let per_chunk = rows
            .div_ceil(wanted)
            .max(MIN_CHUNK_WEIGHTS.div_ceil(cols.max(1)))
            .next_multiple_of(TILE_ROWS);
        if per_chunk >= rows {
            return Ok(Self {
                rows,
                cols,
                bytes,
                chunks: vec![(rows, QMatMul::from_qtensor(q)?)],
            });
        }
        let dtype = q.dtype();
        let row_bytes = bytes / rows;
        let data = q.data()?;
        let mut chunks = Vec::new();
        for start in (0..rows).step_by(per_chunk) {
            let n = per_chunk.min(rows - start);
            let part = &data[start * row_bytes..(start + n) * row_bytes];
            let chunk = qtensor_from_ggml(dtype, part, vec![n, cols], &q.device())?;
            chunks.push((n, QMatMul::from_qtensor(chunk)?));
        }
        Ok(Self {
            rows,
            cols,
            bytes,
            chunks,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The ggml block type and the blocks of every row, in order (what a device backend
    /// uploads); `None` if a chunk is not held as ggml blocks.
    pub fn ggml_blocks(&self) -> Result<Option<(GgmlDType, Vec<u8>)>> {
        let mut dtype = None;
        let mut bytes = Vec::with_capacity(self.bytes);
        for (_, m) in &self.chunks {
            let QMatMul::QTensor(q) = m else {
                return Ok(None);
            };
            dtype = Some(q.dtype());
            bytes.extend_from_slice(&q.data()?);
        }
        Ok(dtype.map(|d| (d, bytes)))
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Into how many chunks the rows are cut (1: the whole matrix, in one product).
    pub fn chunks(&self) -> usize {
        self.chunks.len()
    }

    /// Bytes of the blocks.
    pub fn storage_bytes(&self) -> usize {
        self.bytes
    }

    /// `x @ self^T` for `x` `[.., cols]`, the chunks side by side on the thread pool.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.product(x, true)
    }

    /// [`QuantizedRows::forward`] in the calling thread.
    pub fn forward_serial(&self, x: &Tensor) -> Result<Tensor> {
        self.product(x, false)
    }

    fn product(&self, x: &Tensor, side_by_side: bool) -> Result<Tensor> {
        if let [(_, whole)] = self.chunks.as_slice() {
            return whole.forward(x);
        }
        let chunk = |(_, m): &(usize, QMatMul)| m.forward(x);
        let parts = if side_by_side {
            self.chunks
                .par_iter()
                .map(chunk)
                .collect::<Result<Vec<_>>>()?
        } else {
            self.chunks.iter().map(chunk).collect::<Result<Vec<_>>>()?
        };
        Tensor::cat(&parts, candle_core::D::Minus1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::GgmlDType;
    use candle_core::Device;

    #[test]
    fn chunked_products_equal_candles_whole_matrix() {
        let dev = Device::Cpu;
        let (m, k, n) = (5, 512, 8192);
        let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
        for dtype in [GgmlDType::Q4K, GgmlDType::Q4_0] {
            let q = || QTensor::quantize(&w, dtype).unwrap();
            let whole: Vec<f32> = QMatMul::from_qtensor(q())
                .unwrap()
                .forward(&x)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let rows = QuantizedRows::new(q(), 2).unwrap();
            assert_eq!(rows.chunks.len(), 2, "{dtype:?}");
            assert_eq!(rows.storage_bytes(), q().storage_size_in_bytes());
            for got in [rows.forward(&x).unwrap(), rows.forward_serial(&x).unwrap()] {
                assert_eq!(got.dims(), [m, n]);
                let got: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
                let differ = got.iter().zip(&whole).position(|(a, b)| a != b);
                assert_eq!(differ, None, "{dtype:?}: first difference");
            }
        }
    }
}
