// Writes the keys or values of a pass's rows into a layer's cache [capacity, width]:
// row r of x (at x_offset) goes to cache position slots[r].
struct Params { rows: u32, width: u32, x_offset: u32, _a: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> slots: array<u32>;
@group(0) @binding(3) var<storage, read_write> cache: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, groups, lid);
    if i >= p.rows * p.width { return; }
    let r = i / p.width;
    let c = i % p.width;
    cache[slots[r] * p.width + c] = x[(p.x_offset + r) * p.width + c];
}
