//! Turning one position's logits into a token and its confidence.
//!
//! Same pipeline as the reference: logits / T, then top-k, then top-p, then softmax.
//! Greedy (T = 0) takes the argmax of that distribution instead of sampling from it
//! (one copy of the official code samples at T = 1 when T = 0; greedy means argmax).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    /// Keep only the `k` most likely tokens (`None` or 0: all).
    pub top_k: Option<usize>,
    /// Keep the smallest set of tokens whose probability reaches `p` (`None` or 1: all).
    pub top_p: Option<f32>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: None,
            top_p: None,
        }
    }
}

/// Largest temperature accepted (OpenAI's range is [0, 2] too).
pub const MAX_TEMPERATURE: f32 = 2.0;

impl SamplingParams {
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=MAX_TEMPERATURE).contains(&self.temperature) {
            return Err(Error::param(
                "temperature",
                format!(
                    "must be a number in [0, {MAX_TEMPERATURE}] (0 = greedy), got {}",
                    self.temperature
                ),
            ));
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(Error::param("top_p", format!("must be in (0, 1], got {p}")));
            }
        }
        Ok(())
    }
}

/// A seeded sampler: the same seed and inputs give the same tokens.
pub struct Sampler {
    params: SamplingParams,
    uniforms: Uniforms,
    probs: Vec<f32>,
}

/// Where the uniform numbers that pick sampled tokens come from.
enum Uniforms {
    Seeded(Box<ChaCha8Rng>),
    /// Given in advance, so that a test can hand the same numbers to a reference.
    Given(std::vec::IntoIter<f32>),
}

impl Sampler {
    pub fn new(params: SamplingParams, seed: u64) -> Self {
        Self {
            params,
            uniforms: Uniforms::Seeded(Box::new(ChaCha8Rng::seed_from_u64(seed))),
            probs: Vec::new(),
        }
    }

    /// A sampler whose k-th sampled token uses `uniforms[k]` (in [0, 1)) to invert the
    /// cumulative distribution over token ids: the test hook that compares sampling with
    /// a reference given the same numbers.
    pub fn with_uniforms(params: SamplingParams, uniforms: Vec<f32>) -> Self {
        Self {
            params,
            uniforms: Uniforms::Given(uniforms.into_iter()),
            probs: Vec::new(),
        }
    }

    fn uniform(&mut self) -> f32 {
        match &mut self.uniforms {
            Uniforms::Seeded(rng) => rng.random(),
            Uniforms::Given(given) => given
                .next()
                .expect("Sampler::with_uniforms: more tokens sampled than uniforms given"),
        }
    }

    /// Picks a token from `logits` and returns it with its probability.
    /// Greedy without top-k/top-p: a row's pick is its argmax and that token's
    /// probability ([`crate::step::GreedyPick`]), which a backend can compute itself.
    pub fn is_plain_greedy(&self) -> bool {
        let p = &self.params;
        p.temperature == 0.0 && p.top_k.is_none() && p.top_p.is_none()
    }

    pub fn pick(&mut self, logits: &[f32]) -> (u32, f32) {
        let t = self.params.temperature;
        // Plain greedy: the argmax and its softmax probability 1 / Σ exp(l - max), without
        // materialising the distribution.
        if self.is_plain_greedy() {
            let pick = crate::step::GreedyPick::of(logits);
            return (pick.token, pick.confidence);
        }
        // logits / T, shifted by the largest logit first: the same distribution, but a
        // tiny T cannot overflow to inf - inf = NaN (it only sharpens towards argmax).
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let divisor = if t > 0.0 { t } else { 1.0 };
        self.probs.clear();
        self.probs
            .extend(logits.iter().map(|&l| (l - max) / divisor));
        if let Some(k) = self.params.top_k.filter(|&k| k > 0 && k < logits.len()) {
            keep_top_k(&mut self.probs, k);
        }
        softmax_in_place(&mut self.probs);
        if let Some(p) = self.params.top_p.filter(|&p| p < 1.0) {
            keep_top_p(&mut self.probs, p);
        }
        let token = if t > 0.0 {
            let u = self.uniform();
            sample(&self.probs, u)
        } else {
            argmax(&self.probs)
        };
        (token as u32, self.probs[token])
    }
}

/// Sets every logit below the k-th largest to -inf (ties at the k-th value survive, as in
/// the reference's `logits < kth_value` test).
fn keep_top_k(logits: &mut [f32], k: usize) {
    let mut sorted: Vec<f32> = logits.to_vec();
    let (_, kth, _) = sorted.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    let kth = *kth;
    logits
        .iter_mut()
        .filter(|l| **l < kth)
        .for_each(|l| *l = f32::NEG_INFINITY);
}

/// Nucleus filter on probabilities: drops tokens whose preceding cumulative mass already
/// exceeds `p`, then renormalises (equivalent to the reference's -inf then softmax).
fn keep_top_p(probs: &mut [f32], p: f32) {
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    let mut cumulative = 0.0f32;
    let mut kept = 0.0f32;
    for &i in &order {
        let exceeded = cumulative > p;
        cumulative += probs[i];
        if exceeded {
            probs[i] = 0.0;
        } else {
            kept += probs[i];
        }
    }
    probs.iter_mut().for_each(|q| *q /= kept);
}

pub(crate) fn softmax_in_place(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    x.iter_mut().for_each(|v| *v /= sum);
}

fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

fn sample(probs: &[f32], u: f32) -> usize {
    let mut acc = 0.0f32;
    let mut last = 0;
    for (i, &p) in probs.iter().enumerate() {
        if p > 0.0 {
            acc += p;
            last = i;
            if u < acc {
                return i;
            }
        }
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_returns_argmax_and_its_softmax_probability() {
        let mut s = Sampler::new(SamplingParams::default(), 0);
        let (tok, p) = s.pick(&[0.0, 2.0, 1.0]);
        assert_eq!(tok, 1);
        let expected = 2f32.exp() / (1.0 + 2f32.exp() + 1f32.exp());
        assert!((p - expected).abs() < 1e-6);
    }

    #[test]
    fn top_k_one_always_picks_the_best_token() {
        let params = SamplingParams {
            temperature: 1.5,
            top_k: Some(1),
            top_p: None,
        };
        let mut s = Sampler::new(params, 7);
        for _ in 0..20 {
            assert_eq!(s.pick(&[0.1, 0.3, 3.0, 0.2]), (2, 1.0));
        }
    }

    #[test]
    fn top_p_keeps_the_nucleus_only() {
        let params = SamplingParams {
            temperature: 1.0,
            top_k: None,
            top_p: Some(0.5),
        };
        let mut s = Sampler::new(params, 3);
        // Probabilities ~[0.84, 0.11, 0.04]: the first token alone exceeds 0.5.
        for _ in 0..20 {
            assert_eq!(s.pick(&[3.0, 1.0, 0.0]).0, 0);
        }
    }

    #[test]
    fn same_seed_same_tokens() {
        let params = SamplingParams {
            temperature: 1.0,
            top_k: None,
            top_p: None,
        };
        let logits = [0.5, 0.4, 0.3, 0.2, 0.1];
        let run = |seed| {
            let mut s = Sampler::new(params, seed);
            (0..32).map(|_| s.pick(&logits).0).collect::<Vec<_>>()
        };
        assert_eq!(run(11), run(11));
        assert_ne!(run(11), run(12));
    }
}
