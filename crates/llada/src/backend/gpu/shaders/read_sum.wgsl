// Reads a buffer once (grid-stride over vec4s) and writes one sum per thread, so the
// reads cannot be skipped: the read bandwidth probe of `bench --limits`.
struct Params { vec4s: u32, threads: u32, _a: u32, _b: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let t = flat_index(wg, groups, lid);
    if t >= p.threads { return; }
    var acc = vec4<f32>(0.0);
    for (var i = t; i < p.vec4s; i += p.threads) { acc += x[i]; }
    out[t] = acc.x + acc.y + acc.z + acc.w;
}
