//! Writes a GGUF v3 file tensor by tensor: the table is laid out from each tensor's type
//! and shape first, then each tensor's bytes are made and written in turn, so a model
//! larger than memory can be written. Through a temporary file and a rename.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::GgmlDType;

use super::container::dtype_id;
use crate::error::{Error, Result};

const ALIGNMENT: usize = 32;

/// A tensor to write: name, ggml type and GGUF shape (`ne0` first).
#[derive(Debug, Clone)]
pub struct Planned {
    pub name: String,
    pub dtype: GgmlDType,
    pub ne: Vec<usize>,
}

impl Planned {
    pub fn bytes(&self) -> usize {
        let elems: usize = self.ne.iter().product();
        elems / self.dtype.block_size() * self.dtype.type_size()
    }
}

fn value_type(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend(x.to_le_bytes()),
        Value::I16(x) => out.extend(x.to_le_bytes()),
        Value::U32(x) => out.extend(x.to_le_bytes()),
        Value::I32(x) => out.extend(x.to_le_bytes()),
        Value::F32(x) => out.extend(x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::String(s) => put_string(out, s),
        Value::Array(items) => {
            out.extend(items.first().map_or(4, value_type).to_le_bytes());
            out.extend((items.len() as u64).to_le_bytes());
            for item in items {
                put_value(out, item);
            }
        }
        Value::U64(x) => out.extend(x.to_le_bytes()),
        Value::I64(x) => out.extend(x.to_le_bytes()),
        Value::F64(x) => out.extend(x.to_le_bytes()),
    }
}

/// Writes `metadata` and `tensors` to `path`; `data(i)` makes tensor i's bytes (which
/// must be [`Planned::bytes`] long). Returns the file's size.
pub fn write(
    path: &Path,
    metadata: &[(String, Value)],
    tensors: &[Planned],
    mut data: impl FnMut(usize) -> Result<Vec<u8>>,
) -> Result<u64> {
    let mut head = Vec::new();
    head.extend(b"GGUF");
    head.extend(3u32.to_le_bytes());
    head.extend((tensors.len() as u64).to_le_bytes());
    head.extend((metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        if let Value::Array(items) = value {
            if items.iter().any(|i| value_type(i) != value_type(&items[0])) {
                return Err(Error::InvalidRequest(format!(
                    "GGUF key {key}: an array mixes value types"
                )));
            }
        }
        put_string(&mut head, key);
        head.extend(value_type(value).to_le_bytes());
        put_value(&mut head, value);
    }
    let mut offset = 0usize;
    for t in tensors {
        put_string(&mut head, &t.name);
        head.extend((t.ne.len() as u32).to_le_bytes());
        for &d in &t.ne {
            head.extend((d as u64).to_le_bytes());
        }
        head.extend(dtype_id(t.dtype).to_le_bytes());
        head.extend((offset as u64).to_le_bytes());
        offset = (offset + t.bytes()).next_multiple_of(ALIGNMENT);
    }
    head.resize(head.len().next_multiple_of(ALIGNMENT), 0);
    let mut size = 0u64;
    crate::files::replace_atomically(path, |tmp| {
        let file = File::create(tmp).map_err(|e| Error::io(tmp, e))?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        let io = |e| Error::io(tmp, e);
        w.write_all(&head).map_err(io)?;
        size = head.len() as u64;
        for (i, t) in tensors.iter().enumerate() {
            let bytes = data(i)?;
            if bytes.len() != t.bytes() {
                return Err(Error::InvalidRequest(format!(
                    "GGUF tensor {}: {} bytes made, {} planned",
                    t.name,
                    bytes.len(),
                    t.bytes()
                )));
            }
            let padded = bytes.len().next_multiple_of(ALIGNMENT);
            w.write_all(&bytes).map_err(io)?;
            if i + 1 < tensors.len() {
                w.write_all(&vec![0u8; padded - bytes.len()]).map_err(io)?;
                size += padded as u64;
            } else {
                size += bytes.len() as u64;
            }
        }
        w.into_inner().map_err(|e| Error::io(tmp, e.into_error()))?;
        Ok(())
    })?;
    Ok(size)
}
