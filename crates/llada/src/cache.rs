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

/// The cache of one sequence: one buffer per layer, all holding the same positions
/// (in host memory, or on the device of the backend that runs the sequence).
pub struct KvCache {
    layers: Vec<Option<LayerKv>>,
    len: usize,
    capacity_hint: usize,
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
        Self {
            layers: vec![None; num_layers],
            len: 0,
            capacity_hint: positions,
            device: None,
        }
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
            kv.k.slice_set(&k.narrow(1, i, j - i)?.contiguous()?, 1, at)?;
            kv.v.slice_set(&v.narrow(1, i, j - i)?.contiguous()?, 1, at)?;
            i = j;
        }
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
