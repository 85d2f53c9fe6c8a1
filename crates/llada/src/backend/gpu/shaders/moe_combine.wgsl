// A MoE layer's mix: y[t, c] = sum over token t's routes, in ascending expert order (the
// CPU's order), of gate * out[slot, c], where out holds every (token, expert) slot's
// expert output; slots[t * k + i] and gates[t * k + i] list token t's routes.
struct Params { tokens: u32, width: u32, k: u32, _a: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> outs: array<f32>;
@group(0) @binding(2) var<storage, read> slots: array<u32>;
@group(0) @binding(3) var<storage, read> gates: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, groups, lid);
    if i >= p.tokens * p.width { return; }
    let t = i / p.width;
    let c = i % p.width;
    var acc = 0.0;
    for (var j = 0u; j < p.k; j++) {
        let s = slots[t * p.k + j];
        acc += outs[s * p.width + c] * gates[t * p.k + j];
    }
    y[i] = acc;
}
