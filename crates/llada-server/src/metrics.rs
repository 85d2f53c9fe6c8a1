//! Prometheus metrics (OpenMetrics text at `GET /metrics`).

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub endpoint: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// stop, length, cancelled (client gone), timeout, error.
    pub outcome: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub generations: Family<OutcomeLabels, Counter>,
    pub prompt_tokens: Counter,
    pub completion_tokens: Counter,
    /// Batched forward passes.
    pub forwards: Counter,
    /// Sequence steps summed over forward passes (a pass with 8 sequences counts 8).
    pub sequence_forwards: Counter,
    pub tokens_per_forward: Gauge<f64, AtomicU64>,
    pub queue_depth: Gauge,
    pub active: Gauge,
    pub batch_size: Histogram,
    pub time_to_first_token: Histogram,
    pub generation_seconds: Histogram,
    pub http_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("llada");
        let requests = Family::<RequestLabels, Counter>::default();
        let generations = Family::<OutcomeLabels, Counter>::default();
        let latency = || Histogram::new(exponential_buckets(0.005, 2.0, 16));
        let m = Self {
            requests,
            generations,
            prompt_tokens: Counter::default(),
            completion_tokens: Counter::default(),
            forwards: Counter::default(),
            sequence_forwards: Counter::default(),
            tokens_per_forward: Gauge::default(),
            queue_depth: Gauge::default(),
            active: Gauge::default(),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 8)),
            time_to_first_token: latency(),
            generation_seconds: latency(),
            http_seconds: latency(),
            registry: Registry::default(),
        };
        registry.register(
            "http_requests",
            "HTTP requests by endpoint and status",
            m.requests.clone(),
        );
        registry.register(
            "generations",
            "Finished generations by outcome",
            m.generations.clone(),
        );
        registry.register(
            "prompt_tokens",
            "Prompt tokens of admitted requests",
            m.prompt_tokens.clone(),
        );
        registry.register(
            "completion_tokens",
            "Tokens generated",
            m.completion_tokens.clone(),
        );
        registry.register("forwards", "Batched forward passes", m.forwards.clone());
        registry.register(
            "sequence_forwards",
            "Per-sequence steps summed over batched forward passes",
            m.sequence_forwards.clone(),
        );
        registry.register(
            "tokens_per_forward",
            "Generated tokens per sequence step, since start (TPF)",
            m.tokens_per_forward.clone(),
        );
        registry.register(
            "queue_depth",
            "Requests waiting for a batch slot",
            m.queue_depth.clone(),
        );
        registry.register(
            "active_requests",
            "Requests being decoded",
            m.active.clone(),
        );
        registry.register(
            "batch_size",
            "Sequences per batched forward pass",
            m.batch_size.clone(),
        );
        registry.register(
            "time_to_first_token_seconds",
            "From request to its first streamed text",
            m.time_to_first_token.clone(),
        );
        registry.register(
            "generation_seconds",
            "From request to its last token",
            m.generation_seconds.clone(),
        );
        registry.register(
            "http_request_seconds",
            "Time to the response head",
            m.http_seconds.clone(),
        );
        Self { registry, ..m }
    }

    /// Updates the TPF gauge from the counters.
    pub fn refresh_tpf(&self) {
        let steps = self.sequence_forwards.get();
        if steps > 0 {
            self.tokens_per_forward
                .set(self.completion_tokens.get() as f64 / steps as f64);
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
