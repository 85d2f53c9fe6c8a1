//! The GPU backend: every op of a forward pass as a WGSL compute shader run through
//! `wgpu` (Vulkan, Metal, DX12), weights resident on the device, each sequence's KV cache
//! on the device, and only router logits (a few numbers per token, for the host's expert
//! choice) and the head's output rows read back.
//!
//! Activations are f32 and token-major (`[tokens, width]`; a layer's heads side by side
//! in a row), so splitting the fused QKV output and merging heads need no transposes.
//! Weights keep bf16 when their values are bf16 (checked, not assumed) and are widened
//! inside the kernels; f32 otherwise.

mod device;
mod kernels;
mod limits;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use candle_core::quantized::GgmlDType;
use candle_core::Tensor;

pub use device::DeviceChoice;
use kernels::{grid, row_grid, Kernels, Variant};
pub use limits::GpuLimits;

use super::cpu::CostMeter;
use super::{outputs_from_logits, Backend, Heads, Inference, MoeInput, RopeTables};
use crate::cache::KvCache;
use crate::error::{Error, Result};
use crate::kernels::Q8Matrix;
use crate::quant::LinearWeight;
use crate::step::{GreedyPick, PassRows, SeqStep, StepOutput, Wanted};
use crate::ForwardCost;

/// The largest head size the attention kernel holds in a workgroup.
const MAX_HEAD_DIM: usize = 256;

/// The GPU backend (see the module docs).
pub struct Gpu {
    kernels: Kernels,
    info: wgpu::AdapterInfo,
    meter: CostMeter,
    /// The largest storage buffer one binding may hold on this device.
    max_binding: u64,
    /// Device-local memory, where the driver says.
    memory: Option<u64>,
    /// The arena buffer linear weights are placed in, and its bytes in use.
    arena: std::sync::Mutex<Option<(Arc<wgpu::Buffer>, u64)>>,
}

/// Size of the arena buffers linear weights share (or less: the binding limit).
const ARENA_BYTES: u64 = 1 << 30;

const GIB: f64 = (1u64 << 30) as f64;

/// How a matrix is stored on the device (the product kernel's `FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    F32 = 0,
    Bf16 = 1,
    /// Blocks of 32: an f32 scale and 32 signed bytes (ggml's q8_0 with its f16 scale
    /// widened, so every block is 4-byte aligned).
    Q8_0 = 2,
    /// ggml's q4_K super-blocks of 256, as stored.
    Q4k = 3,
}

impl Format {
    /// Bytes per `values` values (`values` a whole number of blocks).
    fn bytes(self, values: usize) -> usize {
        match self {
            Format::F32 => 4 * values,
            Format::Bf16 => 2 * values,
            Format::Q8_0 => values / 32 * 36,
            Format::Q4k => values / 256 * 144,
        }
    }
}

/// An f32 activation on the device, or a weight.
#[derive(Clone)]
pub struct GpuTensor {
    buffer: Arc<wgpu::Buffer>,
    /// Where it starts in its buffer, in 4-byte words (weights share arena buffers).
    offset: usize,
    rows: usize,
    cols: usize,
    format: Format,
}

/// The bytes of a dense matrix with rows of `cols` values on the device: bf16 when every
/// value is one (lossless) and `allow_bf16`, else f32.
fn dense_layout(values: &[f32], cols: usize, allow_bf16: bool) -> (Vec<u8>, Format) {
    let bf16 =
        allow_bf16 && cols.is_multiple_of(2) && values.iter().all(|v| v.to_bits() & 0xffff == 0);
    if bf16 {
        let halves: Vec<u16> = values.iter().map(|v| (v.to_bits() >> 16) as u16).collect();
        (bytemuck::cast_slice(&halves).to_vec(), Format::Bf16)
    } else {
        (bytemuck::cast_slice(values).to_vec(), Format::F32)
    }
}

/// q8_0 blocks in the product kernel's layout: per block of 32, the f32 scale, then the
/// 32 signed bytes as 8 words.
fn q8_words(qs: &[i8], scales: &[f32]) -> Vec<u32> {
    let mut words = Vec::with_capacity(scales.len() * 9);
    for (block, &scale) in qs.chunks_exact(32).zip(scales) {
        words.push(scale.to_bits());
        words.extend(
            block
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])),
        );
    }
    words
}

impl GpuTensor {
    fn len(&self) -> usize {
        self.rows * self.cols
    }
}

/// A linear layer's weight `[out, in]` on the device.
pub struct GpuLinear {
    weight: GpuTensor,
    bias: Option<wgpu::Buffer>,
}

impl Gpu {
    /// The GPU for `choice`: `Ok(None)` when the model should run on the CPU (`cpu`, or
    /// `auto` without a hardware adapter); an error for `gpu` without any adapter.
    pub fn open(choice: DeviceChoice) -> Result<Option<Gpu>> {
        let adapter = match choice {
            DeviceChoice::Cpu => return Ok(None),
            DeviceChoice::Auto => match device::best_adapter(true) {
                Some(a) => a,
                None => return Ok(None),
            },
            DeviceChoice::Gpu => device::best_adapter(false).ok_or_else(device::no_adapter)?,
        };
        let info = adapter.get_info();
        let memory = device::memory_bytes(&adapter);
        if info.device_type == wgpu::DeviceType::Cpu {
            tracing::warn!(
                "{} is a software adapter (the CPU emulating a GPU): correct but slow; \
                 --device cpu runs faster",
                info.name
            );
        }
        let limits = adapter.limits();
        let max_binding = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("llada"),
            required_features: wgpu::Features::empty(),
            required_limits: limits,
            ..Default::default()
        }))
        .map_err(|e| Error::Device(format!("cannot open {}: {e}", info.name)))?;
        Ok(Some(Gpu {
            kernels: Kernels::new(device, queue),
            info,
            meter: CostMeter::default(),
            max_binding,
            memory,
            arena: std::sync::Mutex::new(None),
        }))
    }

    /// The adapter's name and API, e.g. "NVIDIA H100 (Vulkan)".
    pub fn name(&self) -> String {
        format!("{} ({:?})", self.info.name, self.info.backend)
    }

    /// Bytes of device-local memory, where the driver says (Vulkan).
    pub fn memory_bytes(&self) -> Option<u64> {
        self.memory
    }

    /// Whether the adapter is a software one (the CPU emulating a GPU).
    pub fn is_software(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }

    /// The work of every op this backend ran so far.
    pub fn cost(&self) -> ForwardCost {
        self.meter.total()
    }

    fn activation(&self, rows: usize, cols: usize) -> GpuTensor {
        GpuTensor {
            buffer: Arc::new(self.kernels.zeros("activation", rows * cols * 4)),
            offset: 0,
            rows,
            cols,
            format: Format::F32,
        }
    }

    /// Uploads f32 values, as bf16 when every value is one (lossless) and `allow_bf16`.
    fn weight(
        &self,
        values: &[f32],
        rows: usize,
        cols: usize,
        allow_bf16: bool,
    ) -> Result<GpuTensor> {
        let (bytes, format) = dense_layout(values, cols, allow_bf16);
        self.stored(&bytes, rows, cols, format)
    }

    /// A linear layer's matrix in the arena: bf16 when lossless, else f32, or quantized.
    fn linear_matrix(&self, w: &LinearWeight) -> Result<GpuTensor> {
        let (rows, cols) = w.dims();
        let Some(values) = w.dense_values()? else {
            return self.quantized(w);
        };
        let (bytes, format) = dense_layout(&values, cols, true);
        self.in_arena(&bytes, rows, cols, format)
    }

    /// Uploads a matrix already in its device layout; refuses one larger than one buffer
    /// binding of this adapter. Linear layers' matrices go into shared arena buffers, so
    /// one dispatch can read all experts of a layer.
    fn stored(&self, bytes: &[u8], rows: usize, cols: usize, format: Format) -> Result<GpuTensor> {
        if bytes.len() as u64 > self.max_binding {
            return Err(Error::Device(format!(
                "a {rows} x {cols} weight matrix takes {:.2} GiB, more than {} lets one buffer \
                 hold ({:.2} GiB)",
                bytes.len() as f64 / GIB,
                self.name(),
                self.max_binding as f64 / GIB
            )));
        }
        Ok(GpuTensor {
            buffer: Arc::new(self.kernels.upload("weight", bytes)),
            offset: 0,
            rows,
            cols,
            format,
        })
    }

    /// As [`Gpu::stored`], into the current arena buffer (a new one when it is full).
    fn in_arena(
        &self,
        bytes: &[u8],
        rows: usize,
        cols: usize,
        format: Format,
    ) -> Result<GpuTensor> {
        let size = self.max_binding.min(ARENA_BYTES);
        let len = (bytes.len() as u64).next_multiple_of(4);
        if len > size {
            return self.stored(bytes, rows, cols, format);
        }
        let mut arena = self.arena.lock().expect("arena");
        let full = arena.as_ref().is_none_or(|(_, used)| used + len > size);
        if full {
            *arena = Some((Arc::new(self.kernels.zeros("weights", size as usize)), 0));
        }
        let (buffer, used) = arena.as_mut().expect("made above");
        // Every layout is whole words already; copy only to pad one that is not.
        if bytes.len() as u64 == len {
            self.kernels.write(buffer, *used, bytes);
        } else {
            let mut padded = bytes.to_vec();
            padded.resize(len as usize, 0);
            self.kernels.write(buffer, *used, &padded);
        }
        let offset = (*used / 4) as usize;
        *used += len;
        Ok(GpuTensor {
            buffer: Arc::clone(buffer),
            offset,
            rows,
            cols,
            format,
        })
    }

    /// A quantized matrix in the product kernel's layout (see [`Format`]).
    fn quantized(&self, w: &LinearWeight) -> Result<GpuTensor> {
        let (rows, cols) = w.dims();
        let q8 = |m: &Q8Matrix| {
            let (qs, scales) = m.blocks();
            let words = q8_words(qs, scales);
            self.in_arena(bytemuck::cast_slice(&words), rows, cols, Format::Q8_0)
        };
        let blocks = match w {
            LinearWeight::Q8 { weight, .. } => return q8(weight),
            LinearWeight::Quantized { weight, .. } => weight.ggml_blocks()?,
            _ => None,
        };
        match blocks {
            Some((GgmlDType::Q4K, bytes)) => self.in_arena(&bytes, rows, cols, Format::Q4k),
            Some((GgmlDType::Q8_0, bytes)) => match Q8Matrix::from_ggml(&bytes, rows, cols) {
                Some(m) => q8(&m),
                None => Err(Error::Device(format!(
                    "a {rows} x {cols} q8_0 matrix has the wrong number of blocks"
                ))),
            },
            // A GGUF file's other blocks (q4_0, q5_k, q6_k, ...): re-blocked as q8_0, which
            // the GPU multiplies (8.5 bits per weight; q8_0's rounding of the stored values).
            Some((dtype, bytes)) => {
                let q = candle_core::quantized::ggml_file::qtensor_from_ggml(
                    dtype,
                    &bytes,
                    vec![rows, cols],
                    &candle_core::Device::Cpu,
                )?;
                let values = q
                    .dequantize(&candle_core::Device::Cpu)?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                q8(&Q8Matrix::quantize(&values, rows, cols))
            }
            None => Err(Error::Device(format!(
                "{} weights do not run on the GPU backend (it multiplies f32, bf16, q8_0 and \
                 q4k): use --device cpu",
                w.kind()
            ))),
        }
    }

    /// Waits for the uploads and passes recorded so far; the device's first error (out of
    /// memory, a lost device) as a clear error. `what` says what was being done.
    pub fn finish(&self, what: &str) -> Result<()> {
        self.kernels
            .finish()
            .map_err(|e| Error::Device(format!("{what} on {}: {e}", self.name())))
    }

    fn elementwise(&self, op: u32, a: &GpuTensor, b: Option<&GpuTensor>, scale: f32) -> GpuTensor {
        let out = self.activation(a.rows, a.cols);
        let n = a.len();
        let b = b.map_or(self.kernels.empty(), |b| &*b.buffer);
        self.kernels.dispatch(
            &Variant::plain("elementwise").with("OP", op),
            &[n as u32, scale.to_bits()],
            &[&a.buffer, b, &out.buffer],
            grid(n),
        );
        out
    }

    /// Rows `rows` of `x`, columns `offset..offset + cols`.
    fn gather(
        &self,
        x: &GpuTensor,
        rows: &wgpu::Buffer,
        count: usize,
        offset: usize,
        cols: usize,
    ) -> GpuTensor {
        let out = self.activation(count, cols);
        self.kernels.dispatch(
            &Variant::plain("gather"),
            &[count as u32, cols as u32, x.cols as u32, offset as u32],
            &[&x.buffer, rows, &out.buffer],
            grid(count * cols),
        );
        out
    }

    fn product(&self, x: &GpuTensor, w: &GpuTensor, bias: Option<&wgpu::Buffer>) -> GpuTensor {
        let (m, k, n) = (x.rows, x.cols, w.rows);
        let out = self.activation(m, n);
        let variant = Variant::plain("linear")
            .with("FORMAT", w.format as u32)
            .with("HAS_BIAS", u32::from(bias.is_some()));
        let empty = self.kernels.empty();
        self.kernels.dispatch(
            &variant,
            &[m as u32, n as u32, k as u32, w.offset as u32],
            &[
                &x.buffer,
                &w.buffer,
                bias.unwrap_or(empty),
                &out.buffer,
                empty,
                empty,
            ],
            (n.div_ceil(4) as u32, m.div_ceil(8) as u32, 1),
        );
        out
    }

    /// Products of rows of `x` with several matrices of one arena buffer in one dispatch,
    /// into rows of `out`: `tiles` (matrix word offset, rows, first pair of `rows`) and
    /// `rows` ((x row, out row) pairs), as the product kernel reads them.
    fn tiled_product(
        &self,
        x: &GpuTensor,
        arena: &wgpu::Buffer,
        format: Format,
        tiles: &[u32],
        rows: &[u32],
        out: &GpuTensor,
    ) {
        let variant = Variant::plain("linear")
            .with("FORMAT", format as u32)
            .with("TILED", 1);
        self.kernels.dispatch(
            &variant,
            &[x.rows as u32, out.cols as u32, x.cols as u32, 0],
            &[
                &x.buffer,
                arena,
                self.kernels.empty(),
                &out.buffer,
                &self.kernels.upload("tiles", tiles),
                &self.kernels.upload("tile rows", rows),
            ],
            (out.cols.div_ceil(4) as u32, (tiles.len() / 3) as u32, 1),
        );
    }

    fn read(&self, x: &GpuTensor) -> Result<Vec<f32>> {
        self.kernels
            .read_f32(&x.buffer, x.len())
            .map_err(Error::Device)
    }
}

/// A layer's keys and values of one sequence on the device: `[capacity, kv_heads * dim]`.
struct LayerKv {
    k: wgpu::Buffer,
    v: wgpu::Buffer,
    capacity: usize,
}

/// A sequence's KV cache on the device, kept in its [`KvCache`].
#[derive(Default)]
struct DeviceKv {
    layers: Vec<Option<LayerKv>>,
}

/// One sequence's share of a GPU pass.
struct GpuSeq<'p> {
    offset: usize,
    len: usize,
    /// Positions the attention reads: the committed ones plus the step's.
    keys: usize,
    block_length: usize,
    /// Cache position of each computed row.
    slots: wgpu::Buffer,
    /// A partial pass: it needs the buffers a full pass of its positions wrote.
    partial: bool,
    cache: &'p mut KvCache,
}

/// A GPU inference pass.
pub struct GpuPass<'p> {
    ids: wgpu::Buffer,
    tokens: usize,
    positions: wgpu::Buffer,
    cos: wgpu::Buffer,
    sin: wgpu::Buffer,
    rope_dim: usize,
    head_dim: usize,
    seqs: Vec<GpuSeq<'p>>,
    outputs: wgpu::Buffer,
    outputs_per_seq: Vec<usize>,
    wanted: Vec<Wanted>,
}

impl Backend for Gpu {
    type Tensor = GpuTensor;
    type Linear = GpuLinear;
    type Pass<'p> = GpuPass<'p>;

    fn tensor(&self, t: Tensor) -> Result<GpuTensor> {
        let (rows, cols) = match *t.dims() {
            [n] => (1, n),
            [r, c] => (r, c),
            ref d => {
                return Err(Error::Device(format!(
                    "the GPU backend holds matrices and vectors, not shape {d:?}"
                )))
            }
        };
        let values = t
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        // Only matrices read by the product and embedding kernels may be bf16.
        self.weight(&values, rows, cols, rows > 1)
    }

    fn linear_weight(&self, w: LinearWeight) -> Result<GpuLinear> {
        let weight = self.linear_matrix(&w)?;
        let bias = w
            .bias()
            .map(|b| -> Result<wgpu::Buffer> {
                let b = b.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
                Ok(self.kernels.upload("bias", &b))
            })
            .transpose()?;
        Ok(GpuLinear { weight, bias })
    }

    fn tensor_bytes(&self, t: &GpuTensor) -> usize {
        t.format.bytes(t.len())
    }

    fn linear_bytes(&self, w: &GpuLinear) -> usize {
        self.tensor_bytes(&w.weight) + w.bias.as_ref().map_or(0, |_| 4 * w.weight.rows)
    }

    fn embed(&self, table: &GpuTensor, pass: &GpuPass<'_>) -> Result<GpuTensor> {
        let out = self.activation(pass.tokens, table.cols);
        self.kernels.dispatch(
            &Variant::plain("embed").with("WEIGHT_BF16", u32::from(table.format == Format::Bf16)),
            &[pass.tokens as u32, table.cols as u32],
            &[&pass.ids, &table.buffer, &out.buffer],
            grid(out.len()),
        );
        Ok(out)
    }

    fn rms_norm(&self, x: &GpuTensor, weight: &GpuTensor, eps: f64) -> Result<GpuTensor> {
        // Rows of the weight's width: tokens, or every head of every token (QK-norm).
        let cols = weight.cols;
        let rows = x.len() / cols;
        let out = self.activation(x.rows, x.cols);
        self.kernels.dispatch(
            &Variant::plain("rms_norm"),
            &[rows as u32, cols as u32, (eps as f32).to_bits()],
            &[&x.buffer, &weight.buffer, &out.buffer],
            row_grid(rows),
        );
        Ok(out)
    }

    fn linear(&self, x: &GpuTensor, w: &GpuLinear) -> Result<GpuTensor> {
        self.meter
            .add(x.rows * w.weight.len(), self.linear_bytes(w));
        Ok(self.product(x, &w.weight, w.bias.as_ref()))
    }

    fn add(&self, a: &GpuTensor, b: &GpuTensor) -> Result<GpuTensor> {
        Ok(self.elementwise(0, a, Some(b), 0.0))
    }

    fn swiglu(&self, gate: &GpuTensor, up: &GpuTensor) -> Result<GpuTensor> {
        Ok(self.elementwise(1, gate, Some(up), 0.0))
    }

    fn split_heads(
        &self,
        qkv: &GpuTensor,
        heads: Heads,
    ) -> Result<(GpuTensor, GpuTensor, GpuTensor)> {
        let (q, kv) = (heads.query * heads.dim, heads.kv * heads.dim);
        let all: Vec<u32> = (0..qkv.rows as u32).collect();
        let all = self.kernels.upload("rows", &all);
        let columns = |offset, cols| self.gather(qkv, &all, qkv.rows, offset, cols);
        Ok((columns(0, q), columns(q, kv), columns(q + kv, kv)))
    }

    fn rope(&self, x: &GpuTensor, pass: &GpuPass<'_>) -> Result<GpuTensor> {
        if pass.rope_dim == 0 {
            return Ok(x.clone());
        }
        let out = self.activation(x.rows, x.cols);
        let dim = pass.head_dim;
        self.kernels.dispatch(
            &Variant::plain("rope"),
            &[
                x.rows as u32,
                (x.cols / dim) as u32,
                dim as u32,
                pass.rope_dim as u32,
            ],
            &[&x.buffer, &pass.cos, &pass.sin, &out.buffer],
            grid(x.len()),
        );
        Ok(out)
    }

    fn scale(&self, x: &GpuTensor, factor: f64) -> Result<GpuTensor> {
        Ok(self.elementwise(2, x, None, factor as f32))
    }

    fn attend(
        &self,
        pass: &mut GpuPass<'_>,
        layer: usize,
        q: &GpuTensor,
        k: &GpuTensor,
        v: &GpuTensor,
    ) -> Result<GpuTensor> {
        let dim = pass.head_dim;
        let (heads, kv_heads) = (q.cols / dim, k.cols / dim);
        let width = k.cols;
        let out = self.activation(q.rows, q.cols);
        for seq in &mut pass.seqs {
            let committed = seq.cache.len();
            let hint = seq.cache.capacity_hint();
            let num_layers = seq.cache.num_layers();
            let state = seq.cache.device_state::<DeviceKv>();
            state.layers.resize_with(num_layers, || None);
            let entry = &mut state.layers[layer];
            let capacity = entry.as_ref().map_or(0, |kv| kv.capacity);
            if capacity < seq.keys {
                if seq.partial {
                    return Err(Error::InvalidRequest(
                        "a partial pass needs a full pass over its positions first".into(),
                    ));
                }
                let new_capacity = seq.keys.max(2 * capacity).max(hint);
                let grow = |old: Option<&wgpu::Buffer>| {
                    let buf = self.kernels.zeros("kv cache", new_capacity * width * 4);
                    if let Some(old) = old {
                        self.kernels.copy(old, &buf, committed * width * 4);
                    }
                    buf
                };
                *entry = Some(LayerKv {
                    k: grow(entry.as_ref().map(|e| &e.k)),
                    v: grow(entry.as_ref().map(|e| &e.v)),
                    capacity: new_capacity,
                });
            }
            let kv = entry.as_ref().expect("allocated above");
            for (from, to) in [(k, &kv.k), (v, &kv.v)] {
                self.kernels.dispatch(
                    &Variant::plain("kv_write"),
                    &[seq.len as u32, width as u32, seq.offset as u32],
                    &[&from.buffer, &seq.slots, to],
                    grid(seq.len * width),
                );
            }
            self.meter.add(2 * heads * seq.len * seq.keys * dim, 0);
            self.kernels.dispatch(
                &Variant::plain("attention"),
                &[
                    seq.len as u32,
                    seq.keys as u32,
                    heads as u32,
                    kv_heads as u32,
                    dim as u32,
                    seq.block_length as u32,
                    seq.offset as u32,
                ],
                &[&q.buffer, &kv.k, &kv.v, &pass.positions, &out.buffer],
                (heads as u32, seq.len as u32, 1),
            );
        }
        Ok(out)
    }

    fn router_logits(&self, x: &GpuTensor, weight: &GpuTensor) -> Result<(GpuTensor, Vec<f32>)> {
        self.meter
            .add(x.rows * weight.len(), self.tensor_bytes(weight));
        let logits = self.product(x, weight, None);
        let host = self.read(&logits)?;
        Ok((logits, host))
    }

    fn experts(&self, x: &GpuTensor, moe: &MoeInput<'_, Self>) -> Result<GpuTensor> {
        self.meter.experts_read(self, moe);
        let routed = self.routed_experts(x, moe)?;
        match moe.shared {
            Some(shared) => self.add(&routed, &self.mlp(shared, x)?),
            None => Ok(routed),
        }
    }

    fn output_rows(&self, h: &GpuTensor, pass: &GpuPass<'_>) -> Result<Option<GpuTensor>> {
        let count: usize = pass.outputs_per_seq.iter().sum();
        if count == 0 {
            return Ok(None);
        }
        Ok(Some(self.gather(h, &pass.outputs, count, 0, h.cols)))
    }
}

impl Gpu {
    /// A MoE layer's routed experts: every (token, expert) pair is a slot; slots are
    /// grouped by expert into tiles of up to 8, and the gate, up and down products of all
    /// experts run as one dispatch each (per arena buffer the experts' weights lie in:
    /// one, mostly), then one dispatch mixes each token's slots.
    fn routed_experts(&self, x: &GpuTensor, moe: &MoeInput<'_, Self>) -> Result<GpuTensor> {
        let (n, h) = (x.rows, x.cols);
        let k = moe.routes.first().map_or(0, |r| r.experts.len());
        // Slots in expert order.
        let mut by_expert: Vec<Vec<(u32, f32)>> = vec![Vec::new(); moe.experts.len()];
        for (token, route) in moe.routes.iter().enumerate() {
            if route.experts.len() != k {
                return Err(Error::Device("every token needs as many routes".into()));
            }
            for (&e, &w) in route.experts.iter().zip(&route.weights) {
                by_expert[e].push((token as u32, w));
            }
        }
        // Each token's slots and gates, in ascending expert order (the CPU's sum order).
        let mut token_slots: Vec<Vec<(u32, f32)>> = vec![Vec::new(); n];
        let mut slot_token = Vec::with_capacity(n * k);
        let mut first_slot = Vec::with_capacity(moe.experts.len());
        for members in &by_expert {
            first_slot.push(slot_token.len());
            for &(token, w) in members {
                token_slots[token as usize].push((slot_token.len() as u32, w));
                slot_token.push(token);
            }
        }
        let slots = slot_token.len();
        let inter = moe.experts.first().map_or(0, |m| m.gate_proj.weight.rows);
        // Experts with tokens, by the arena buffer their weights lie in.
        let mut groups: Vec<(Arc<wgpu::Buffer>, Format, Vec<usize>)> = Vec::new();
        for (e, members) in by_expert.iter().enumerate() {
            if members.is_empty() {
                continue;
            }
            let w = &moe.experts[e];
            let parts = [&w.gate_proj, &w.up_proj, &w.down_proj];
            let (buffer, format) = (&w.gate_proj.weight.buffer, w.gate_proj.weight.format);
            if parts.iter().any(|l| {
                !Arc::ptr_eq(&l.weight.buffer, buffer)
                    || l.weight.format != format
                    || l.bias.is_some()
            }) {
                return Err(Error::Device(
                    "an expert's matrices must share one buffer and format and have no bias".into(),
                ));
            }
            for l in parts {
                self.meter
                    .add(members.len() * l.weight.len(), self.linear_bytes(l));
            }
            match groups
                .iter_mut()
                .find(|(b, f, _)| Arc::ptr_eq(b, buffer) && *f == format)
            {
                Some((_, _, list)) => list.push(e),
                None => groups.push((Arc::clone(buffer), format, vec![e])),
            }
        }
        // Per group: tiles for each of the three matrices, and the (x row, out row) pairs
        // of the gate/up products (token -> slot) and of the down product (slot -> slot).
        let plans: Vec<_> = groups
            .iter()
            .map(|(_, _, experts)| {
                let (mut tiles, mut to_slot, mut in_slot) =
                    ([vec![], vec![], vec![]], vec![], vec![]);
                for &e in experts {
                    let w = &moe.experts[e];
                    let (start, count) = (first_slot[e], by_expert[e].len());
                    for chunk in (start..start + count).step_by(8) {
                        let len = 8.min(start + count - chunk);
                        let first = (to_slot.len() / 2) as u32;
                        for (t, l) in tiles
                            .iter_mut()
                            .zip([&w.gate_proj, &w.up_proj, &w.down_proj])
                        {
                            t.extend([l.weight.offset as u32, len as u32, first]);
                        }
                        for (s, &token) in slot_token.iter().enumerate().skip(chunk).take(len) {
                            to_slot.extend([token, s as u32]);
                            in_slot.extend([s as u32, s as u32]);
                        }
                    }
                }
                (tiles, to_slot, in_slot)
            })
            .collect();
        let gate = self.activation(slots, inter);
        let up = self.activation(slots, inter);
        for ((buffer, format, _), (tiles, to_slot, _)) in groups.iter().zip(&plans) {
            self.tiled_product(x, buffer, *format, &tiles[0], to_slot, &gate);
            self.tiled_product(x, buffer, *format, &tiles[1], to_slot, &up);
        }
        let act = self.elementwise(1, &gate, Some(&up), 0.0);
        let down = self.activation(slots, h);
        for ((buffer, format, _), (tiles, _, in_slot)) in groups.iter().zip(&plans) {
            self.tiled_product(&act, buffer, *format, &tiles[2], in_slot, &down);
        }
        let (order, weights): (Vec<u32>, Vec<f32>) = token_slots.into_iter().flatten().unzip();
        let y = self.activation(n, h);
        self.kernels.dispatch(
            &Variant::plain("moe_combine"),
            &[n as u32, h as u32, k as u32],
            &[
                &down.buffer,
                &self.kernels.upload("slots", &order),
                &self.kernels.upload("gates", &weights),
                &y.buffer,
            ],
            grid(n * h),
        );
        Ok(y)
    }
}

impl Inference for Gpu {
    fn pass<'p>(
        &self,
        batch: &'p mut [SeqStep<'_>],
        rows: PassRows,
        rope: RopeTables,
        heads: Heads,
    ) -> Result<GpuPass<'p>> {
        if heads.dim > MAX_HEAD_DIM {
            return Err(Error::Device(format!(
                "head size {} is above the GPU attention kernel's {MAX_HEAD_DIM}",
                heads.dim
            )));
        }
        self.meter.sequences(batch.len());
        let mut seqs = Vec::with_capacity(batch.len());
        for (step, &offset) in batch.iter_mut().zip(&rows.offsets) {
            let committed = step.cache.len();
            let slots: Vec<u32> = match step.compute {
                Some(rows) => rows.iter().map(|&r| (committed + r) as u32).collect(),
                None => (0..step.tokens.len())
                    .map(|r| (committed + r) as u32)
                    .collect(),
            };
            seqs.push(GpuSeq {
                offset,
                len: step.computed_rows(),
                keys: committed + step.tokens.len(),
                block_length: step.block_length,
                slots: self.kernels.upload("slots", &slots),
                partial: step.compute.is_some(),
                cache: &mut *step.cache,
            });
        }
        let positions: Vec<u32> = rows.positions.iter().map(|&p| p as u32).collect();
        Ok(GpuPass {
            tokens: rows.tokens.len(),
            ids: self.kernels.upload("ids", &rows.tokens),
            positions: self.kernels.upload("positions", &positions),
            cos: self.kernels.upload("rope cos", &rope.cos),
            sin: self.kernels.upload("rope sin", &rope.sin),
            rope_dim: rope.rope_dim,
            head_dim: heads.dim,
            seqs,
            outputs: self.kernels.upload("output rows", &rows.outputs),
            outputs_per_seq: rows.outputs_per_seq,
            wanted: rows.wanted,
        })
    }

    fn outputs(
        &self,
        pass: GpuPass<'_>,
        logits: Option<GpuTensor>,
    ) -> Result<Vec<Option<StepOutput>>> {
        let Some(logits) = logits else {
            self.finish("the forward pass")?;
            return Ok(pass.outputs_per_seq.iter().map(|_| None).collect());
        };
        let (rows, vocab) = (logits.rows, logits.cols);
        let all_greedy = pass
            .outputs_per_seq
            .iter()
            .zip(&pass.wanted)
            .all(|(&n, &w)| n == 0 || w == Wanted::Greedy);
        if !all_greedy {
            let values = self.read(&logits)?;
            let host = Tensor::from_vec(values, (rows, vocab), &candle_core::Device::Cpu)?;
            return outputs_from_logits(&host, &pass.outputs_per_seq, &pass.wanted);
        }
        // Two numbers per row come back instead of the vocabulary's logits.
        let picks = self.activation(rows, 2);
        self.kernels.dispatch(
            &Variant::plain("greedy"),
            &[rows as u32, vocab as u32],
            &[&logits.buffer, &picks.buffer],
            row_grid(rows),
        );
        let words = self.read(&picks)?;
        let mut picks = words.chunks_exact(2).map(|w| GreedyPick {
            token: w[0].to_bits(),
            confidence: w[1],
        });
        Ok(pass
            .outputs_per_seq
            .iter()
            .map(|&n| (n > 0).then(|| StepOutput::Greedy(picks.by_ref().take(n).collect())))
            .collect())
    }
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gpu({})", self.name())
    }
}
