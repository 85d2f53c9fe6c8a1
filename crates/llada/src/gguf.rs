//! Quantized checkpoints: `llada quantize` writes the weights of a model folder as one
//! GGUF file (`model.gguf`, tensors under their HF names, linear layers in q8_0/q4k
//! blocks, everything else f32) next to copies of its config and tokenizer files, so the
//! next load needs no quantization pass. Such a folder loads like any other.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use crate::error::{Error, Result};
use crate::model::is_linear_weight;
use crate::quant::{LinearWeight, Quant};
use crate::weights::{WeightSource, WeightStore};

pub const GGUF_FILE: &str = "model.gguf";
const QUANT_KEY: &str = "llada.quantization";

/// What [`quantize_checkpoint`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizeReport {
    pub path: PathBuf,
    pub tensors: usize,
    pub quantized: usize,
    pub bytes: u64,
}

/// Quantizes the model in `src` into `out` (created if needed). The GGUF file is written
/// atomically ([`crate::files`]), so an interrupted run leaves no partial model.
pub fn quantize_checkpoint(src: &Path, out: &Path, quant: Quant) -> Result<QuantizeReport> {
    crate::config::ModelFiles::open(src)?;
    let store = WeightStore::open(src, &Device::Cpu, candle_core::DType::F32)?;
    let mut tensors = Vec::new();
    let mut quantized = 0;
    for (name, shape) in store.tensor_shapes() {
        let t = store.get(&name, &shape)?;
        let dtype = match (is_linear_weight(&name), shape.as_slice()) {
            (true, [_, cols]) => quant.dtype_for(*cols),
            _ => None,
        };
        let q = match dtype {
            Some(d) => {
                quantized += 1;
                QTensor::quantize(&t, d)?
            }
            None => QTensor::quantize(&t, GgmlDType::F32)?,
        };
        tensors.push((name, q));
    }
    crate::files::copy_companion_files(src, out)?;
    let path = out.join(GGUF_FILE);
    crate::files::replace_atomically(&path, |tmp| {
        let file = File::create(tmp).map_err(|e| Error::io(tmp, e))?;
        let mut w = BufWriter::new(file);
        let arch = Value::String("llada2_moe".into());
        let q = Value::String(quant.name().into());
        let metadata = [("general.architecture", &arch), (QUANT_KEY, &q)];
        let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        gguf_file::write(&mut w, &metadata, &refs)?;
        w.into_inner().map_err(|e| Error::io(tmp, e.into_error()))?;
        Ok(())
    })?;
    let bytes = std::fs::metadata(&path)
        .map_err(|e| Error::io(&path, e))?
        .len();
    Ok(QuantizeReport {
        path,
        tensors: tensors.len(),
        quantized,
        bytes,
    })
}

/// Reads tensors from a `model.gguf` written by [`quantize_checkpoint`].
pub struct GgufStore {
    path: PathBuf,
    content: gguf_file::Content,
    file: Mutex<BufReader<File>>,
    device: Device,
}

impl GgufStore {
    pub fn open(dir: &Path, device: &Device) -> Result<Self> {
        let path = dir.join(GGUF_FILE);
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        let mut reader = BufReader::new(file);
        let content = gguf_file::Content::read(&mut reader).map_err(|e| Error::CorruptWeights {
            path: path.clone(),
            format: "GGUF",
            message: crate::error::message(e),
        })?;
        Ok(Self {
            path,
            content,
            file: Mutex::new(reader),
            device: device.clone(),
        })
    }

    /// The quantization recorded in the file.
    pub fn quantization(&self) -> Option<String> {
        match self.content.metadata.get(QUANT_KEY) {
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        }
    }

    fn qtensor(&self, name: &str, shape: &[usize]) -> Result<Option<QTensor>> {
        let Some(info) = self.content.tensor_infos.get(name) else {
            return Ok(None);
        };
        if info.shape.dims() != shape {
            return Err(Error::ShapeMismatch {
                name: name.to_string(),
                expected: shape.to_vec(),
                found: info.shape.dims().to_vec(),
            });
        }
        let mut file = self.file.lock().expect("gguf reader lock");
        let q = self
            .content
            .tensor(&mut *file, name, &self.device)
            .map_err(|e| Error::CorruptWeights {
                path: self.path.clone(),
                format: "GGUF",
                message: format!("{name}: {}", crate::error::message(e)),
            })?;
        Ok(Some(q))
    }
}

impl WeightSource for GgufStore {
    fn device(&self) -> &Device {
        &self.device
    }

    fn contains(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    fn get_optional(&self, name: &str, shape: &[usize]) -> Result<Option<Tensor>> {
        match self.qtensor(name, shape)? {
            Some(q) => Ok(Some(q.dequantize(&self.device)?)),
            None => Ok(None),
        }
    }

    fn missing(&self, name: &str) -> Error {
        Error::MissingTensor {
            name: name.to_string(),
            dir: self.path.clone(),
        }
    }

    /// Stored blocks are used as they are; `quant` was chosen when the file was written.
    fn get_linear(
        &self,
        name: &str,
        shape: [usize; 2],
        _quant: Option<Quant>,
    ) -> Result<LinearWeight> {
        let q = self
            .qtensor(name, &shape)?
            .ok_or_else(|| self.missing(name))?;
        if matches!(q.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16) {
            return LinearWeight::new(q.dequantize(&self.device)?, None, None);
        }
        LinearWeight::from_qtensor(q, None)
    }
}
