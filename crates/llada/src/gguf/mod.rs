//! GGUF files: the llama.cpp-style `llada2` layout others publish LLaDA2 models in (one
//! file, or llama.cpp's `-0000k-of-0000n.gguf` splits, is a whole model: config keys,
//! weights, tokenizer, chat template), and the folders older llada versions wrote
//! (`model.gguf` with Hugging Face tensor names beside a config.json), read through one
//! store. `llada quantize` writes the `llada2` layout ([`write_llada2`]).
//!
//! Tensors are read from a memory map: each is copied once into the layout llada's
//! kernels multiply, and its mapped pages are released at once, so a load needs the
//! model's size in memory, not twice it.

pub mod container;
pub mod layout;
pub mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::ggml_file::qtensor_from_ggml;
use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

use crate::config::Llada2Config;
use crate::error::{Error, Result};
use crate::kernels::Q8Matrix;
use crate::quant::{LinearWeight, Quant};
use crate::weights::WeightSource;
use container::{Container, TensorEntry};
use layout::Location;

/// The weights file of a folder written by older `llada quantize` versions.
pub const GGUF_FILE: &str = "model.gguf";
/// Written by those versions: the linear layers' block type.
const QUANT_KEY: &str = "llada.quantization";

/// What [`write_llada2`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizeReport {
    pub path: PathBuf,
    pub tensors: usize,
    pub quantized: usize,
    pub bytes: u64,
}

/// How a file names its tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Naming {
    /// llama.cpp's `llada2` layout: `blk.N.*`, experts stacked.
    Llada2,
    /// Older llada files: the Hugging Face names.
    HuggingFace,
}

/// The split files of `path` as llama.cpp names them (`name-00001-of-00003.gguf`), in
/// order; just `path` for a single file.
fn split_paths(path: &Path) -> Result<Vec<PathBuf>> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let Some(stem) = name.strip_suffix(".gguf") else {
        return Ok(vec![path.to_path_buf()]);
    };
    let parts: Vec<&str> = stem.rsplitn(4, '-').collect();
    let (Some(count), Some("of"), Some(no), Some(base)) = (
        parts.first().copied(),
        parts.get(1).copied(),
        parts.get(2).copied(),
        parts.get(3).copied(),
    ) else {
        return Ok(vec![path.to_path_buf()]);
    };
    let digits = |s: &str| s.len() == 5 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(count) || !digits(no) {
        return Ok(vec![path.to_path_buf()]);
    }
    let n: usize = count.parse().unwrap_or(0);
    let paths: Vec<PathBuf> = (1..=n)
        .map(|i| path.with_file_name(format!("{base}-{i:05}-of-{count}.gguf")))
        .collect();
    if let Some(missing) = paths.iter().find(|p| !p.is_file()) {
        return Err(Error::Gguf {
            path: path.to_path_buf(),
            message: format!("split {} of the {n} is missing", missing.display()),
        });
    }
    Ok(paths)
}

/// A model's GGUF file(s), mapped, tensors looked up by Hugging Face name.
pub struct GgufStore {
    parts: Vec<Container>,
    /// Tensor name → the part holding it.
    index: HashMap<String, usize>,
    naming: Naming,
    device: Device,
}

impl GgufStore {
    /// Opens `path` and, if its name says it is one split of several, all of them.
    pub fn open_file(path: &Path, device: &Device) -> Result<Self> {
        let mut parts = Vec::new();
        for p in split_paths(path)? {
            parts.push(Container::open(&p)?);
        }
        let mut index = HashMap::new();
        for (i, part) in parts.iter().enumerate() {
            for name in part.tensors.keys() {
                if index.insert(name.clone(), i).is_some() {
                    return Err(part.error(format!("tensor {name} is in two split files")));
                }
            }
        }
        let head = &parts[0];
        let count = match head.metadata.get("split.count") {
            Some(Value::U16(n)) => Some(*n as usize),
            Some(Value::U32(n)) => Some(*n as usize),
            _ => None,
        };
        if count.is_some_and(|n| n != parts.len()) || (count.is_none() && parts.len() > 1) {
            return Err(head.error(format!(
                "split.count is {count:?}, but the file names say {} splits",
                parts.len()
            )));
        }
        let naming = match head.string("general.architecture") {
            Some(layout::ARCH) => Naming::Llada2,
            Some(crate::config::MODEL_TYPE) => Naming::HuggingFace,
            Some(other) => {
                return Err(head.error(format!(
                    "general.architecture is {other:?}; llada reads \"{}\" files (LLaDA2.x)",
                    layout::ARCH
                )))
            }
            None => return Err(head.error("general.architecture is missing")),
        };
        Ok(Self {
            parts,
            index,
            naming,
            device: device.clone(),
        })
    }

    /// Opens a folder's `model.gguf`.
    pub fn open(dir: &Path, device: &Device) -> Result<Self> {
        Self::open_file(&dir.join(GGUF_FILE), device)
    }

    /// The first (or only) file: its metadata describes the model.
    pub fn head(&self) -> &Container {
        &self.parts[0]
    }

    /// The config the file's `llada2.*` keys describe (a folder's older file has none:
    /// its config.json does).
    /// The file's tensors must be exactly the ones that config reads: a layer count
    /// larger than the file, a stray or missing tensor is an error naming it (checked
    /// before anything is allocated for the model).
    pub fn config(&self) -> Result<Llada2Config> {
        let cfg = layout::config(self.head(), &|name| {
            let &part = self.index.get(name)?;
            self.parts[part].tensors.get(name)
        })?;
        if self.naming == Naming::Llada2 {
            self.check_tensor_set(&cfg)?;
        }
        Ok(cfg)
    }

    fn check_tensor_set(&self, cfg: &Llada2Config) -> Result<()> {
        let head = self.head();
        // Cheap first: a layer count beyond the file fails at its first missing layer.
        for n in 0..cfg.num_hidden_layers {
            let name = format!("blk.{n}.attn_qkv.weight");
            if !self.index.contains_key(&name) {
                return Err(head.error(format!(
                    "{}.block_count is {}, but tensor {name} is missing",
                    layout::ARCH,
                    cfg.num_hidden_layers
                )));
            }
        }
        let mut wanted = std::collections::BTreeSet::new();
        for (hf, _, _) in layout::hf_tensors(cfg, self) {
            if let Some(loc) = layout::locate(&hf) {
                wanted.insert(loc.tensor);
            }
        }
        if let Some(missing) = wanted.iter().find(|n| !self.index.contains_key(*n)) {
            return Err(head.error(format!("tensor {missing} is missing")));
        }
        let mut stray: Vec<&String> = self.index.keys().filter(|n| !wanted.contains(*n)).collect();
        stray.sort();
        if let Some(first) = stray.first() {
            return Err(head.error(format!(
                "tensor {first} is not part of the model its keys describe{}",
                if stray.len() > 1 {
                    format!(" ({} such tensors)", stray.len())
                } else {
                    String::new()
                }
            )));
        }
        Ok(())
    }

    /// The block type the linear layers are stored in: older files record it; a
    /// `llada2` file's `general.file_type` says it, and so does its attention matrix.
    pub fn quantization(&self) -> Option<String> {
        match self.head().metadata.get(QUANT_KEY) {
            Some(Value::String(s)) => Some(s.clone()),
            _ => self
                .entry("model.layers.0.attention.query_key_value.weight")
                .map(|(_, e, _)| dtype_name(e.dtype).to_string()),
        }
    }

    /// The tensor holding `hf`, and the expert slab within it if it is stacked.
    fn entry(&self, hf: &str) -> Option<(&Container, &TensorEntry, Option<usize>)> {
        let loc = match self.naming {
            Naming::HuggingFace => Location {
                tensor: hf.to_string(),
                expert: None,
            },
            Naming::Llada2 => layout::locate(hf)?,
        };
        let &part = self.index.get(&loc.tensor)?;
        let c = &self.parts[part];
        Some((c, c.tensors.get(&loc.tensor)?, loc.expert))
    }

    /// The ggml type and bytes of `hf` (`[rows, cols]` or 1-D `shape`), checked against
    /// the shape the config implies.
    fn raw(&self, hf: &str, shape: &[usize]) -> Result<Option<(GgmlDType, &[u8], Release<'_>)>> {
        let Some((c, entry, expert)) = self.entry(hf) else {
            return Ok(None);
        };
        let found = entry.hf_shape();
        let (ok, range) = match expert {
            None => (found == shape, 0..entry.len),
            Some(e) => {
                // [experts, rows, cols]: slab e.
                let slab = entry.len / found[0].max(1);
                let ok = found.len() == 3 && e < found[0] && found[1..] == *shape;
                (ok, e * slab..(e + 1) * slab)
            }
        };
        if !ok {
            let expected = match expert {
                None => format!("{shape:?}"),
                Some(_) => format!(
                    "[{}, {}, {}]",
                    layout::expert_count(self.head()),
                    shape[0],
                    shape[1]
                ),
            };
            return Err(c.error(format!(
                "tensor {} has shape {found:?} (HF order, GGUF's read backwards), but the model's \
                 keys imply {expected}",
                self.entry_name(hf),
            )));
        }
        let bytes = &c.bytes(entry)[range];
        Ok(Some((entry.dtype, bytes, Release { c, entry })))
    }

    fn entry_name(&self, hf: &str) -> String {
        match self.naming {
            Naming::HuggingFace => hf.to_string(),
            Naming::Llada2 => layout::locate(hf).map_or(hf.to_string(), |l| l.tensor),
        }
    }

    fn qtensor(
        &self,
        dtype: GgmlDType,
        bytes: &[u8],
        shape: &[usize],
        hf: &str,
    ) -> Result<QTensor> {
        // candle reads the blocks in place as typed values: give it aligned bytes.
        let aligned;
        let bytes = if (bytes.as_ptr() as usize).is_multiple_of(8) {
            bytes
        } else {
            aligned = AlignedBytes::copy(bytes);
            aligned.as_slice()
        };
        qtensor_from_ggml(dtype, bytes, shape.to_vec(), &self.device).map_err(|e| Error::Gguf {
            path: self.head().path.clone(),
            message: format!(
                "tensor {}: {}",
                self.entry_name(hf),
                crate::error::message(e)
            ),
        })
    }
}

/// Releases a tensor's mapped pages when its bytes have been copied.
struct Release<'a> {
    c: &'a Container,
    entry: &'a TensorEntry,
}

impl Release<'_> {
    fn done(self) {
        self.c.release(self.entry);
    }
}

/// Bytes copied to an 8-byte aligned buffer.
struct AlignedBytes(Vec<u64>, usize);

impl AlignedBytes {
    fn copy(bytes: &[u8]) -> Self {
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..bytes.len()].copy_from_slice(bytes);
        Self(words, bytes.len())
    }

    fn as_slice(&self) -> &[u8] {
        &bytemuck::cast_slice(&self.0)[..self.1]
    }
}

/// "q8_0", "q4_k", "f32", ... as llama.cpp names the types.
pub fn dtype_name(dtype: GgmlDType) -> &'static str {
    match dtype {
        GgmlDType::F32 => "f32",
        GgmlDType::F16 => "f16",
        GgmlDType::BF16 => "bf16",
        GgmlDType::Q4_0 => "q4_0",
        GgmlDType::Q4_1 => "q4_1",
        GgmlDType::Q5_0 => "q5_0",
        GgmlDType::Q5_1 => "q5_1",
        GgmlDType::Q8_0 => "q8_0",
        GgmlDType::Q8_1 => "q8_1",
        GgmlDType::Q2K => "q2_k",
        GgmlDType::Q3K => "q3_k",
        GgmlDType::Q4K => "q4k",
        GgmlDType::Q5K => "q5_k",
        GgmlDType::Q6K => "q6_k",
        GgmlDType::Q8K => "q8_k",
    }
}

/// f32 / f16 / bf16 bytes as a tensor of that type.
fn dense(dtype: GgmlDType, bytes: &[u8], shape: &[usize], device: &Device) -> Result<Tensor> {
    let dt = match dtype {
        GgmlDType::F32 => DType::F32,
        GgmlDType::F16 => DType::F16,
        _ => DType::BF16,
    };
    Ok(Tensor::from_raw_buffer(bytes, dt, shape, device)?)
}

impl WeightSource for GgufStore {
    fn device(&self) -> &Device {
        &self.device
    }

    fn contains(&self, name: &str) -> bool {
        self.entry(name).is_some()
    }

    fn get_optional(&self, name: &str, shape: &[usize]) -> Result<Option<Tensor>> {
        let Some((dtype, bytes, release)) = self.raw(name, shape)? else {
            return Ok(None);
        };
        let t = match dtype {
            GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => {
                dense(dtype, bytes, shape, &self.device)?.to_dtype(DType::F32)?
            }
            _ => self
                .qtensor(dtype, bytes, shape, name)?
                .dequantize(&self.device)?,
        };
        release.done();
        Ok(Some(t))
    }

    fn missing(&self, name: &str) -> Error {
        Error::Gguf {
            path: self.head().path.clone(),
            message: format!(
                "tensor {} (the model's {name}) is missing",
                self.entry_name(name)
            ),
        }
    }

    /// Blocks are used as they are stored (the file's types were chosen when it was
    /// written); `quant` applies to matrices stored dense.
    fn get_linear(
        &self,
        name: &str,
        shape: [usize; 2],
        quant: Option<Quant>,
    ) -> Result<LinearWeight> {
        let (dtype, bytes, release) = self.raw(name, &shape)?.ok_or_else(|| self.missing(name))?;
        let weight = match dtype {
            GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => {
                let t = dense(dtype, bytes, &shape, &self.device)?.to_dtype(DType::F32)?;
                LinearWeight::new(t, None, quant)?
            }
            GgmlDType::Q8_0 => match Q8Matrix::from_ggml(bytes, shape[0], shape[1]) {
                Some(m) => LinearWeight::Q8 {
                    weight: Arc::new(m),
                    bias: None,
                },
                None => {
                    LinearWeight::from_qtensor(self.qtensor(dtype, bytes, &shape, name)?, None)?
                }
            },
            _ => LinearWeight::from_qtensor(self.qtensor(dtype, bytes, &shape, name)?, None)?,
        };
        release.done();
        Ok(weight)
    }
}

/// What a `llada2` file carries besides the weights: the tokenizer's metadata, the
/// special ids, a name.
pub type Metadata = Vec<(String, Value)>;

/// Writes the model `src` holds (shapes from `cfg`, Hugging Face names) as one `llada2`
/// GGUF file: linear layers in `quant`'s blocks as [`LinearWeight::new`] quantizes them
/// at load (rows the block does not divide stay f32), everything else f32; experts
/// stacked. `extra` is added to the metadata (tokenizer, special ids).
pub fn write_llada2(
    path: &Path,
    cfg: &Llada2Config,
    src: &dyn WeightSource,
    quant: Option<Quant>,
    extra: Metadata,
) -> Result<QuantizeReport> {
    let tensors = layout::hf_tensors(cfg, src);
    // GGUF tensors in order, each with the HF tensors it holds (several for a stack).
    let mut planned: Vec<writer::Planned> = Vec::new();
    let mut members: Vec<Vec<(String, Vec<usize>, bool)>> = Vec::new();
    let mut main = GgmlDType::F32;
    for (hf, shape, linear) in tensors {
        let loc = layout::locate(&hf).ok_or_else(|| {
            Error::InvalidRequest(format!("{hf} has no place in the llada2 GGUF layout"))
        })?;
        let dtype = match (linear, shape.as_slice()) {
            (true, [_, cols]) => quant.and_then(|q| q.dtype_for(*cols)),
            _ => None,
        }
        .unwrap_or(GgmlDType::F32);
        if hf.contains("attention.query_key_value") {
            main = dtype;
        }
        let mut ne: Vec<usize> = shape.iter().rev().copied().collect();
        match planned.last_mut() {
            Some(last) if loc.expert.is_some() && last.name == loc.tensor => {
                *last.ne.last_mut().expect("a stacked tensor is 3-D") += 1;
            }
            _ => {
                if loc.expert.is_some() {
                    ne.push(1);
                }
                planned.push(writer::Planned {
                    name: loc.tensor,
                    dtype,
                    ne,
                });
                members.push(Vec::new());
            }
        }
        members
            .last_mut()
            .expect("pushed")
            .push((hf, shape, linear));
    }
    let quantized = planned.iter().filter(|p| p.dtype != GgmlDType::F32).count();
    let mut metadata = vec![
        ("general.type".to_string(), Value::String("model".into())),
        (
            "general.file_type".to_string(),
            Value::U32(layout::file_type(main)),
        ),
        ("general.quantization_version".to_string(), Value::U32(2)),
    ];
    metadata.splice(0..0, layout::metadata(cfg));
    metadata.extend(extra);
    let bytes = writer::write(path, &metadata, &planned, |i| {
        let mut out = Vec::with_capacity(planned[i].bytes());
        for (hf, shape, linear) in &members[i] {
            let (dtype, bytes) = tensor_bytes(src, hf, shape, *linear, quant)?;
            if dtype != planned[i].dtype {
                return Err(Error::InvalidRequest(format!(
                    "{hf} came out as {dtype:?}, {:?} was planned",
                    planned[i].dtype
                )));
            }
            out.extend(bytes);
        }
        Ok(out)
    })?;
    Ok(QuantizeReport {
        path: path.to_path_buf(),
        tensors: planned.len(),
        quantized,
        bytes,
    })
}

/// One HF tensor's ggml type and bytes as [`write_llada2`] stores it.
fn tensor_bytes(
    src: &dyn WeightSource,
    hf: &str,
    shape: &[usize],
    linear: bool,
    quant: Option<Quant>,
) -> Result<(GgmlDType, Vec<u8>)> {
    let f32_bytes = |values: Vec<f32>| bytemuck::cast_slice::<f32, u8>(&values).to_vec();
    if let (true, &[rows, cols]) = (linear, shape) {
        let w = src.get_linear(hf, [rows, cols], quant)?;
        if let Some(blocks) = w.ggml_blocks()? {
            return Ok(blocks);
        }
        if let Some(values) = w.dense_values()? {
            return Ok((GgmlDType::F32, f32_bytes(values)));
        }
        return Err(Error::InvalidRequest(format!("{hf}: no bytes to write")));
    }
    let t = src.get(hf, shape)?.to_dtype(DType::F32)?.flatten_all()?;
    Ok((GgmlDType::F32, f32_bytes(t.to_vec1::<f32>()?)))
}

/// Quantizes the model folder `src` into the folder `out`: `model.gguf` in the `llada2`
/// layout ([`write_llada2`]) next to copies of its config and tokenizer files, so the
/// next load needs no quantization pass. Such a folder loads like any other.
pub fn quantize_checkpoint(src: &Path, out: &Path, quant: Quant) -> Result<QuantizeReport> {
    let files = crate::config::ModelFiles::open(src)?;
    let store = crate::weights::WeightStore::open(src, &Device::Cpu, DType::F32)?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let report = write_llada2(
        &out.join(GGUF_FILE),
        &files.config,
        &store,
        Some(quant),
        Vec::new(),
    )?;
    crate::files::copy_companion_files(src, out)?;
    Ok(report)
}
