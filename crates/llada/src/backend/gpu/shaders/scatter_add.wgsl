// y[rows[r], c] += gates[r] * x[r, c]: an expert's outputs mixed into its tokens' rows.
// Each row appears once per dispatch, so no two threads write one value.
struct Params { rows: u32, cols: u32, _a: u32, _b: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> rows: array<u32>;
@group(0) @binding(3) var<storage, read> gates: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, groups, lid);
    if i >= p.rows * p.cols { return; }
    let r = i / p.cols;
    let c = i % p.cols;
    let at = rows[r] * p.cols + c;
    y[at] = y[at] + x[i] * gates[r];
}
