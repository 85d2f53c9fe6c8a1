// out[m, n] = sum_k x[m, k] * W[n, k] (+ bias[n]), W (from word w_offset of its buffer)
// stored as FORMAT: 0 f32, 1 bf16
// (two per word), 2 q8_0 (blocks of 32: an f32 scale, then 32 signed bytes: 9 words),
// 3 q4k (ggml's 144-byte super-blocks of 256, as stored: 36 words). Quantized weights are
// widened here, never in memory. A workgroup holds 4 output columns and ROWS rows; 16
// threads per column walk its weight row in adjacent pieces (words, or blocks of 32) so
// each weight is read once per ROWS rows, and sum their partial products at the end.
//
// TILED: workgroup row y is a tile of up to ROWS rows that share one weight matrix (a
// MoE layer's tokens routed to one expert): tiles[3y..3y+3] = (the matrix's word offset,
// rows, first entry of `rows`), rows[2i], rows[2i+1] = (x row, out row). All experts of
// a layer run in one dispatch this way.
override FORMAT: u32 = 0u;
override HAS_BIAS: bool = false;
override TILED: bool = false;
const ROWS: u32 = 8u;
struct Params { m: u32, n: u32, k: u32, w_offset: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read> tiles: array<u32>;
@group(0) @binding(6) var<storage, read> rows: array<u32>;
var<workgroup> partial: array<f32, 512>;

// Byte i (0..12) of a q4k super-block's packed scales, starting at word `at`.
fn q4k_scale_byte(at: u32, i: u32) -> u32 {
    return (w[at + i / 4u] >> (8u * (i % 4u))) & 0xffu;
}

// The x row of row r of this workgroup's tile, or m (none) past its end.
fn x_row(r: u32, row0: u32, count: u32, first: u32) -> u32 {
    if r >= count { return p.m; }
    if TILED { return rows[2u * (first + r)]; }
    return row0 + r;
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let col = wg.x * 4u + lid / 16u;
    let lane = lid % 16u;
    var row0 = wg.y * ROWS;
    var count = min(ROWS, p.m - min(p.m, row0));
    var first = 0u;
    var w0 = p.w_offset;
    if TILED {
        w0 = tiles[3u * wg.y];
        count = tiles[3u * wg.y + 1u];
        first = tiles[3u * wg.y + 2u];
        row0 = 0u;
    }
    var xr: array<u32, 8>;
    for (var r = 0u; r < ROWS; r++) { xr[r] = x_row(r, row0, count, first); }
    var acc: array<f32, 8>;
    for (var r = 0u; r < ROWS; r++) { acc[r] = 0.0; }
    if col < p.n {
        switch FORMAT {
            case 0u: {
                let base = w0 + col * p.k;
                for (var j = lane; j < p.k; j += 16u) {
                    let wv = bitcast<f32>(w[base + j]);
                    for (var r = 0u; r < ROWS; r++) {
                        let row = xr[r];
                        if row < p.m { acc[r] += x[row * p.k + j] * wv; }
                    }
                }
            }
            case 1u: {
                let words = p.k / 2u;
                let base = w0 + col * words;
                for (var j = lane; j < words; j += 16u) {
                    let word = w[base + j];
                    let lo = bitcast<f32>(word << 16u);
                    let hi = bitcast<f32>(word & 0xffff0000u);
                    for (var r = 0u; r < ROWS; r++) {
                        let row = xr[r];
                        if row < p.m {
                            let xi = row * p.k + 2u * j;
                            acc[r] += x[xi] * lo + x[xi + 1u] * hi;
                        }
                    }
                }
            }
            case 2u: {
                let blocks = p.k / 32u;
                for (var b = lane; b < blocks; b += 16u) {
                    let at = w0 + (col * blocks + b) * 9u;
                    let scale = bitcast<f32>(w[at]);
                    for (var r = 0u; r < ROWS; r++) {
                        let row = xr[r];
                        if row >= p.m { continue; }
                        let xb = row * p.k + b * 32u;
                        var dot = 0.0;
                        for (var t = 0u; t < 8u; t++) {
                            let word = w[at + 1u + t];
                            for (var i = 0u; i < 4u; i++) {
                                let q = f32(bitcast<i32>(word << (24u - 8u * i)) >> 24u);
                                dot += x[xb + t * 4u + i] * q;
                            }
                        }
                        acc[r] += scale * dot;
                    }
                }
            }
            default: {
                // q4k: lane by lane over sub-blocks of 32 (8 per super-block).
                let subs = p.k / 32u;
                for (var s = lane; s < subs; s += 16u) {
                    let sb = s / 8u;
                    let sub = s % 8u;
                    let at = w0 + (col * (p.k / 256u) + sb) * 36u;
                    let dd = unpack2x16float(w[at]);
                    var sc: u32;
                    var mn: u32;
                    if sub < 4u {
                        sc = q4k_scale_byte(at + 1u, sub) & 63u;
                        mn = q4k_scale_byte(at + 1u, sub + 4u) & 63u;
                    } else {
                        sc = (q4k_scale_byte(at + 1u, sub + 4u) & 0xfu)
                            | ((q4k_scale_byte(at + 1u, sub - 4u) >> 6u) << 4u);
                        mn = (q4k_scale_byte(at + 1u, sub + 4u) >> 4u)
                            | ((q4k_scale_byte(at + 1u, sub) >> 6u) << 4u);
                    }
                    let d = dd.x * f32(sc);
                    let m = dd.y * f32(mn);
                    let chunk = sub / 2u;
                    let shift = 4u * (sub % 2u);
                    for (var r = 0u; r < ROWS; r++) {
                        let row = xr[r];
                        if row >= p.m { continue; }
                        let xb = row * p.k + sb * 256u + sub * 32u;
                        var dot = 0.0;
                        var sum = 0.0;
                        for (var t = 0u; t < 8u; t++) {
                            let word = w[at + 4u + chunk * 8u + t];
                            for (var i = 0u; i < 4u; i++) {
                                let q = f32((word >> (8u * i + shift)) & 0xfu);
                                let xv = x[xb + t * 4u + i];
                                dot += xv * q;
                                sum += xv;
                            }
                        }
                        acc[r] += d * dot - m * sum;
                    }
                }
            }
        }
    }
    for (var r = 0u; r < ROWS; r++) { partial[lid * ROWS + r] = acc[r]; }
    workgroupBarrier();
    // Tree sum over the 16 lanes of each column.
    for (var stride = 8u; stride > 0u; stride >>= 1u) {
        if lane < stride {
            for (var r = 0u; r < ROWS; r++) {
                partial[lid * ROWS + r] += partial[(lid + stride) * ROWS + r];
            }
        }
        workgroupBarrier();
    }
    if lane < count && col < p.n {
        var row = row0 + lane;
        if TILED { row = rows[2u * (first + lane) + 1u]; }
        var v = partial[(lid - lane) * ROWS + lane];
        if HAS_BIAS { v += bias[col]; }
        out[row * p.n + col] = v;
    }
}
