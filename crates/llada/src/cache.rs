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

use candle_core::{Result, Tensor};

#[derive(Debug, Clone)]
struct LayerKv {
    k: Tensor,
    v: Tensor,
}

/// The cache of one sequence: one buffer per layer, all holding the same positions.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<Option<LayerKv>>,
    len: usize,
    capacity_hint: usize,
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        Self::with_capacity(num_layers, 0)
    }

    /// A cache that will not reallocate below `positions`.
    pub fn with_capacity(num_layers: usize, positions: usize) -> Self {
        Self {
            layers: vec![None; num_layers],
            len: 0,
            capacity_hint: positions,
        }
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
            let grow = |old: Option<&Tensor>, new: &Tensor| -> Result<Tensor> {
                let (heads, _, dim) = new.dims3()?;
                let buf = Tensor::zeros((heads, new_capacity, dim), new.dtype(), new.device())?;
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
        kv.k.slice_set(&k.contiguous()?, 1, self.len)?;
        kv.v.slice_set(&v.contiguous()?, 1, self.len)?;
        Ok((kv.k.narrow(1, 0, needed)?, kv.v.narrow(1, 0, needed)?))
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
