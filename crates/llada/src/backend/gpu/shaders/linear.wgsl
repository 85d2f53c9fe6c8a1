// out[m, n] = sum_k x[m, k] * W[n, k] (+ bias[n]). W is f32 or bf16 (WEIGHT_BF16), read
// once per tile of ROWS rows: a workgroup holds 4 output columns, 16 threads per column
// walk its weight row in adjacent words and sum their partial products at the end.
override WEIGHT_BF16: bool = false;
override HAS_BIAS: bool = false;
const ROWS: u32 = 8u;
struct Params { m: u32, n: u32, k: u32, _a: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
var<workgroup> partial: array<f32, 512>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let col = wg.x * 4u + lid / 16u;
    let lane = lid % 16u;
    let row0 = wg.y * ROWS;
    var acc: array<f32, 8>;
    for (var r = 0u; r < ROWS; r++) { acc[r] = 0.0; }
    if col < p.n {
        if WEIGHT_BF16 {
            // Two weights per word: lane j takes words j, j + 16, ... (k is even).
            let words = p.k / 2u;
            let wbase = col * words;
            for (var j = lane; j < words; j += 16u) {
                let word = w[wbase + j];
                let w0 = bitcast<f32>(word << 16u);
                let w1 = bitcast<f32>(word & 0xffff0000u);
                for (var r = 0u; r < ROWS; r++) {
                    let row = row0 + r;
                    if row < p.m {
                        let xi = row * p.k + 2u * j;
                        acc[r] += x[xi] * w0 + x[xi + 1u] * w1;
                    }
                }
            }
        } else {
            let wbase = col * p.k;
            for (var j = lane; j < p.k; j += 16u) {
                let wv = bitcast<f32>(w[wbase + j]);
                for (var r = 0u; r < ROWS; r++) {
                    let row = row0 + r;
                    if row < p.m { acc[r] += x[row * p.k + j] * wv; }
                }
            }
        }
    }
    for (var r = 0u; r < ROWS; r++) { partial[lid * ROWS + r] = acc[r]; }
    workgroupBarrier();
    // Tree sum over the 16 lanes of each column.
    for (var stride = 8u; stride > 0u; stride >>= 1u) {
        if lane < stride {
            for (var r = 0u; r < ROWS; r++) {
                partial[lid * ROWS + r] += partial[(lid + stride) * ROWS + r];
            }
        }
        workgroupBarrier();
    }
    if lane < ROWS && col < p.n {
        let row = row0 + lane;
        if row < p.m {
            var v = partial[(lid - lane) * ROWS + lane];
            if HAS_BIAS { v += bias[col]; }
            out[row * p.n + col] = v;
        }
    }
}
