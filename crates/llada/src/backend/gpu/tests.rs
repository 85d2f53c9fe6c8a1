//! Each GPU kernel against a plain version (f64 sums on the host, or the CPU backend's
//! op). They need an adapter (lavapipe in `.ci/run`): ignored by a plain `cargo test`.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use super::*;
use crate::backend::{Cpu, Mlp, Route};
use crate::quant::Quant;

fn gpu() -> Gpu {
    Gpu::open(DeviceChoice::Gpu)
        .expect("a GPU adapter (lavapipe: apt-get install mesa-vulkan-drivers)")
        .expect("--device gpu gives a GPU")
}

/// Deterministic values in [-1, 1).
fn values(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(12345);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32) * 2.0 - 1.0
        })
        .collect()
}

fn input(g: &Gpu, rows: usize, cols: usize, seed: u32) -> (GpuTensor, Vec<f32>) {
    let v = values(rows * cols, seed);
    (g.weight(&v, rows, cols, false).unwrap(), v)
}

fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol * scale, "{what}[{i}]: {g} vs {w}");
    }
}

/// `x @ W^T + b` in f64.
fn plain_linear(x: &[f32], w: &[f32], b: Option<&[f32]>, m: usize, n: usize, k: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(m * n);
    for r in 0..m {
        for c in 0..n {
            let dot: f64 = (0..k)
                .map(|j| x[r * k + j] as f64 * w[c * k + j] as f64)
                .sum();
            out.push((dot + b.map_or(0.0, |b| b[c] as f64)) as f32);
        }
    }
    out
}

#[test]
#[ignore = "needs a GPU adapter (lavapipe in .ci/run)"]
fn products_of_every_weight_format_equal_plain_sums() {
    let g = gpu();
    let (n, k) = (21, 512);
    let dense = values(n * k, 7);
    let bias = values(n, 8);
    let bf16: Vec<f32> = dense
        .iter()
        .map(|&v| half::bf16::from_f32(v).to_f32())
        .collect();
    let t = |v: &[f32]| Tensor::from_slice(v, (n, k), &Device::Cpu).unwrap();
    let q4k = QTensor::quantize(&t(&dense), GgmlDType::Q4K).unwrap();
    let q4k_values = q4k
        .dequantize(&Device::Cpu)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let q8 = LinearWeight::new(t(&dense), None, Some(Quant::Q8_0)).unwrap();
    let LinearWeight::Q8 { weight, .. } = &q8 else {
        panic!("q8_0 weight")
    };
    let (qs, scales) = weight.blocks();
    let q8_values: Vec<f32> = qs
        .iter()
        .enumerate()
        .map(|(i, &q)| q as f32 * scales[i / 32])
        .collect();
    let cases: Vec<(&str, LinearWeight, Vec<f32>, Format)> = vec![
        (
            "f32",
            LinearWeight::new(t(&dense), None, None).unwrap(),
            dense.clone(),
            Format::F32,
        ),
        (
            "bf16",
            LinearWeight::new(t(&bf16), None, None).unwrap(),
            bf16.clone(),
            Format::Bf16,
        ),
        ("q8_0", q8, q8_values, Format::Q8_0),
        (
            "q4k",
            LinearWeight::from_qtensor(q4k, None).unwrap(),
            q4k_values,
            Format::Q4k,
        ),
    ];
    for (name, w, plain_w, format) in cases {
        let w = g
            .linear_weight(w.with_bias(Tensor::from_slice(&bias, n, &Device::Cpu).unwrap()))
            .unwrap();
        assert_eq!(w.weight.format, format, "{name}");
        for m in [1, 9, 32] {
            let (x, xs) = input(&g, m, k, m as u32);
            let got = g.read(&g.linear(&x, &w).unwrap()).unwrap();
            let want = plain_linear(&xs, &plain_w, Some(&bias), m, n, k);
            assert_close(&got, &want, 1e-5, &format!("{name}, {m} rows"));
        }
    }
}

#[test]
#[ignore = "needs a GPU adapter (lavapipe in .ci/run)"]
fn norm_rope_and_elementwise_ops_equal_the_cpu_backend() {
    let g = gpu();
    let cpu = Cpu::new();
    let (tokens, heads, dim) = (5, 3, 16);
    let (x, xs) = input(&g, tokens, heads * dim, 1);
    let xt = Tensor::from_slice(&xs, (tokens, heads * dim), &Device::Cpu).unwrap();
    let (w, ws) = input(&g, 1, dim, 2);
    let wt = Tensor::from_slice(&ws, dim, &Device::Cpu).unwrap();
    // QK-norm: every head of every token.
    let got = g.read(&g.rms_norm(&x, &w, 1e-6).unwrap()).unwrap();
    let by_head = xt.reshape((tokens * heads, dim)).unwrap();
    let want = cpu.rms_norm(&by_head, &wt, 1e-6).unwrap();
    assert_close(
        &got,
        &want.flatten_all().unwrap().to_vec1().unwrap(),
        1e-5,
        "rms_norm",
    );

    let (y, ys) = input(&g, tokens, heads * dim, 3);
    let yt = Tensor::from_slice(&ys, (tokens, heads * dim), &Device::Cpu).unwrap();
    let flat = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_close(
        &g.read(&g.add(&x, &y).unwrap()).unwrap(),
        &flat(cpu.add(&xt, &yt).unwrap()),
        1e-6,
        "add",
    );
    assert_close(
        &g.read(&g.swiglu(&x, &y).unwrap()).unwrap(),
        &flat(cpu.swiglu(&xt, &yt).unwrap()),
        1e-5,
        "swiglu",
    );
    assert_close(
        &g.read(&g.scale(&x, 0.25).unwrap()).unwrap(),
        &flat((&xt * 0.25).unwrap()),
        1e-6,
        "scale",
    );

    // Partial RoPE (half the head) at positions 3..8, against the CPU's heads-first op.
    let rope_dim = dim / 2;
    let half = rope_dim / 2;
    let mut tables = RopeTables {
        cos: vec![],
        sin: vec![],
        tokens,
        rope_dim,
    };
    for pos in 3..3 + tokens {
        for i in 0..half {
            let angle = pos as f32 / 10000f32.powf((2 * i) as f32 / rope_dim as f32);
            tables.cos.push(angle.cos());
            tables.sin.push(angle.sin());
        }
    }
    let pass = GpuPass {
        ids: g.kernels.upload("ids", &[0u32]),
        tokens,
        positions: g.kernels.upload("positions", &[0u32]),
        cos: g.kernels.upload("cos", &tables.cos),
        sin: g.kernels.upload("sin", &tables.sin),
        rope_dim,
        head_dim: dim,
        seqs: Vec::new(),
        outputs: g.kernels.upload("outputs", &[0u32]),
        outputs_per_seq: Vec::new(),
        wanted: Vec::new(),
    };
    let got = g.read(&g.rope(&x, &pass).unwrap()).unwrap();
    let heads_first = xt
        .reshape((tokens, heads, dim))
        .unwrap()
        .transpose(0, 1)
        .unwrap();
    let want = crate::backend::Rope::new(tables, &Device::Cpu)
        .unwrap()
        .apply(&heads_first)
        .unwrap();
    let want = want.transpose(0, 1).unwrap().contiguous().unwrap();
    assert_close(&got, &flat(want), 1e-6, "rope");
}

#[test]
#[ignore = "needs a GPU adapter (lavapipe in .ci/run)"]
fn attention_over_a_cache_equals_plain_masked_softmax() {
    let g = gpu();
    let (heads, kv_heads, dim, block) = (4, 2, 8, 4);
    let mut cache = KvCache::new(1);
    let (cached, fresh) = (6, 7);
    // One pass writes the first 6 positions (committed), the next attends 7 new ones
    // (spanning blocks) over them under the block-causal mask.
    let mut all_q = Vec::new();
    let mut all_k = Vec::new();
    let mut all_v = Vec::new();
    let mut outputs = Vec::new();
    for (start, len) in [(0, cached), (cached, fresh)] {
        let (q, qs) = input(&g, len, heads * dim, 10 + start as u32);
        let (k, ks) = input(&g, len, kv_heads * dim, 20 + start as u32);
        let (v, vs) = input(&g, len, kv_heads * dim, 30 + start as u32);
        let tokens: Vec<u32> = vec![0; len];
        let mut step = [SeqStep {
            tokens: &tokens,
            start,
            block_length: block,
            commit: len,
            logit_rows: &[],
            compute: None,
            wanted: crate::step::Wanted::Logits,
            cache: &mut cache,
        }];
        let rope = RopeTables {
            cos: vec![],
            sin: vec![],
            tokens: len,
            rope_dim: 0,
        };
        let heads_cfg = Heads {
            query: heads,
            kv: kv_heads,
            dim,
        };
        let rows = crate::step::PassRows::of(&step);
        let mut pass = g.pass(&mut step, rows, rope, heads_cfg).unwrap();
        let out = g.attend(&mut pass, 0, &q, &k, &v).unwrap();
        outputs = g.read(&out).unwrap();
        drop(pass);
        step[0].cache.advance(len);
        all_q = qs;
        all_k.extend(ks);
        all_v.extend(vs);
    }
    // Plain: query i (position cached + i) sees key j when j / block <= (cached + i) / block.
    let keys = cached + fresh;
    let mut want = Vec::new();
    for i in 0..fresh {
        let qpos = cached + i;
        for h in 0..heads {
            let kvh = h / (heads / kv_heads);
            let q = &all_q[(i * heads + h) * dim..][..dim];
            let scores: Vec<f64> = (0..keys)
                .map(|j| {
                    if j / block > qpos / block {
                        return f64::NEG_INFINITY;
                    }
                    let k = &all_k[(j * kv_heads + kvh) * dim..][..dim];
                    q.iter().zip(k).map(|(a, b)| *a as f64 * *b as f64).sum()
                })
                .collect();
            let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            for c in 0..dim {
                let v: f64 = (0..keys)
                    .map(|j| e[j] * all_v[(j * kv_heads + kvh) * dim + c] as f64)
                    .sum();
                want.push((v / sum) as f32);
            }
        }
    }
    assert_close(&outputs, &want, 1e-5, "attention");
}

#[test]
#[ignore = "needs a GPU adapter (lavapipe in .ci/run)"]
fn experts_equal_the_cpu_backend() {
    let g = gpu();
    let cpu = Cpu::new();
    let (h, inter, experts) = (64, 32, 6);
    let mut seed = 100;
    let mut weight = |_name: &str, shape: [usize; 2]| {
        seed += 1;
        let scale = 1.0 / (shape[1] as f32).sqrt();
        let v: Vec<f32> = values(shape[0] * shape[1], seed)
            .iter()
            .map(|x| x * scale)
            .collect();
        LinearWeight::new(
            Tensor::from_vec(v, (shape[0], shape[1]), &Device::Cpu).unwrap(),
            None,
            None,
        )
        .unwrap()
    };
    let mut mlp_parts = |e: &str| {
        [
            weight(&format!("{e}.gate_proj.weight"), [inter, h]),
            weight(&format!("{e}.up_proj.weight"), [inter, h]),
            weight(&format!("{e}.down_proj.weight"), [h, inter]),
        ]
    };
    let names: Vec<String> = (0..experts)
        .map(|e| format!("e{e}"))
        .chain(["shared".to_string()])
        .collect();
    let mut cpu_mlps = Vec::new();
    let mut gpu_mlps = Vec::new();
    for name in &names {
        let [gate, up, down] = mlp_parts(name);
        gpu_mlps.push(Mlp {
            gate_proj: g.linear_weight(gate.clone()).unwrap(),
            up_proj: g.linear_weight(up.clone()).unwrap(),
            down_proj: g.linear_weight(down.clone()).unwrap(),
        });
        cpu_mlps.push(Mlp {
            gate_proj: gate,
            up_proj: up,
            down_proj: down,
        });
    }
    // 9 tokens: a tile per expert; 40: experts with more than one tile of 8 slots.
    for tokens in [9, 40] {
        let routes: Vec<Route> = (0..tokens)
            .map(|t| Route {
                experts: vec![t % experts, (t * 5 + 2) % experts],
                weights: vec![0.6, 0.25 + t as f32 / 50.0],
            })
            .filter(|r| r.experts[0] != r.experts[1])
            .collect();
        let tokens = routes.len();
        let (x, xs) = input(&g, tokens, h, 4);
        let xt = Tensor::from_slice(&xs, (tokens, h), &Device::Cpu).unwrap();
        let logits =
            Tensor::zeros((tokens, experts), candle_core::DType::F32, &Device::Cpu).unwrap();
        let (shared_cpu, experts_cpu) = cpu_mlps.split_last().unwrap();
        let want = cpu
            .experts(
                &xt,
                &MoeInput {
                    experts: experts_cpu,
                    shared: Some(shared_cpu),
                    routes: &routes,
                    router_logits: &logits,
                    scaling: 1.0,
                },
            )
            .unwrap();
        let (shared_gpu, experts_gpu) = gpu_mlps.split_last().unwrap();
        let gpu_logits = g.activation(tokens, experts);
        let got = g
            .experts(
                &x,
                &MoeInput {
                    experts: experts_gpu,
                    shared: Some(shared_gpu),
                    routes: &routes,
                    router_logits: &gpu_logits,
                    scaling: 1.0,
                },
            )
            .unwrap();
        assert_close(
            &g.read(&got).unwrap(),
            &want.flatten_all().unwrap().to_vec1().unwrap(),
            1e-5,
            "experts",
        );
    }
}

#[test]
#[ignore = "needs a GPU adapter (lavapipe in .ci/run)"]
fn greedy_picks_equal_the_hosts() {
    let g = gpu();
    let (rows, vocab) = (5, 1000);
    let mut v = values(rows * vocab, 9);
    // A tie for the maximum in row 1: the first index wins, as on the host.
    v[vocab + 10] = 3.0;
    v[vocab + 700] = 3.0;
    let logits = g.weight(&v, rows, vocab, false).unwrap();
    let pass = |wanted: Vec<Wanted>| GpuPass {
        ids: g.kernels.upload("ids", &[0u32]),
        tokens: rows,
        positions: g.kernels.upload("positions", &[0u32]),
        cos: g.kernels.upload("cos", &[0f32]),
        sin: g.kernels.upload("sin", &[0f32]),
        rope_dim: 0,
        head_dim: 8,
        seqs: Vec::new(),
        outputs: g.kernels.upload("outputs", &[0u32]),
        outputs_per_seq: vec![2, 0, 3],
        wanted,
    };
    let out = g
        .outputs(pass(vec![Wanted::Greedy; 3]), Some(logits.clone()))
        .unwrap();
    let want: Vec<GreedyPick> = v.chunks_exact(vocab).map(GreedyPick::of).collect();
    let got: Vec<GreedyPick> = out
        .into_iter()
        .flatten()
        .flat_map(|o| match o {
            StepOutput::Greedy(p) => p,
            StepOutput::Logits(_) => panic!("asked for greedy picks"),
        })
        .collect();
    assert_eq!(got.len(), rows);
    assert_eq!(got[1].token, 10);
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g.token, w.token);
        assert!((g.confidence - w.confidence).abs() < 1e-6, "{g:?} vs {w:?}");
    }
    // A sequence that wants logits gets its rows.
    let out = g
        .outputs(
            pass(vec![Wanted::Greedy, Wanted::Greedy, Wanted::Logits]),
            Some(logits),
        )
        .unwrap();
    let Some(StepOutput::Logits(t)) = &out[2] else {
        panic!("asked for logits")
    };
    assert_eq!(t.dims(), [3, vocab]);
}
