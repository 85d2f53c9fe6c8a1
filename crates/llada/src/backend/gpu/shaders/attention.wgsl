// Attention of one sequence's queries (rows q_offset.. of q [tokens, heads * dim], already
// scaled) over keys/values [keys, kv_heads * dim] (its cache, the pass's rows written in)
// under the block-causal mask: key position j is visible to a query at position i when
// j / block <= i / block. One workgroup per (query, head); keys in tiles of 64, one score
// per thread, a running max and sum (online softmax); thread t owns dims t, t + 64, ...
struct Params {
    queries: u32, keys: u32, heads: u32, kv_heads: u32,
    dim: u32, block: u32, q_offset: u32, _a: u32,
}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read> positions: array<u32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
var<workgroup> q_row: array<f32, 256>;
var<workgroup> scores: array<f32, 64>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let head = wg.x;
    let query = wg.y;
    let row = p.q_offset + query;
    let kv_head = head / (p.heads / p.kv_heads);
    let width = p.kv_heads * p.dim;
    let q_base = row * p.heads * p.dim + head * p.dim;
    for (var c = lid; c < p.dim; c += 64u) { q_row[c] = q[q_base + c]; }
    workgroupBarrier();
    let query_block = positions[row] / p.block;
    var run_max = -3.4028235e38;
    var run_sum = 0.0;
    var acc: array<f32, 4>;
    for (var j = 0u; j < 4u; j++) { acc[j] = 0.0; }
    for (var tile = 0u; tile < p.keys; tile += 64u) {
        let key = tile + lid;
        var s = -3.4028235e38;
        var visible = false;
        if key < p.keys && key / p.block <= query_block {
            let k_base = key * width + kv_head * p.dim;
            var dot = 0.0;
            for (var c = 0u; c < p.dim; c++) { dot += q_row[c] * k[k_base + c]; }
            s = dot;
            visible = true;
        }
        scores[lid] = select(-3.4028235e38, s, visible);
        workgroupBarrier();
        let count = min(64u, p.keys - tile);
        var tile_max = -3.4028235e38;
        for (var j = 0u; j < count; j++) { tile_max = max(tile_max, scores[j]); }
        let new_max = max(run_max, tile_max);
        if new_max > -3.4028235e38 {
            let rescale = exp(run_max - new_max);
            run_sum *= rescale;
            for (var d = 0u; d < 4u; d++) { acc[d] *= rescale; }
            for (var j = 0u; j < count; j++) {
                let sj = scores[j];
                if sj > -3.4028235e38 {
                    let e = exp(sj - new_max);
                    run_sum += e;
                    let v_base = (tile + j) * width + kv_head * p.dim;
                    for (var d = 0u; d < 4u; d++) {
                        let c = lid + d * 64u;
                        if c < p.dim { acc[d] += e * v[v_base + c]; }
                    }
                }
            }
            run_max = new_max;
        }
        workgroupBarrier();
    }
    let o_base = row * p.heads * p.dim + head * p.dim;
    for (var d = 0u; d < 4u; d++) {
        let c = lid + d * 64u;
        if c < p.dim { out[o_base + c] = acc[d] / run_sum; }
    }
}
