// Each logit row's greedy pick, so that only two numbers per row leave the device: the
// argmax (the first, on ties, as the host's) and its softmax probability
// 1 / sum(exp(l - max)). One workgroup per row; out[2r] = token, out[2r + 1] = probability
// (as f32 bits).
struct Params { rows: u32, vocab: u32, _a: u32, _b: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;
var<workgroup> best_value: array<f32, 64>;
var<workgroup> best_index: array<u32, 64>;
var<workgroup> sums: array<f32, 64>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let row = wg.y * groups.x + wg.x;
    if row >= p.rows { return; }
    let base = row * p.vocab;
    var value = -3.4028235e38;
    var index = 0xffffffffu;
    for (var i = lid; i < p.vocab; i += 64u) {
        let l = logits[base + i];
        if l > value { value = l; index = i; }
    }
    best_value[lid] = value;
    best_index[lid] = index;
    workgroupBarrier();
    for (var stride = 32u; stride > 0u; stride >>= 1u) {
        if lid < stride {
            let v = best_value[lid + stride];
            let j = best_index[lid + stride];
            if v > best_value[lid] || (v == best_value[lid] && j < best_index[lid]) {
                best_value[lid] = v;
                best_index[lid] = j;
            }
        }
        workgroupBarrier();
    }
    let max = best_value[0];
    var sum = 0.0;
    for (var i = lid; i < p.vocab; i += 64u) { sum += exp(logits[base + i] - max); }
    sums[lid] = sum;
    workgroupBarrier();
    for (var stride = 32u; stride > 0u; stride >>= 1u) {
        if lid < stride { sums[lid] += sums[lid + stride]; }
        workgroupBarrier();
    }
    if lid == 0u {
        out[2u * row] = best_index[0];
        out[2u * row + 1u] = bitcast<u32>(1.0 / sums[0]);
    }
}
