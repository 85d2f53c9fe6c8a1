//! A deliberately naive LLaDA2 forward pass in plain loops, written from the
//! architecture description (`shared/docs/llada2.md`), sharing no code with the engine.
//! It checks that the engine holds for shapes other than the golden fixture's.

// Index loops mirror the math (position t, head h) more plainly than iterators here.
#![allow(clippy::needless_range_loop)]

use std::collections::HashMap;

use candle_core::Tensor;

pub struct Naive {
    w: HashMap<String, Vec<f32>>,
    cfg: serde_json::Value,
}

fn u(cfg: &serde_json::Value, k: &str) -> usize {
    cfg[k].as_u64().unwrap() as usize
}

fn rms(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let r = 1.0 / (ms + eps).sqrt();
    x.iter().zip(w).map(|(v, g)| v * r * g).collect()
}

/// y = W x for W stored [rows, cols] row-major.
fn matvec(w: &[f32], x: &[f32]) -> Vec<f32> {
    w.chunks(x.len())
        .map(|row| row.iter().zip(x).map(|(a, b)| a * b).sum())
        .collect()
}

fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

impl Naive {
    pub fn new(tensors: &HashMap<String, Tensor>, cfg: &serde_json::Value) -> Self {
        let w = tensors
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                )
            })
            .collect();
        Self {
            w,
            cfg: cfg.clone(),
        }
    }

    fn get(&self, name: &str) -> &[f32] {
        &self.w[name]
    }

    fn flag(&self, key: &str) -> bool {
        self.cfg[key].as_bool().unwrap_or(false)
    }

    /// `x + b` when the checkpoint has the bias `name`.
    fn plus_bias(&self, mut x: Vec<f32>, name: &str) -> Vec<f32> {
        if let Some(b) = self.w.get(name) {
            x.iter_mut().zip(b).for_each(|(a, b)| *a += b);
        }
        x
    }

    fn mlp(&self, prefix: &str, x: &[f32]) -> Vec<f32> {
        let g = matvec(self.get(&format!("{prefix}.gate_proj.weight")), x);
        let up = matvec(self.get(&format!("{prefix}.up_proj.weight")), x);
        let a: Vec<f32> = g.iter().zip(&up).map(|(g, u)| silu(*g) * u).collect();
        matvec(self.get(&format!("{prefix}.down_proj.weight")), &a)
    }

    fn moe(&self, p: &str, x: &[f32]) -> Vec<f32> {
        let c = &self.cfg;
        let (e, k) = (u(c, "num_experts"), u(c, "num_experts_per_tok"));
        let (ng, kg) = (u(c, "n_group"), u(c, "topk_group"));
        let logits = matvec(self.get(&format!("{p}.gate.weight")), x);
        let s: Vec<f32> = logits.iter().map(|l| 1.0 / (1.0 + (-l).exp())).collect();
        let bias = self.get(&format!("{p}.gate.expert_bias"));
        let r: Vec<f32> = s.iter().zip(bias).map(|(a, b)| a + b).collect();
        let gs = e / ng;
        let mut groups: Vec<(f32, usize)> = (0..ng)
            .map(|g| {
                let mut v = r[g * gs..(g + 1) * gs].to_vec();
                v.sort_by(|a, b| b.partial_cmp(a).unwrap());
                (v.iter().take(2).sum(), g)
            })
            .collect();
        groups.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap());
        let mut cands: Vec<(f32, usize)> = groups[..kg]
            .iter()
            .flat_map(|&(_, g)| (g * gs..(g + 1) * gs).map(|i| (r[i], i)))
            .collect();
        cands.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap());
        let chosen: Vec<usize> = cands[..k].iter().map(|c| c.1).collect();
        let total: f32 = chosen.iter().map(|&i| s[i]).sum::<f32>() + 1e-20;
        let scale = c["routed_scaling_factor"].as_f64().unwrap() as f32;
        let mut y = vec![0.0; x.len()];
        for &i in &chosen {
            let wgt = if k > 1 { s[i] / total } else { s[i] } * scale;
            for (a, b) in y.iter_mut().zip(self.mlp(&format!("{p}.experts.{i}"), x)) {
                *a += wgt * b;
            }
        }
        if u(c, "num_shared_experts") > 0 {
            for (a, b) in y
                .iter_mut()
                .zip(self.mlp(&format!("{p}.shared_experts"), x))
            {
                *a += b;
            }
        }
        y
    }

    /// Logits of every position under the block-causal mask, `[len][vocab]`.
    pub fn forward(&self, ids: &[u32], block: usize) -> Vec<Vec<f32>> {
        let c = &self.cfg;
        let (hd, nh, nkv) = (
            u(c, "head_dim"),
            u(c, "num_attention_heads"),
            u(c, "num_key_value_heads"),
        );
        let hidden = u(c, "hidden_size");
        let eps = c["rms_norm_eps"].as_f64().unwrap() as f32;
        let rot = (hd as f64 * c["partial_rotary_factor"].as_f64().unwrap()) as usize;
        let theta = c["rope_theta"].as_f64().unwrap() as f32;
        let emb = self.get("model.word_embeddings.weight");
        let n = ids.len();
        let mut h: Vec<Vec<f32>> = ids
            .iter()
            .map(|&i| emb[i as usize * hidden..(i as usize + 1) * hidden].to_vec())
            .collect();
        let rope = |v: &mut [f32], pos: usize| {
            let half = rot / 2;
            for i in 0..half {
                let f = 1.0 / theta.powf((2 * i) as f32 / rot as f32);
                let (cs, sn) = ((pos as f32 * f).cos(), (pos as f32 * f).sin());
                let (a, b) = (v[i], v[i + half]);
                v[i] = a * cs - b * sn;
                v[i + half] = b * cs + a * sn;
            }
        };
        for l in 0..u(c, "num_hidden_layers") {
            let p = format!("model.layers.{l}");
            let mut q = vec![vec![vec![0.0; hd]; nh]; n];
            let mut k = vec![vec![vec![0.0; hd]; nkv]; n];
            let mut v = vec![vec![vec![0.0; hd]; nkv]; n];
            for t in 0..n {
                let a = rms(&h[t], self.get(&format!("{p}.input_layernorm.weight")), eps);
                let qkv = matvec(
                    self.get(&format!("{p}.attention.query_key_value.weight")),
                    &a,
                );
                let qkv = self.plus_bias(qkv, &format!("{p}.attention.query_key_value.bias"));
                // QK-norm (when the config has it) comes before RoPE.
                let norm = |x: &[f32], which: &str| -> Vec<f32> {
                    if self.flag("use_qk_norm") {
                        rms(x, self.get(&format!("{p}.attention.{which}.weight")), eps)
                    } else {
                        x.to_vec()
                    }
                };
                for hh in 0..nh {
                    q[t][hh] = norm(&qkv[hh * hd..(hh + 1) * hd], "query_layernorm");
                    rope(&mut q[t][hh], t);
                }
                for hh in 0..nkv {
                    let ko = (nh + hh) * hd;
                    let vo = (nh + nkv + hh) * hd;
                    k[t][hh] = norm(&qkv[ko..ko + hd], "key_layernorm");
                    rope(&mut k[t][hh], t);
                    v[t][hh] = qkv[vo..vo + hd].to_vec();
                }
            }
            for t in 0..n {
                let mut o = Vec::with_capacity(nh * hd);
                for hh in 0..nh {
                    let g = hh / (nh / nkv);
                    let visible: Vec<usize> = (0..n).filter(|&s| s / block <= t / block).collect();
                    let scores: Vec<f32> = visible
                        .iter()
                        .map(|&s| {
                            q[t][hh]
                                .iter()
                                .zip(&k[s][g])
                                .map(|(a, b)| a * b)
                                .sum::<f32>()
                                / (hd as f32).sqrt()
                        })
                        .collect();
                    let m = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                    let ex: Vec<f32> = scores.iter().map(|s| (s - m).exp()).collect();
                    let z: f32 = ex.iter().sum();
                    let mut acc = vec![0.0; hd];
                    for (wgt, &s) in ex.iter().zip(&visible) {
                        for (a, b) in acc.iter_mut().zip(&v[s][g]) {
                            *a += wgt / z * b;
                        }
                    }
                    o.extend(acc);
                }
                let out = matvec(self.get(&format!("{p}.attention.dense.weight")), &o);
                let out = self.plus_bias(out, &format!("{p}.attention.dense.bias"));
                h[t].iter_mut().zip(out).for_each(|(a, b)| *a += b);
            }
            for row in h.iter_mut() {
                let b = rms(
                    row,
                    self.get(&format!("{p}.post_attention_layernorm.weight")),
                    eps,
                );
                let y = if l < u(c, "first_k_dense_replace") {
                    self.mlp(&format!("{p}.mlp"), &b)
                } else {
                    self.moe(&format!("{p}.mlp"), &b)
                };
                row.iter_mut().zip(y).for_each(|(a, b)| *a += b);
            }
        }
        let head = if self.flag("tie_word_embeddings") {
            emb
        } else {
            self.get("lm_head.weight")
        };
        h.iter()
            .map(|row| {
                let x = rms(row, self.get("model.norm.weight"), eps);
                matvec(head, &x)
            })
            .collect()
    }
}
