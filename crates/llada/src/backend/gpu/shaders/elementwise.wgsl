// Element-wise ops over n values: OP 0 add, 1 silu(a) * b (candle's silu formula),
// 2 a * scale.
override OP: u32 = 0u;
struct Params { n: u32, scale: f32, _a: u32, _b: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, groups, lid);
    if i >= p.n { return; }
    switch OP {
        case 0u: { out[i] = a[i] + b[i]; }
        case 1u: { let g = a[i]; out[i] = g / (1.0 + exp(-g)) * b[i]; }
        default: { out[i] = a[i] * p.scale; }
    }
}
