// Copies a column range of selected rows: out[r, c] = x[rows[r], offset + c], c < cols,
// for x with `width` columns.
struct Params { rows: u32, cols: u32, width: u32, offset: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> rows: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, groups, lid);
    if i >= p.rows * p.cols { return; }
    let r = i / p.cols;
    let c = i % p.cols;
    out[i] = x[rows[r] * p.width + p.offset + c];
}
