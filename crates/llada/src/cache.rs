//! Key/value cache for finished blocks.
//!
//! Under the block-causal mask a finished block never sees later tokens, so its keys and
//! values are final the moment its tokens are: they are computed once and reused by every
//! later step. Only complete blocks (and whole prompt blocks) are ever stored.

use candle_core::{Result, Tensor};

/// Keys and values of one layer, each `[num_kv_heads, len, head_dim]`.
#[derive(Debug, Clone)]
struct LayerKv {
    k: Tensor,
    v: Tensor,
}

/// The cache of one sequence: one entry per layer, all of the same length.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<Option<LayerKv>>,
    len: usize,
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![None; num_layers],
            len: 0,
        }
    }

    /// Number of cached positions (always the positions `0..len`).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keys and values of `layer` followed by `k`/`v` of the tokens being computed.
    pub(crate) fn with_new(
        &self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        match &self.layers[layer] {
            None => Ok((k.clone(), v.clone())),
            Some(kv) => Ok((Tensor::cat(&[&kv.k, k], 1)?, Tensor::cat(&[&kv.v, v], 1)?)),
        }
    }

    /// Appends final keys/values of `layer`. The caller appends the same count to every
    /// layer within one forward pass, then calls [`KvCache::advance`].
    pub(crate) fn append(&mut self, layer: usize, k: Tensor, v: Tensor) -> Result<()> {
        let entry = match self.layers[layer].take() {
            None => LayerKv { k, v },
            Some(kv) => LayerKv {
                k: Tensor::cat(&[&kv.k, &k], 1)?,
                v: Tensor::cat(&[&kv.v, &v], 1)?,
            },
        };
        self.layers[layer] = Some(entry);
        Ok(())
    }

    pub(crate) fn advance(&mut self, positions: usize) {
        self.len += positions;
    }

    pub fn clear(&mut self) {
        self.layers.iter_mut().for_each(|l| *l = None);
        self.len = 0;
    }
}
