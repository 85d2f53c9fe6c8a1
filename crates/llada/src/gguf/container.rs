//! The GGUF container (v2/v3, little-endian): header, metadata and tensor table parsed
//! from a memory map with every length checked against the bytes that are there, so a
//! corrupt or truncated file is an error naming the file and the item, never a panic or
//! an allocation of a size the file merely declares. Tensor data stays in the map.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::GgmlDType;
use memmap2::Mmap;

use crate::error::{Error, Result};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// More dimensions than ggml has (4) is a corrupt table.
const MAX_DIMS: u32 = 4;

/// One tensor's entry: its ggml type, its shape in GGUF order (`ne0` first, the
/// contiguous dimension) and where its bytes lie in the file.
#[derive(Debug, Clone)]
pub struct TensorEntry {
    pub dtype: GgmlDType,
    pub ne: Vec<usize>,
    pub start: usize,
    pub len: usize,
}

impl TensorEntry {
    /// The shape as Hugging Face / numpy write it (`ne` read backwards).
    pub fn hf_shape(&self) -> Vec<usize> {
        self.ne.iter().rev().copied().collect()
    }
}

/// A parsed GGUF file, mapped.
pub struct Container {
    pub path: PathBuf,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: BTreeMap<String, TensorEntry>,
    map: Mmap,
}

/// ggml type ids (ggml.h) for the block types candle's CPU kernels multiply.
pub fn dtype_from_id(id: u32) -> Option<GgmlDType> {
    Some(match id {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        30 => GgmlDType::BF16,
        _ => return None,
    })
}

/// The inverse of [`dtype_from_id`].
pub fn dtype_id(dtype: GgmlDType) -> u32 {
    match dtype {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q5_0 => 6,
        GgmlDType::Q5_1 => 7,
        GgmlDType::Q8_0 => 8,
        GgmlDType::Q8_1 => 9,
        GgmlDType::Q2K => 10,
        GgmlDType::Q3K => 11,
        GgmlDType::Q4K => 12,
        GgmlDType::Q5K => 13,
        GgmlDType::Q6K => 14,
        GgmlDType::Q8K => 15,
        GgmlDType::BF16 => 30,
    }
}

/// A reader over the mapped bytes that fails, naming what it was reading, instead of
/// running past the end.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn corrupt(&self, message: String) -> Error {
        Error::CorruptWeights {
            path: self.path.to_path_buf(),
            format: "GGUF",
            message,
        }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(self.corrupt(format!(
                "{what} at byte {} needs {n} bytes, the file has {} (truncated?)",
                self.pos,
                self.bytes.len()
            )));
        };
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count of items of at least `min_item_bytes` each: more than the rest of the file
    /// could hold is corrupt (and is refused before anything is allocated for it).
    fn count(&mut self, min_item_bytes: usize, what: &str) -> Result<usize> {
        let n = self.u64(what)?;
        let room = (self.bytes.len() - self.pos) / min_item_bytes.max(1);
        if n > room as u64 {
            return Err(self.corrupt(format!(
                "{what} is {n}, more than the {} bytes left in the file can hold",
                self.bytes.len() - self.pos
            )));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.count(1, what)?;
        let bytes = self.take(n, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.corrupt(format!("{what} is not UTF-8")))
    }

    fn value(&mut self, kind: u32, what: &str) -> Result<Value> {
        Ok(match kind {
            0 => Value::U8(self.array::<1>(what)?[0]),
            1 => Value::I8(self.array::<1>(what)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(what)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(what)?)),
            4 => Value::U32(self.u32(what)?),
            5 => Value::I32(i32::from_le_bytes(self.array(what)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(what)?)),
            7 => match self.array::<1>(what)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(self.corrupt(format!("{what}: bool byte {b}"))),
            },
            8 => Value::String(self.string(what)?),
            9 => {
                let inner = self.u32(what)?;
                if inner == 9 {
                    return Err(self.corrupt(format!("{what}: nested arrays are not GGUF")));
                }
                let n = self.count(value_min_bytes(inner), what)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(inner, what)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(what)?),
            11 => Value::I64(i64::from_le_bytes(self.array(what)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(what)?)),
            other => return Err(self.corrupt(format!("{what}: unknown value type {other}"))),
        })
    }
}

/// The fewest bytes one value of GGUF type `kind` takes.
fn value_min_bytes(kind: u32) -> usize {
    match kind {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        _ => 1,
    }
}

impl Container {
    /// Maps and parses `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: mapped read-only; as every mmap-based loader does, we rely on the file
        // not being truncated by another process while the model is loaded.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let (metadata, tensors) = parse(&map, path)?;
        Ok(Self {
            path: path.to_path_buf(),
            metadata,
            tensors,
            map,
        })
    }

    /// A tensor's bytes, in place in the map.
    pub fn bytes(&self, entry: &TensorEntry) -> &[u8] {
        &self.map[entry.start..entry.start + entry.len]
    }

    /// Tells the kernel the pages of `entry` will not be read again (their contents were
    /// copied into the kernels' layout), so they leave the resident set.
    pub fn release(&self, entry: &TensorEntry) {
        // SAFETY: the map is read-only and file-backed: dropped pages are read back from
        // the file if touched again.
        #[cfg(unix)]
        unsafe {
            let _ = self.map.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                entry.start,
                entry.len,
            );
        }
        #[cfg(not(unix))]
        let _ = entry;
    }

    pub fn string(&self, key: &str) -> Option<&str> {
        match self.metadata.get(key) {
            Some(Value::String(s)) => Some(s),
            _ => None,
        }
    }

    /// The error for this file naming `message`.
    pub fn error(&self, message: impl Into<String>) -> Error {
        Error::Gguf {
            path: self.path.clone(),
            message: message.into(),
        }
    }
}

type Parsed = (BTreeMap<String, Value>, BTreeMap<String, TensorEntry>);

fn parse(bytes: &[u8], path: &Path) -> Result<Parsed> {
    let mut c = Cursor {
        bytes,
        pos: 0,
        path,
    };
    if c.take(4, "the magic number")? != MAGIC {
        return Err(c.corrupt("not a GGUF file (no \"GGUF\" magic number)".into()));
    }
    let version = c.u32("the version")?;
    if !(2..=3).contains(&version) {
        return Err(c.corrupt(format!("GGUF version {version} (llada reads 2 and 3)")));
    }
    // A tensor entry takes at least 8 + 4 + 8 + 4 + 8 bytes, a key 8 + 4 + 1.
    let n_tensors = c.count(32, "the tensor count")?;
    let n_keys = c.count(13, "the key count")?;
    let mut metadata = BTreeMap::new();
    for i in 0..n_keys {
        let key = c.string(&format!("key {i}'s name"))?;
        let kind = c.u32(&format!("key {key}'s type"))?;
        let value = c.value(kind, &format!("key {key}"))?;
        metadata.insert(key, value);
    }
    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(Value::U32(a)) if a.is_power_of_two() && *a <= 1 << 16 => *a as u64,
        Some(Value::U32(a)) => {
            return Err(c.corrupt(format!(
                "general.alignment is {a}, not a power of two up to 65536"
            )))
        }
        Some(other) => {
            return Err(c.corrupt(format!(
                "general.alignment should be a u32, found {:?}",
                other.value_type()
            )))
        }
    };
    let mut table = Vec::with_capacity(n_tensors);
    for i in 0..n_tensors {
        let name = c.string(&format!("tensor {i}'s name"))?;
        let n_dims = c.u32(&format!("tensor {name}'s rank"))?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(c.corrupt(format!("tensor {name} has {n_dims} dimensions")));
        }
        let mut ne = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            ne.push(c.u64(&format!("tensor {name}'s shape"))?);
        }
        let kind = c.u32(&format!("tensor {name}'s type"))?;
        let offset = c.u64(&format!("tensor {name}'s offset"))?;
        table.push((name, ne, kind, offset));
    }
    let data_start = (c.pos as u64).next_multiple_of(alignment);
    let mut tensors = BTreeMap::new();
    // As ggml requires: each tensor's data follows the previous one's, padded to the
    // alignment, in table order (so no two overlap and no type is mislabelled by size).
    let mut expected_offset = 0u64;
    for (name, ne, kind, offset) in table {
        let Some(dtype) = dtype_from_id(kind) else {
            return Err(Error::Gguf {
                path: path.to_path_buf(),
                message: format!(
                    "tensor {name} has ggml type {kind}, which llada does not read \
                     (it reads F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K..Q6_K)"
                ),
            });
        };
        let elems = ne
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n > 0);
        let block = dtype.block_size() as u64;
        let Some(elems) = elems else {
            return Err(c.corrupt(format!("tensor {name} has shape {ne:?}")));
        };
        if ne[0] % block != 0 {
            return Err(c.corrupt(format!(
                "tensor {name}: rows of {} values do not divide into {dtype:?} blocks of {block}",
                ne[0]
            )));
        }
        let len = elems / block * dtype.type_size() as u64;
        if offset != expected_offset {
            return Err(c.corrupt(format!(
                "tensor {name} has data offset {offset}, expected {expected_offset} (the end of \
                 the previous tensor's data, aligned to {alignment})"
            )));
        }
        expected_offset = offset
            .checked_add(len)
            .map(|e| e.next_multiple_of(alignment))
            .unwrap_or(u64::MAX);
        let start = data_start.checked_add(offset);
        let end = start.and_then(|s| s.checked_add(len));
        match (start, end) {
            (Some(start), Some(end)) if end <= bytes.len() as u64 => {
                let ne = ne.iter().map(|&d| d as usize).collect();
                let entry = TensorEntry {
                    dtype,
                    ne,
                    start: start as usize,
                    len: len as usize,
                };
                if tensors.insert(name.clone(), entry).is_some() {
                    return Err(c.corrupt(format!("tensor {name} appears twice")));
                }
            }
            _ => {
                return Err(c.corrupt(format!(
                    "tensor {name}'s {len} bytes at offset {offset} lie past the end of the file \
                     ({} bytes; truncated?)",
                    bytes.len()
                )))
            }
        }
    }
    Ok((metadata, tensors))
}
