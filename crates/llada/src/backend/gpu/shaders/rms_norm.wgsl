// RMSNorm over rows: out = x / sqrt(mean(x^2) + eps) * w, one workgroup per row.
struct Params { rows: u32, cols: u32, eps: f32, _a: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
var<workgroup> partial: array<f32, 64>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let row = wg.y * groups.x + wg.x;
    if row >= p.rows { return; }
    let base = row * p.cols;
    var sum = 0.0;
    for (var c = lid; c < p.cols; c += 64u) {
        let v = x[base + c];
        sum += v * v;
    }
    partial[lid] = sum;
    workgroupBarrier();
    for (var stride = 32u; stride > 0u; stride >>= 1u) {
        if lid < stride { partial[lid] += partial[lid + stride]; }
        workgroupBarrier();
    }
    let inv = 1.0 / sqrt(partial[0] / f32(p.cols) + p.eps);
    for (var c = lid; c < p.cols; c += 64u) {
        out[base + c] = x[base + c] * inv * w[c];
    }
}
