// Rotate-half RoPE on the first rope_dim dims of each head of x [tokens, heads, dim],
// from the host's tables cos/sin [tokens, rope_dim / 2]; the other dims are copied.
struct Params { tokens: u32, heads: u32, dim: u32, rope_dim: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> cos_t: array<f32>;
@group(0) @binding(3) var<storage, read> sin_t: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, groups, lid);
    if i >= p.tokens * p.heads * p.dim { return; }
    let c = i % p.dim;
    let token = i / (p.heads * p.dim);
    let half = p.rope_dim / 2u;
    if c >= p.rope_dim {
        out[i] = x[i];
        return;
    }
    let base = i - c;
    let f = c % half;
    let co = cos_t[token * half + f];
    let si = sin_t[token * half + f];
    let x1 = x[base + f];
    let x2 = x[base + f + half];
    if c < half {
        out[i] = x1 * co - x2 * si;
    } else {
        out[i] = x2 * co + x1 * si;
    }
}
