//! LLaDA2 MoE (`LLaDA2MoeModelLM`): the forward pass of the official PyTorch modeling
//! file, with a block-causal mask and a cache of finished blocks.
//!
//! Weight paths read exactly like the HF tensor names (`model.layers.{i}.attention...`).
//! The model is generic over the [`Backend`] that runs its ops: this file says which op
//! comes when; the backend holds the weights and runs the kernels.

use candle_core::{DType, Tensor};

use crate::backend::{mlp_bytes, Backend, Heads, Inference, Mlp, MoeInput, RopeTables, Route};
use crate::cache::KvCache;
use crate::config::{Llada2Config, MoeShape};
use crate::error::Result;
use crate::quant::Quant;
use crate::step::{PassRows, SeqStep, StepOutput, Wanted};
use crate::weights::WeightSource;

/// Reads weights by HF name and hands them to the backend; `quant` quantizes every
/// linear layer but the router.
struct Load<'a, B: Backend> {
    src: &'a dyn WeightSource,
    quant: Option<Quant>,
    backend: &'a B,
}

impl<B: Backend> Load<'_, B> {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<B::Tensor> {
        self.backend.tensor(self.src.get(name, shape)?)
    }

    fn linear(&self, name: &str, out: usize, inp: usize, bias: bool) -> Result<B::Linear> {
        let mut weight = self
            .src
            .get_linear(&format!("{name}.weight"), [out, inp], self.quant)?;
        if bias {
            weight = weight.with_bias(self.src.get(&format!("{name}.bias"), &[out])?);
        }
        self.backend.linear_weight(weight)
    }

    fn mlp(&self, prefix: &str, hidden: usize, intermediate: usize) -> Result<Mlp<B>> {
        Ok(Mlp {
            gate_proj: self.linear(&format!("{prefix}.gate_proj"), intermediate, hidden, false)?,
            up_proj: self.linear(&format!("{prefix}.up_proj"), intermediate, hidden, false)?,
            down_proj: self.linear(&format!("{prefix}.down_proj"), hidden, intermediate, false)?,
        })
    }
}

/// Sigmoid router with `expert_bias` for selection only: group-limited top-k per token
/// (LLaDA2.0/2.1) or block routing (LLaDA2.2, `expert_capacity > 0`).
struct Router<B: Backend> {
    weight: B::Tensor,
    expert_bias: Vec<f32>,
    shape: MoeShape,
    scaling: f32,
}

impl<B: Backend> Router<B> {
    /// Every token's experts from the router logits `[tokens, experts]` (f32, as
    /// `router_dtype: fp32` asks), the tokens laid out in `blocks`.
    fn route(&self, logits: &[f32], blocks: &RoutingBlocks) -> Vec<Route> {
        let rows: Vec<&[f32]> = logits.chunks_exact(self.shape.num_experts).collect();
        if self.shape.capacity == 0 {
            return rows.iter().map(|row| self.route_token(row)).collect();
        }
        let mut routes = Vec::with_capacity(rows.len());
        for block in blocks.ranges(rows.len()) {
            routes.extend(self.route_block(&rows[block]));
        }
        routes
    }

    /// Sigmoid scores and the biased scores selection ranks by.
    fn scores(&self, logits: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let scores: Vec<f32> = logits.iter().map(|&l| 1.0 / (1.0 + (-l).exp())).collect();
        let biased = scores
            .iter()
            .zip(&self.expert_bias)
            .map(|(a, b)| a + b)
            .collect();
        (scores, biased)
    }

    /// Group-limited routing of one token: the best `topk_group` groups by the sum of
    /// their two best biased scores, the best `experts_per_token` experts inside them.
    fn route_token(&self, logits: &[f32]) -> Route {
        let s = &self.shape;
        let group_size = s.num_experts / s.n_group;
        let (scores, biased) = self.scores(logits);
        let group_scores: Vec<f32> = biased
            .chunks(group_size)
            .map(|g| top_indices(g, 2.min(g.len())).iter().map(|&i| g[i]).sum())
            .collect();
        let kept_groups = top_indices(&group_scores, s.topk_group);
        let mut candidates = vec![f32::NEG_INFINITY; s.num_experts];
        for g in kept_groups {
            let range = g * group_size..(g + 1) * group_size;
            candidates[range.clone()].copy_from_slice(&biased[range]);
        }
        self.mix(&candidates, &scores)
    }

    /// Block routing of one routing block's tokens: the block's pool is the
    /// `expert_capacity` experts with the largest biased score over its tokens (max over
    /// tokens); each token takes its best experts inside the pool.
    fn route_block(&self, rows: &[&[f32]]) -> Vec<Route> {
        let scored: Vec<(Vec<f32>, Vec<f32>)> = rows.iter().map(|row| self.scores(row)).collect();
        let mut pool_score = vec![f32::NEG_INFINITY; self.shape.num_experts];
        for (_, biased) in &scored {
            for (g, &r) in pool_score.iter_mut().zip(biased) {
                *g = g.max(r);
            }
        }
        let pool = top_indices(&pool_score, self.shape.capacity);
        scored
            .iter()
            .map(|(scores, biased)| {
                let mut candidates = vec![f32::NEG_INFINITY; self.shape.num_experts];
                for &e in &pool {
                    candidates[e] = biased[e];
                }
                self.mix(&candidates, scores)
            })
            .collect()
    }

    /// The best `experts_per_token` of `candidates` (biased scores, -inf where not
    /// allowed), mixed by their unbiased scores, renormalised, times
    /// `routed_scaling_factor`.
    fn mix(&self, candidates: &[f32], scores: &[f32]) -> Route {
        let k = self.shape.experts_per_token;
        let experts = top_indices(candidates, k);
        let chosen: Vec<f32> = experts.iter().map(|&e| scores[e]).collect();
        let weights = if k > 1 {
            let sum: f32 = chosen.iter().sum::<f32>() + 1e-20;
            chosen.iter().map(|w| w / sum * self.scaling).collect()
        } else {
            chosen.iter().map(|w| w * self.scaling).collect()
        };
        Route { experts, weights }
    }
}

/// Which rows of a pass share a LLaDA2.2 routing block: runs of one sequence's rows whose
/// positions fall in one block of `routing_block` positions (tiled from position 0).
/// Optionally records every MoE layer's choices (to check routing itself).
#[derive(Debug, Default)]
pub struct RoutingBlocks {
    /// Each block's first row, in order.
    starts: Vec<usize>,
    /// When recording: each MoE layer's experts per token, in layer order.
    record: Option<std::sync::Mutex<Vec<Vec<Vec<usize>>>>>,
}

impl RoutingBlocks {
    /// The blocks of rows at `positions`, sequences starting at `offsets` (`routing_block`
    /// 0: no block routing, nothing to lay out).
    pub fn of(offsets: &[usize], positions: &[usize], routing_block: usize) -> Self {
        if routing_block == 0 {
            return Self::default();
        }
        let mut starts = Vec::new();
        for (row, &pos) in positions.iter().enumerate() {
            let new_sequence = offsets.binary_search(&row).is_ok();
            if row == 0 || new_sequence || pos / routing_block != positions[row - 1] / routing_block
            {
                starts.push(row);
            }
        }
        Self {
            starts,
            record: None,
        }
    }

    /// The same layout, recording the experts each MoE layer picks.
    pub fn recording(mut self) -> Self {
        self.record = Some(Default::default());
        self
    }

    /// What was recorded: per MoE layer (in order), each token's experts.
    pub fn recorded(self) -> Vec<Vec<Vec<usize>>> {
        self.record
            .map(|r| r.into_inner().unwrap_or_else(|e| e.into_inner()))
            .unwrap_or_default()
    }

    fn note(&self, routes: &[Route]) {
        if let Some(record) = &self.record {
            let experts = routes.iter().map(|r| r.experts.clone()).collect();
            record
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(experts);
        }
    }

    /// The row ranges of the blocks among `rows` rows.
    fn ranges(&self, rows: usize) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
        let ends = self.starts.iter().skip(1).copied().chain([rows]);
        self.starts.iter().copied().zip(ends).map(|(a, b)| a..b)
    }
}

/// Indices of the `k` largest values, largest first (ties: lower index first).
fn top_indices(values: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

struct SparseMoe<B: Backend> {
    router: Router<B>,
    experts: Vec<Mlp<B>>,
    shared: Option<Mlp<B>>,
}

impl<B: Backend> SparseMoe<B> {
    fn load(ld: &Load<'_, B>, prefix: &str, cfg: &Llada2Config, shape: MoeShape) -> Result<Self> {
        let (h, e) = (cfg.hidden_size, shape.num_experts);
        let weight = ld.src.get(&format!("{prefix}.gate.weight"), &[e, h])?;
        let bias_name = format!("{prefix}.gate.expert_bias");
        // The reference registers expert_bias as a zero buffer; checkpoints trained with
        // the bias enabled must carry it.
        let expert_bias = match ld.src.get_optional(&bias_name, &[e])? {
            Some(t) => t.to_dtype(DType::F32)?.to_vec1::<f32>()?,
            None if cfg.moe_router_enable_expert_bias => return Err(ld.src.missing(&bias_name)),
            None => vec![0.0; e],
        };
        let experts = (0..e)
            .map(|i| ld.mlp(&format!("{prefix}.experts.{i}"), h, shape.intermediate))
            .collect::<Result<Vec<_>>>()?;
        let shared = match shape.shared_intermediate {
            0 => None,
            n => Some(ld.mlp(&format!("{prefix}.shared_experts"), h, n)?),
        };
        Ok(Self {
            router: Router {
                weight: ld.backend.tensor(weight.to_dtype(DType::F32)?)?,
                expert_bias,
                shape,
                scaling: cfg.routed_scaling_factor as f32,
            },
            experts,
            shared,
        })
    }

    fn forward(&self, b: &B, x: &B::Tensor, blocks: &RoutingBlocks) -> Result<B::Tensor> {
        let (logits, host) = b.router_logits(x, &self.router.weight)?;
        let routes = self.router.route(&host, blocks);
        blocks.note(&routes);
        b.experts(
            x,
            &MoeInput {
                experts: &self.experts,
                shared: self.shared.as_ref(),
                routes: &routes,
                router_logits: &logits,
                scaling: self.router.scaling,
            },
        )
    }

    fn weight_bytes(&self, b: &B) -> usize {
        let experts: usize = self
            .experts
            .iter()
            .chain(&self.shared)
            .map(|m| mlp_bytes(b, m))
            .sum();
        experts + b.tensor_bytes(&self.router.weight)
    }
}

enum FeedForward<B: Backend> {
    Dense(Mlp<B>),
    Moe(SparseMoe<B>),
}

struct Attention<B: Backend> {
    query_key_value: B::Linear,
    query_layernorm: Option<B::Tensor>,
    key_layernorm: Option<B::Tensor>,
    dense: B::Linear,
    heads: Heads,
    eps: f64,
}

impl<B: Backend> Attention<B> {
    fn load(ld: &Load<'_, B>, prefix: &str, cfg: &Llada2Config) -> Result<Self> {
        let heads = cfg.heads();
        let norm = |name: &str| -> Result<Option<B::Tensor>> {
            cfg.use_qk_norm
                .then(|| ld.tensor(&format!("{prefix}.{name}.weight"), &[heads.dim]))
                .transpose()
        };
        Ok(Self {
            query_key_value: ld.linear(
                &format!("{prefix}.query_key_value"),
                (heads.query + 2 * heads.kv) * heads.dim,
                cfg.hidden_size,
                cfg.use_qkv_bias,
            )?,
            query_layernorm: norm("query_layernorm")?,
            key_layernorm: norm("key_layernorm")?,
            dense: ld.linear(
                &format!("{prefix}.dense"),
                cfg.hidden_size,
                heads.query * heads.dim,
                cfg.use_bias,
            )?,
            heads,
            eps: cfg.rms_norm_eps,
        })
    }

    /// Fused QKV, QK-norm, RoPE, attention over the cache and the pass, output
    /// projection.
    fn forward(
        &self,
        b: &B,
        x: &B::Tensor,
        pass: &mut B::Pass<'_>,
        layer: usize,
    ) -> Result<B::Tensor> {
        let qkv = b.linear(x, &self.query_key_value)?;
        let (mut q, mut k, v) = b.split_heads(&qkv, self.heads)?;
        // QK-norm comes before RoPE.
        if let Some(w) = &self.query_layernorm {
            q = b.rms_norm(&q, w, self.eps)?;
        }
        if let Some(w) = &self.key_layernorm {
            k = b.rms_norm(&k, w, self.eps)?;
        }
        let q = b.scale(&b.rope(&q, pass)?, (self.heads.dim as f64).powf(-0.5))?;
        let k = b.rope(&k, pass)?;
        let heads = b.attend(pass, layer, &q, &k, &v)?;
        b.linear(&heads, &self.dense)
    }
}

struct DecoderLayer<B: Backend> {
    input_layernorm: B::Tensor,
    attention: Attention<B>,
    post_attention_layernorm: B::Tensor,
    mlp: FeedForward<B>,
}

impl<B: Backend> DecoderLayer<B> {
    /// Pre-norm attention and feed-forward, each added to the residual stream.
    fn forward(
        &self,
        b: &B,
        h: &B::Tensor,
        pass: &mut B::Pass<'_>,
        layer: usize,
        eps: f64,
        blocks: &RoutingBlocks,
    ) -> Result<B::Tensor> {
        let a = b.rms_norm(h, &self.input_layernorm, eps)?;
        let h = b.add(h, &self.attention.forward(b, &a, pass, layer)?)?;
        let m = b.rms_norm(&h, &self.post_attention_layernorm, eps)?;
        let mlp = match &self.mlp {
            FeedForward::Dense(mlp) => b.mlp(mlp, &m)?,
            FeedForward::Moe(moe) => moe.forward(b, &m, blocks)?,
        };
        b.add(&h, &mlp)
    }
}

/// Inverse frequencies of the partial rotary embedding.
struct Rotary {
    inv_freq: Vec<f32>,
    rope_dim: usize,
}

impl Rotary {
    fn new(cfg: &Llada2Config) -> Self {
        let rope_dim = cfg.rope_dim();
        // Computed in f32 as the reference's default RoPE init does.
        let base = cfg.rope_theta as f32;
        let inv_freq = (0..rope_dim / 2)
            .map(|i| 1.0 / base.powf((2 * i) as f32 / rope_dim as f32))
            .collect();
        Self { inv_freq, rope_dim }
    }

    fn tables(&self, positions: impl ExactSizeIterator<Item = usize>) -> RopeTables {
        let tokens = positions.len();
        let mut cos = Vec::with_capacity(tokens * self.inv_freq.len());
        let mut sin = Vec::with_capacity(tokens * self.inv_freq.len());
        for pos in positions {
            for &f in &self.inv_freq {
                let angle = pos as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        RopeTables {
            cos,
            sin,
            tokens,
            rope_dim: self.rope_dim,
        }
    }
}

/// A LLaDA2 MoE model whose weights live on backend `B`.
pub struct Llada2<B: Backend> {
    backend: B,
    cfg: Llada2Config,
    word_embeddings: B::Tensor,
    layers: Vec<DecoderLayer<B>>,
    norm: B::Tensor,
    lm_head: B::Linear,
    rotary: Rotary,
}

/// The model on the CPU backend: what decoding, the server and the CLI run.
pub type Llada2Model = Llada2<crate::backend::Cpu>;

impl<B: Backend> Llada2<B> {
    /// Builds the model from `store` onto `backend`; `quant` quantizes every linear layer
    /// but the router.
    pub fn load(
        cfg: &Llada2Config,
        store: &dyn WeightSource,
        quant: Option<Quant>,
        backend: B,
    ) -> Result<Self> {
        let ld = Load {
            src: store,
            quant,
            backend: &backend,
        };
        let (h, v) = (cfg.hidden_size, cfg.vocab_size);
        let embed = store.get("model.word_embeddings.weight", &[v, h])?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let mlp = match cfg.moe_shape().filter(|_| cfg.is_moe_layer(i)) {
                Some(shape) => {
                    FeedForward::Moe(SparseMoe::load(&ld, &format!("{p}.mlp"), cfg, shape)?)
                }
                None => {
                    let inter = cfg.intermediate_size.unwrap_or(0);
                    FeedForward::Dense(ld.mlp(&format!("{p}.mlp"), h, inter)?)
                }
            };
            layers.push(DecoderLayer {
                input_layernorm: ld.tensor(&format!("{p}.input_layernorm.weight"), &[h])?,
                attention: Attention::load(&ld, &format!("{p}.attention"), cfg)?,
                post_attention_layernorm: ld
                    .tensor(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
                mlp,
            });
        }
        // Tied as transformers ties them: the embedding matrix is the head, whatever
        // `lm_head.weight` the checkpoint may also carry.
        let lm_head = if cfg.tie_word_embeddings {
            backend.linear_weight(crate::quant::LinearWeight::new(embed.clone(), None, quant)?)?
        } else {
            ld.linear("lm_head", v, h, false)?
        };
        Ok(Self {
            word_embeddings: backend.tensor(embed)?,
            norm: ld.tensor("model.norm.weight", &[h])?,
            layers,
            lm_head,
            rotary: Rotary::new(cfg),
            cfg: cfg.clone(),
            backend,
        })
    }

    pub fn config(&self) -> &Llada2Config {
        &self.cfg
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Bytes held by the weights on the device (quantized matrices at their packed size).
    pub fn weight_bytes(&self) -> usize {
        let b = &self.backend;
        let mut total = b.tensor_bytes(&self.word_embeddings) + b.tensor_bytes(&self.norm);
        total += b.linear_bytes(&self.lm_head);
        for layer in &self.layers {
            let a = &layer.attention;
            total += b.linear_bytes(&a.query_key_value) + b.linear_bytes(&a.dense);
            total += a
                .query_layernorm
                .iter()
                .chain(&a.key_layernorm)
                .map(|t| b.tensor_bytes(t))
                .sum::<usize>();
            total += b.tensor_bytes(&layer.input_layernorm)
                + b.tensor_bytes(&layer.post_attention_layernorm);
            total += match &layer.mlp {
                FeedForward::Dense(mlp) => mlp_bytes(b, mlp),
                FeedForward::Moe(moe) => moe.weight_bytes(b),
            };
        }
        total
    }

    /// How the rows of a pass (sequences starting at `offsets`, rows at `positions`) fall
    /// into routing blocks; empty for a model without block routing.
    pub fn routing_blocks(&self, offsets: &[usize], positions: &[usize]) -> RoutingBlocks {
        RoutingBlocks::of(offsets, positions, self.cfg.routing_block())
    }

    /// Bytes of the routed experts' weights, all MoE layers (what a forward reads of
    /// them is [`crate::ForwardCost::expert_bytes`]).
    pub fn expert_weight_bytes(&self) -> usize {
        let b = &self.backend;
        self.layers
            .iter()
            .map(|layer| match &layer.mlp {
                FeedForward::Moe(moe) => moe.experts.iter().map(|m| mlp_bytes(b, m)).sum(),
                FeedForward::Dense(_) => 0,
            })
            .sum()
    }

    /// The rotary tables of `positions`, for the pass that computes them.
    pub fn rope_tables(&self, positions: impl ExactSizeIterator<Item = usize>) -> RopeTables {
        self.rotary.tables(positions)
    }

    /// The whole model on one pass: embeddings, every layer, then the final norm and
    /// lm_head on the rows the pass wants logits for (`None` when it wants none).
    /// `blocks` lays the rows out in routing blocks (LLaDA2.2's block routing; see
    /// [`Llada2::routing_blocks`]).
    pub fn run(&self, pass: &mut B::Pass<'_>, blocks: &RoutingBlocks) -> Result<Option<B::Tensor>> {
        let b = &self.backend;
        let eps = self.cfg.rms_norm_eps;
        let mut h = b.embed(&self.word_embeddings, pass)?;
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward(b, &h, pass, i, eps, blocks)?;
        }
        let Some(h) = b.output_rows(&h, pass)? else {
            return Ok(None);
        };
        let h = b.rms_norm(&h, &self.norm, eps)?;
        Ok(Some(b.linear(&h, &self.lm_head)?))
    }
}

impl<B: Inference> Llada2<B> {
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.layers.len())
    }

    /// A cache sized for `positions` up front (no reallocation while decoding).
    pub fn new_cache_for(&self, positions: usize) -> KvCache {
        KvCache::with_capacity(self.layers.len(), positions)
    }

    /// As [`Llada2::new_cache_for`], keeping keys/values as `dtype`.
    pub fn new_cache_as(&self, positions: usize, dtype: crate::KvDtype) -> KvCache {
        KvCache::with_capacity_as(self.layers.len(), positions, dtype)
    }

    /// Runs the model on every sequence of `batch` in one pass: the linear and MoE parts
    /// see all tokens together, attention runs per sequence over its own cache.
    /// Returns, per sequence, what it wanted of its logit rows: the logits
    /// `[logit_rows.len(), vocab]` (f32) or their greedy picks.
    pub fn forward(&self, batch: &mut [SeqStep<'_>]) -> Result<Vec<Option<StepOutput>>> {
        let _span = tracing::trace_span!("forward", seqs = batch.len()).entered();
        self.backend.run(|| {
            for step in batch.iter() {
                step.check(self.cfg.vocab_size, self.cfg.max_position_embeddings)?;
            }
            let rows = PassRows::of(batch);
            let rope = self.rotary.tables(rows.positions.iter().copied());
            let blocks = self.routing_blocks(&rows.offsets, &rows.positions);
            let mut pass = self.backend.pass(batch, rows, rope, self.cfg.heads())?;
            let logits = self.run(&mut pass, &blocks)?;
            let logits = self.backend.outputs(pass, logits)?;
            for step in batch.iter_mut() {
                step.cache.advance(step.commit);
            }
            Ok(logits)
        })
    }

    /// The experts every token of a full-sequence forward (as [`Llada2::forward_full`]) is
    /// routed to: indexed by layer (dense layers empty), then token.
    pub fn expert_choices(
        &self,
        tokens: &[u32],
        block_length: usize,
    ) -> Result<Vec<Vec<Vec<usize>>>> {
        let positions: Vec<usize> = (0..tokens.len()).collect();
        let blocks = self.routing_blocks(&[0], &positions).recording();
        let mut cache = self.new_cache();
        let mut step = [SeqStep {
            tokens,
            start: 0,
            block_length,
            commit: 0,
            logit_rows: &[],
            compute: None,
            wanted: Wanted::Logits,
            cache: &mut cache,
        }];
        self.backend.run(|| {
            step[0].check(self.cfg.vocab_size, self.cfg.max_position_embeddings)?;
            let rows = PassRows::of(&step);
            let rope = self.rotary.tables(rows.positions.iter().copied());
            let mut pass = self.backend.pass(&mut step, rows, rope, self.cfg.heads())?;
            self.run(&mut pass, &blocks)
        })?;
        let mut moe = blocks.recorded().into_iter();
        Ok((0..self.layers.len())
            .map(|i| match self.layers[i].mlp {
                FeedForward::Moe(_) => moe.next().unwrap_or_default(),
                FeedForward::Dense(_) => Vec::new(),
            })
            .collect())
    }

    /// Full-sequence forward without cache; logits of every position. This is what the
    /// reference computes; the engine uses it for verification.
    pub fn forward_full(&self, tokens: &[u32], block_length: usize) -> Result<Tensor> {
        let mut cache = self.new_cache();
        let rows: Vec<usize> = (0..tokens.len()).collect();
        let mut step = [SeqStep {
            tokens,
            start: 0,
            block_length,
            commit: 0,
            logit_rows: &rows,
            compute: None,
            wanted: Wanted::Logits,
            cache: &mut cache,
        }];
        let mut out = self.forward(&mut step)?;
        out.pop()
            .flatten()
            .expect("rows were requested")
            .into_logits()
    }
}
