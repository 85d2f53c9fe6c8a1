//! AdamW with decoupled weight decay and global-norm gradient clipping. Written here
//! (not candle-nn's) because resuming needs the moment estimates saved and restored.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use crate::Result;

#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Clip the global gradient norm to this (0: no clipping).
    pub max_grad_norm: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.01,
            max_grad_norm: 1.0,
        }
    }
}

impl AdamWConfig {
    /// Checks the settings; the error names the bad one.
    pub fn validate(&self) -> std::result::Result<(), String> {
        for (name, v) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&v) {
                return Err(format!("optimizer.{name} must be in [0, 1), got {v}"));
            }
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(format!("optimizer.eps must be above 0, got {}", self.eps));
        }
        for (name, v) in [
            ("weight_decay", self.weight_decay),
            ("max_grad_norm", self.max_grad_norm),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!(
                    "optimizer.{name} must be a finite number >= 0, got {v}"
                ));
            }
        }
        Ok(())
    }
}

pub struct AdamW {
    cfg: AdamWConfig,
    params: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Steps taken (for bias correction).
    pub t: u64,
}

impl AdamW {
    pub fn new(params: Vec<(String, Var)>, cfg: AdamWConfig) -> Result<Self> {
        let m = params
            .iter()
            .map(|(_, p)| p.as_tensor().zeros_like())
            .collect::<candle_core::Result<Vec<_>>>()?;
        let v = m.clone();
        Ok(Self {
            cfg,
            params,
            m,
            v,
            t: 0,
        })
    }

    /// One update with learning rate `lr`; returns the gradient norm before clipping.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<f64> {
        let mut sq = 0f64;
        for (_, p) in &self.params {
            if let Some(g) = grads.get(p) {
                sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
            }
        }
        let norm = sq.sqrt();
        let clip = if self.cfg.max_grad_norm > 0.0 && norm > self.cfg.max_grad_norm {
            self.cfg.max_grad_norm / (norm + 1e-6)
        } else {
            1.0
        };
        self.t += 1;
        let (b1, b2) = (self.cfg.beta1, self.cfg.beta2);
        let c1 = 1.0 - b1.powi(self.t as i32);
        let c2 = 1.0 - b2.powi(self.t as i32);
        for (i, (_, p)) in self.params.iter().enumerate() {
            let Some(g) = grads.get(p) else { continue };
            let g = (g * clip)?;
            self.m[i] = ((&self.m[i] * b1)? + (&g * (1.0 - b1))?)?;
            self.v[i] = ((&self.v[i] * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let update = ((&self.m[i] / c1)? / ((&self.v[i] / c2)?.sqrt()? + self.cfg.eps)?)?;
            let decayed = (p.as_tensor() * (1.0 - lr * self.cfg.weight_decay))?;
            p.set(&(decayed - (update * lr)?)?)?;
        }
        Ok(norm)
    }

    /// Moment estimates by parameter name, for a checkpoint.
    pub fn state(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for (i, (name, _)) in self.params.iter().enumerate() {
            out.insert(format!("m.{name}"), self.m[i].clone());
            out.insert(format!("v.{name}"), self.v[i].clone());
        }
        out
    }

    /// Restores moments saved by [`AdamW::state`] after `t` steps.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>, t: u64) -> Result<()> {
        for (i, (name, _)) in self.params.iter().enumerate() {
            let get = |k: String| {
                state
                    .get(&k)
                    .cloned()
                    .ok_or_else(|| crate::TrainError::Invalid(format!("optimizer state lacks {k}")))
            };
            self.m[i] = get(format!("m.{name}"))?;
            self.v[i] = get(format!("v.{name}"))?;
        }
        self.t = t;
        Ok(())
    }
}
