//! Key/value cache for finished blocks.
//!
//! Under the block-causal mask a finished block never sees later tokens, so its keys and
//! values are final the moment its tokens are: they are computed once and reused by every
//! later step. Only complete blocks (and whole prompt blocks) are ever committed.
//!
//! Each layer keeps one preallocated buffer `[kv_heads, capacity, head_dim]`. A step
//! writes its new keys/values right after the committed ones and attends over a view of
//! the buffer, so no step copies the cache; committing is just advancing the length over
//! entries that are already in place.

use candle_core::{DType, Result, Tensor};

/// The number format the cache keeps keys and values in. f32 is exact (the reference's
/// numerics); f16 and bf16 halve the cache (a 128K-token context of LLaDA2.2-mini: 5 GiB
/// instead of 10), and attention reads them back as f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KvDtype {
    #[default]
    F32,
    F16,
    Bf16,
}

impl KvDtype {
    pub fn named(name: &str) -> crate::Result<Self> {
        match name {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            "bf16" => Ok(Self::Bf16),
            other => Err(crate::Error::param(
                "kv_cache",
                format!("unknown KV cache type {other:?} (use f32, f16 or bf16)"),
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
        }
    }

    pub fn bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::Bf16 => 2,
        }
    }

    fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::F16 => DType::F16,
            Self::Bf16 => DType::BF16,
        }
    }
}

/// Memory the system can still give this process (Linux: `MemAvailable`), if known.
pub fn available_memory() -> Option<u64> {
    proc_bytes("/proc/meminfo", "MemAvailable:")
}

/// A `KEY: N kB` line of a Linux `/proc` file, in bytes.
pub(crate) fn proc_bytes(path: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[derive(Debug, Clone)]
struct LayerKv {
    k: Tensor,
    v: Tensor,
}

impl LayerKv {
    /// Keys and values of positions `0..positions`, as f32.
    fn view(&self, positions: usize) -> Result<(Tensor, Tensor)> {
        let (k, v) = (
            self.k.narrow(1, 0, positions)?,
            self.v.narrow(1, 0, positions)?,
        );
        Ok(match k.dtype() {
            DType::F32 => (k, v),
            _ => (k.to_dtype(DType::F32)?, v.to_dtype(DType::F32)?),
        })
    }

    /// `t` as this buffer stores it.
    fn stored(&self, t: &Tensor) -> Result<Tensor> {
        t.to_dtype(self.k.dtype())?.contiguous()
    }
}

/// The cache of one sequence: one buffer per layer, all holding the same positions
/// (in host memory, or on the device of the backend that runs the sequence).
pub struct KvCache {
    layers: Vec<Option<LayerKv>>,
    len: usize,
    capacity_hint: usize,
    dtype: KvDtype,
    /// A device backend's buffers for this sequence (see [`KvCache::device_state`]).
    device: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl std::fmt::Debug for KvCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvCache")
            .field("len", &self.len)
            .field("layers", &self.layers.len())
            .field("on_device", &self.device.is_some())
            .finish()
    }
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        Self::with_capacity(num_layers, 0)
    }

    /// A cache that will not reallocate below `positions`.
    pub fn with_capacity(num_layers: usize, positions: usize) -> Self {
        Self::with_capacity_as(num_layers, positions, KvDtype::F32)
    }

    /// A cache for `positions` up front that keeps keys/values as `dtype`.
    pub fn with_capacity_as(num_layers: usize, positions: usize, dtype: KvDtype) -> Self {
        Self {
            layers: vec![None; num_layers],
            len: 0,
            capacity_hint: positions,
            dtype,
            device: None,
        }
    }

    pub fn dtype(&self) -> KvDtype {
        self.dtype
    }

    pub(crate) fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Positions the buffers are sized for up front.
    pub(crate) fn capacity_hint(&self) -> usize {
        self.capacity_hint
    }

    /// A device backend's state for this sequence (its buffers), created on first use.
    pub(crate) fn device_state<T: std::any::Any + Send + Sync + Default>(&mut self) -> &mut T {
        let fresh = !self.device.as_ref().is_some_and(|d| d.is::<T>());
        if fresh {
            self.device = Some(Box::new(T::default()));
        }
        self.device
            .as_mut()
            .and_then(|d| d.downcast_mut::<T>())
            .expect("created above")
    }

    /// Number of committed positions (always the positions `0..len`).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Writes `k`/`v` (`[kv_heads, n, head_dim]`) of the tokens being computed after the
    /// committed positions and returns views of keys and values for positions
    /// `0..len + n`. The new entries become part of the cache only through
    /// [`KvCache::advance`].
    pub(crate) fn write_and_view(
        &mut self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let n = k.dim(1)?;
        let needed = self.len + n;
        let entry = &mut self.layers[layer];
        let capacity = entry.as_ref().map_or(0, |kv| kv.k.dim(1).unwrap_or(0));
        if capacity < needed {
            let new_capacity = needed.max(2 * capacity).max(self.capacity_hint);
            let dtype = self.dtype.dtype();
            let grow = |old: Option<&Tensor>, new: &Tensor| -> Result<Tensor> {
                let (heads, _, dim) = new.dims3()?;
                let buf = Tensor::zeros((heads, new_capacity, dim), dtype, new.device())?;
                if let Some(old) = old {
                    if self.len > 0 {
                        buf.slice_set(&old.narrow(1, 0, self.len)?.contiguous()?, 1, 0)?;
                    }
                }
                Ok(buf)
            };
            let kv = LayerKv {
                k: grow(entry.as_ref().map(|e| &e.k), k)?,
                v: grow(entry.as_ref().map(|e| &e.v), v)?,
            };
            *entry = Some(kv);
        }
        let kv = entry.as_ref().expect("allocated above");
        kv.k.slice_set(&kv.stored(k)?, 1, self.len)?;
        kv.v.slice_set(&kv.stored(v)?, 1, self.len)?;
        kv.view(needed)
    }

    /// For approximate block caching: `k`/`v` (`[kv_heads, rows.len(), head_dim]`) hold
    /// only the rows `rows` (increasing) of a step of `total` positions after the
    /// committed ones; each is written at its position, the other positions keep what an
    /// earlier pass wrote there. Returns views of positions `0..len + total`.
    pub(crate) fn write_rows_and_view(
        &mut self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
        rows: &[usize],
        total: usize,
    ) -> Result<(Tensor, Tensor)> {
        let needed = self.len + total;
        let Some(kv) = self.layers[layer]
            .as_ref()
            .filter(|kv| kv.k.dim(1).is_ok_and(|capacity| capacity >= needed))
        else {
            candle_core::bail!("a partial pass needs a full pass over its positions first");
        };
        // Runs of consecutive rows are written with one copy each.
        let mut i = 0;
        while i < rows.len() {
            let mut j = i + 1;
            while j < rows.len() && rows[j] == rows[j - 1] + 1 {
                j += 1;
            }
            let at = self.len + rows[i];
            kv.k.slice_set(&kv.stored(&k.narrow(1, i, j - i)?)?, 1, at)?;
            kv.v.slice_set(&kv.stored(&v.narrow(1, i, j - i)?)?, 1, at)?;
            i = j;
        }
        kv.view(needed)
    }

    /// Commits the first `positions` entries written by the last forward pass.
    pub(crate) fn advance(&mut self, positions: usize) {
        self.len += positions;
    }

    /// Forgets every position (buffers are kept for reuse).
    pub fn clear(&mut self) {
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn filled(rows: usize, value: f32) -> Tensor {
        Tensor::full(value, (1, rows, 2), &Device::Cpu).unwrap()
    }

    #[test]
    fn a_partial_pass_overwrites_only_its_rows() {
        let mut cache = KvCache::new(1);
        cache
            .write_and_view(0, &filled(3, 1.0), &filled(3, 1.0))
            .unwrap();
        cache.advance(1);
        // Positions 1 and 2 hold the first pass's uncommitted rows. A partial pass over
        // more positions than were written is refused; one over those two that computes
        // its row 1 rewrites position 2 only.
        assert!(cache
            .write_rows_and_view(0, &filled(1, 5.0), &filled(1, 5.0), &[1], 4)
            .is_err());
        let (k, _) = cache
            .write_rows_and_view(0, &filled(1, 5.0), &filled(1, 5.0), &[1], 2)
            .unwrap();
        let k: Vec<f32> = k.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(k, [1.0, 1.0, 1.0, 1.0, 5.0, 5.0]);
    }
}
