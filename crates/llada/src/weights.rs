//! Safetensors checkpoints: one file or HF shards (`model.safetensors.index.json`),
//! memory-mapped, every tensor checked for presence, shape and dtype before use.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::safetensors::{Load, MmapedSafetensors, SliceSafetensors};
use candle_core::{DType, Device, Tensor};
use safetensors::Dtype;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::quant::{LinearWeight, Quant};

/// Where a model's tensors come from: checkpoint files, a quantized GGUF, or random
/// weights of the right shapes (for benchmarks). Names are the HF tensor names.
pub trait WeightSource {
    fn device(&self) -> &Device;

    fn contains(&self, name: &str) -> bool;

    /// Loads `name` in f32 if the source has it; a wrong shape or dtype is an error.
    fn get_optional(&self, name: &str, shape: &[usize]) -> Result<Option<Tensor>>;

    /// The error for a tensor the checkpoint should have but lacks.
    fn missing(&self, name: &str) -> Error;

    /// Loads `name`, which must exist with exactly `shape`.
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.get_optional(name, shape)?
            .ok_or_else(|| self.missing(name))
    }

    /// Loads the matrix `name` (`[out, in]`) for a linear layer, quantized if asked.
    fn get_linear(
        &self,
        name: &str,
        shape: [usize; 2],
        quant: Option<Quant>,
    ) -> Result<LinearWeight> {
        LinearWeight::new(self.get(name, &shape)?, None, quant)
    }
}

pub const SINGLE_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// The weights of one model folder, opened lazily: tensors are read when asked for.
pub struct WeightStore {
    dir: PathBuf,
    files: Vec<(PathBuf, Backing)>,
    routing: HashMap<String, usize>,
    device: Device,
    dtype: DType,
}

/// A safetensors file mapped from disk, or bytes that live as long as the program.
enum Backing {
    Mapped(MmapedSafetensors),
    Static(SliceSafetensors<'static>),
}

impl Backing {
    fn tensors(&self) -> Vec<(String, safetensors::tensor::TensorView<'_>)> {
        match self {
            Backing::Mapped(st) => st.tensors(),
            Backing::Static(st) => st.tensors(),
        }
    }

    fn get(&self, name: &str) -> candle_core::Result<safetensors::tensor::TensorView<'_>> {
        match self {
            Backing::Mapped(st) => st.get(name),
            Backing::Static(st) => st.get(name),
        }
    }
}

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: HashMap<String, String>,
}

impl WeightStore {
    /// Opens `model.safetensors` or every shard named by `model.safetensors.index.json`.
    /// Tensors are returned in `dtype` (f32 for CPU compute).
    pub fn open(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let index_path = dir.join(INDEX_FILE);
        let single = dir.join(SINGLE_FILE);
        let paths: Vec<PathBuf> = if index_path.exists() {
            let text =
                std::fs::read_to_string(&index_path).map_err(|e| Error::io(&index_path, e))?;
            let index: ShardIndex = serde_json::from_str(&text).map_err(|source| Error::Json {
                path: index_path.clone(),
                what: "a safetensors shard index",
                source,
            })?;
            let shards: BTreeSet<&String> = index.weight_map.values().collect();
            let mut paths = Vec::with_capacity(shards.len());
            for shard in shards {
                let path = dir.join(shard);
                if !path.is_file() {
                    return Err(Error::MissingShard {
                        index: index_path.clone(),
                        shard: path,
                    });
                }
                paths.push(path);
            }
            paths
        } else if single.is_file() {
            vec![single]
        } else {
            return Err(Error::NoWeights {
                dir: dir.to_path_buf(),
            });
        };

        let mut files = Vec::with_capacity(paths.len());
        for path in paths {
            // SAFETY: the file is mapped read-only; like every mmap-based loader we rely on
            // it not being truncated by another process while the model is loaded.
            let st =
                unsafe { MmapedSafetensors::new(&path) }.map_err(|e| Error::CorruptWeights {
                    path: path.clone(),
                    format: "safetensors",
                    message: crate::error::message(e),
                })?;
            files.push((path, Backing::Mapped(st)));
        }
        Ok(Self::new(dir, files, device, dtype))
    }

    /// Reads a safetensors file held in memory for the whole run (`origin` names it in
    /// errors).
    pub fn from_static(
        bytes: &'static [u8],
        origin: &Path,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let path = origin.join(SINGLE_FILE);
        let st = SliceSafetensors::new(bytes).map_err(|e| Error::CorruptWeights {
            path: path.clone(),
            format: "safetensors",
            message: crate::error::message(e),
        })?;
        Ok(Self::new(
            origin,
            vec![(path, Backing::Static(st))],
            device,
            dtype,
        ))
    }

    fn new(dir: &Path, files: Vec<(PathBuf, Backing)>, device: &Device, dtype: DType) -> Self {
        let mut routing = HashMap::new();
        for (i, (_, st)) in files.iter().enumerate() {
            for (name, _) in st.tensors() {
                routing.insert(name, i);
            }
        }
        Self {
            dir: dir.to_path_buf(),
            files,
            routing,
            device: device.clone(),
            dtype,
        }
    }

    /// The element type the checkpoint stores its weights in: that of its embedding
    /// matrix, or of any tensor if it has none (f32 for an empty checkpoint).
    pub fn stored_dtype(&self) -> DType {
        let pick = |name: &str| {
            let &file = self.routing.get(name)?;
            let view = self.files[file].1.get(name).ok()?;
            DType::try_from(view.dtype()).ok()
        };
        pick("model.word_embeddings.weight")
            .or_else(|| self.routing.keys().find_map(|n| pick(n)))
            .unwrap_or(DType::F32)
    }

    /// Every tensor's name and shape, sorted by name.
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let mut out: Vec<(String, Vec<usize>)> = self
            .files
            .iter()
            .flat_map(|(_, st)| st.tensors())
            .filter(|(name, _)| self.routing.contains_key(name))
            .map(|(name, view)| (name, view.shape().to_vec()))
            .collect();
        out.sort();
        out.dedup_by(|a, b| a.0 == b.0);
        out
    }
}

impl WeightSource for WeightStore {
    fn device(&self) -> &Device {
        &self.device
    }

    fn contains(&self, name: &str) -> bool {
        self.routing.contains_key(name)
    }

    fn missing(&self, name: &str) -> Error {
        Error::MissingTensor {
            name: name.to_string(),
            dir: self.dir.clone(),
        }
    }

    fn get_optional(&self, name: &str, shape: &[usize]) -> Result<Option<Tensor>> {
        let Some(&file) = self.routing.get(name) else {
            return Ok(None);
        };
        let (path, st) = &self.files[file];
        let view = st.get(name).map_err(|e| Error::CorruptWeights {
            path: path.clone(),
            format: "safetensors",
            message: crate::error::message(e),
        })?;
        if !matches!(view.dtype(), Dtype::F32 | Dtype::BF16 | Dtype::F16) {
            return Err(Error::UnsupportedDtype {
                name: name.to_string(),
                dtype: format!("{:?}", view.dtype()),
            });
        }
        if view.shape() != shape {
            return Err(Error::ShapeMismatch {
                name: name.to_string(),
                expected: shape.to_vec(),
                found: view.shape().to_vec(),
            });
        }
        let tensor = view.load(&self.device)?.to_dtype(self.dtype)?;
        Ok(Some(tensor))
    }
}
