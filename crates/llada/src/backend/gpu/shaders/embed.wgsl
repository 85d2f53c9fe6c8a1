// out[t, c] = table[ids[t], c]; the table is f32 or bf16 (WEIGHT_BF16).
override WEIGHT_BF16: bool = false;
struct Params { tokens: u32, width: u32, _a: u32, _b: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read> table: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

fn weight(i: u32) -> f32 {
    if WEIGHT_BF16 {
        let word = table[i / 2u];
        return bitcast<f32>(select(word << 16u, word & 0xffff0000u, (i & 1u) == 1u));
    }
    return bitcast<f32>(table[i]);
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, groups, lid);
    if i >= p.tokens * p.width { return; }
    let t = i / p.width;
    let c = i % p.width;
    out[i] = weight(ids[t] * p.width + c);
}
