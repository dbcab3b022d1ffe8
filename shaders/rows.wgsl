// rows.wgsl — softmax, RMS norm, layer norm and argmax over the last axis, f32 accumulation:
// `rows` (one invocation per row, for CPU-emulated adapters) and `rows_tree` (a workgroup per
// row, tree reductions in workgroup memory, for GPUs).
//
// x: (rows, len) at row pitch x_pitch; w, b: (len); out: (rows, len) at row pitch out_pitch, or
// u32 (rows, 1) for argmax. A 16-bit output row has an even pitch, so a row's words belong to
// that row alone and whoever owns the row owns all its words (settled decision 1).

override DT_X: u32 = 0u;     // x, w and b share it
override DT_OUT: u32 = 0u;
override OP: u32 = 0u;       // 0 softmax, 1 rms_norm, 2 layer_norm, 3 argmax
override WG: u32 = 16u;
override ROUND: u32 = 0u;

struct Params {
    rows: u32,
    len: u32,
    x_pitch: u32,
    out_pitch: u32,
    row_groups: u32,         // rows (tree) or invocations (serial) per dispatch row
    has_w: u32,
    has_b: u32,
    eps: f32,
    ka: u32,                 // stochastic-rounding keys of this node and run
    kb: u32,
    _p0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<storage, read> x: array<u32>;
@group(0) @binding(1) var<storage, read> w: array<u32>;   // x again when absent
@group(0) @binding(2) var<storage, read> b: array<u32>;   // x again when absent
@group(0) @binding(3) var<storage, read_write> out: array<u32>;
@group(0) @binding(4) var<uniform> P: Params;

const FMAX: f32 = 3.4028235e38;

// f32 bits of element k of row r.
fn x_bits(r: u32, k: u32) -> u32 {
    let e = r * P.x_pitch + k;
    return elem_bits(DT_X, x[word_of(DT_X, e)], (e & 1u) == 1u);
}

fn load_x(r: u32, k: u32) -> f32 {
    return bitcast<f32>(x_bits(r, k));
}

// x with ±Inf replaced by ±FMAX, on the integer bits (softmax's definition; an implementation
// may assume no Inf reaches float arithmetic).
fn load_finite(r: u32, k: u32) -> f32 {
    let v = x_bits(r, k);
    let inf = (v & 0x7fffffffu) == 0x7f800000u;
    return bitcast<f32>(select(v, (v & 0x80000000u) | 0x7f7fffffu, inf));
}

fn load_w(k: u32) -> f32 {
    if (P.has_w == 0u) {
        return 1.0;
    }
    return bitcast<f32>(elem_bits(DT_X, w[word_of(DT_X, k)], (k & 1u) == 1u));
}

fn load_b(k: u32) -> f32 {
    if (P.has_b == 0u) {
        return 0.0;
    }
    return bitcast<f32>(elem_bits(DT_X, b[word_of(DT_X, k)], (k & 1u) == 1u));
}

// exp(v − m) for v ≤ m without overflow: the halves cannot overflow, and exp(−128) is 0 in f32.
fn exp_shifted(v: f32, m: f32) -> f32 {
    return exp(2.0 * max(0.5 * v - 0.5 * m, -64.0));
}

// Argmax's order as u32: NaN (either sign) above everything, −0 equal to +0, then the
// sign-magnitude flip. Every real key is ≥ 0x007fffff, so 0 is below all of them.
fn amax_key(v: u32) -> u32 {
    if ((v & 0x7fffffffu) > 0x7f800000u) {
        return 0xffffffffu;
    }
    let u = select(v, 0u, v == 0x80000000u);
    return select(u | 0x80000000u, ~u, (u & 0x80000000u) != 0u);
}

// Output element k of row r from the row's statistics st:
// softmax (max, sum, –), rms_norm (–, 1/rms, –), layer_norm (pivot, shifted mean, 1/std).
fn value(r: u32, k: u32, st: vec3<f32>) -> f32 {
    if (OP == 0u) {
        return exp_shifted(load_finite(r, k), st.x) / st.y;
    }
    if (OP == 1u) {
        return load_x(r, k) * st.y * load_w(k);
    }
    return (load_x(r, k) - st.x - st.y) * st.z * load_w(k) + load_b(k);
}

// Writes the words first, first + step, ... of row r.
fn store_row(r: u32, st: vec3<f32>, first: u32, step: u32) {
    let per = select(1u, 2u, is16(DT_OUT));
    let words = P.out_pitch / per;
    let keys = vec2<u32>(P.ka, P.kb);
    for (var j = first; j < words; j += step) {
        var word = 0u;
        for (var h = 0u; h < per; h++) {
            let k = j * per + h;
            if (k < P.len) {
                let y = bitcast<u32>(value(r, k, st));
                word |= encode_round(DT_OUT, y, ROUND == 1u, keys, r * P.len + k) << (16u * h);
            }
        }
        out[r * words + j] = word;
    }
}

@compute @workgroup_size(WG)
fn rows(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r = gid.y * P.row_groups + gid.x;
    if (r >= P.rows) {
        return;
    }
    let n = P.len;
    if (OP == 3u) {
        var best = 0u;
        var key = 0u;
        for (var k = 0u; k < n; k++) {
            let kv = amax_key(x_bits(r, k));
            if (kv > key) {
                best = k;
                key = kv;
            }
        }
        out[r] = best;
        return;
    }
    let nf = f32(max(n, 1u));
    var st = vec3<f32>(0.0);
    if (OP == 0u) {
        var m = -FMAX;
        for (var k = 0u; k < n; k++) {
            m = max(m, load_finite(r, k));
        }
        var s = 0.0;
        for (var k = 0u; k < n; k++) {
            s += exp_shifted(load_finite(r, k), m);
        }
        st = vec3<f32>(m, s, 0.0);
    } else if (OP == 1u) {
        var s = 0.0;
        for (var k = 0u; k < n; k++) {
            let v = load_x(r, k);
            s += v * v;
        }
        st = vec3<f32>(0.0, inverseSqrt(s / nf + P.eps), 0.0);
    } else {
        // Shifted by the row's first element, so a constant row has zero deviations exactly.
        let piv = load_x(r, 0u);
        var s = 0.0;
        for (var k = 0u; k < n; k++) {
            s += load_x(r, k) - piv;
        }
        let mu = s / nf;
        var q = 0.0;
        for (var k = 0u; k < n; k++) {
            let d = load_x(r, k) - piv - mu;
            q += d * d;
        }
        st = vec3<f32>(piv, mu, inverseSqrt(q / nf + P.eps));
    }
    store_row(r, st, 0u, 1u);
}

// The GPU class: one workgroup per row. Every barrier sits in uniform control flow (`r` is the
// same for the whole workgroup, OP is a constant; no early return before the last barrier), and
// no subgroup size is assumed.
override RWG: u32 = 128u;    // a power of two
var<workgroup> part: array<f32, RWG>;
var<workgroup> part_key: array<u32, RWG>;
var<workgroup> part_idx: array<u32, RWG>;

// The max (or sum) of v over the workgroup, returned to every invocation.
fn tree(v: f32, lid: u32, is_max: bool) -> f32 {
    part[lid] = v;
    workgroupBarrier();
    for (var s = RWG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            let o = part[lid + s];
            part[lid] = select(part[lid] + o, max(part[lid], o), is_max);
        }
        workgroupBarrier();
    }
    let total = part[0];
    // `part` is reused by the next tree.
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(RWG)
fn rows_tree(@builtin(local_invocation_id) lid3: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let lid = lid3.x;
    let r = wid.y * P.row_groups + wid.x;
    let live = r < P.rows;
    let n = select(0u, P.len, live);
    if (OP == 3u) {
        // Each invocation's best over its strided elements (ascending, so `>` keeps the lowest
        // index of a tie), then a tree on (key, index) that prefers the lower index on ties.
        var key = 0u;
        var best = 0xffffffffu;
        for (var k = lid; k < n; k += RWG) {
            let kv = amax_key(x_bits(r, k));
            if (kv > key) {
                best = k;
                key = kv;
            }
        }
        part_key[lid] = key;
        part_idx[lid] = best;
        workgroupBarrier();
        for (var s = RWG / 2u; s > 0u; s = s / 2u) {
            if (lid < s) {
                let k2 = part_key[lid + s];
                let i2 = part_idx[lid + s];
                if (k2 > part_key[lid] || (k2 == part_key[lid] && i2 < part_idx[lid])) {
                    part_key[lid] = k2;
                    part_idx[lid] = i2;
                }
            }
            workgroupBarrier();
        }
        if (lid == 0u && live) {
            let i = part_idx[0];
            out[r] = select(i, 0u, i == 0xffffffffu);
        }
        return;
    }
    let nf = f32(max(n, 1u));
    var st = vec3<f32>(0.0);
    if (OP == 0u) {
        var m = -FMAX;
        for (var k = lid; k < n; k += RWG) {
            m = max(m, load_finite(r, k));
        }
        m = tree(m, lid, true);
        var s = 0.0;
        for (var k = lid; k < n; k += RWG) {
            s += exp_shifted(load_finite(r, k), m);
        }
        st = vec3<f32>(m, tree(s, lid, false), 0.0);
    } else if (OP == 1u) {
        var s = 0.0;
        for (var k = lid; k < n; k += RWG) {
            let v = load_x(r, k);
            s += v * v;
        }
        st = vec3<f32>(0.0, inverseSqrt(tree(s, lid, false) / nf + P.eps), 0.0);
    } else {
        var piv = 0.0;
        if (n > 0u) {
            piv = load_x(r, 0u);
        }
        var s = 0.0;
        for (var k = lid; k < n; k += RWG) {
            s += load_x(r, k) - piv;
        }
        let mu = tree(s, lid, false) / nf;
        var q = 0.0;
        for (var k = lid; k < n; k += RWG) {
            let d = load_x(r, k) - piv - mu;
            q += d * d;
        }
        st = vec3<f32>(piv, mu, inverseSqrt(tree(q, lid, false) / nf + P.eps));
    }
    if (live) {
        store_row(r, st, lid, RWG);
    }
}
