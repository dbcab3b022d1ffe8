// matvec.wgsl — decode's matrix-vector products: out [R, N] = a [R, K] · bᵀ for R ≤ 4 rows (the
// batch folded in) against a weight b stored [N, K] (Hugging Face's [out, in] layout), any float
// storage of a, b and out. Every weight element is read once, as stored (16-bit weights are never
// widened in memory), and the R ≤ 4 rows of a ride along. K is a multiple of 8 and N of 2, so a
// unit of 8 elements is one vec4<u32> (16-bit) or two (f32) and an output word holds whole pairs.
//
// The f32 arithmetic is the same for every storage dtype: each unit's 8 products are summed as
// fma(lo, wlo, fma(hi, whi, acc)) into one vec4 accumulator per (row, column).
//
// Two layouts of the same sums:
// - matvec_lanes (adapters that run shaders on CPU cores): each invocation owns two adjacent
//   columns and walks all of K; every load is 16 bytes and feeds 8·R multiply-adds per column.
// - matvec_wg (GPUs): MV_LANES invocations share a column, reading consecutive 16-byte units
//   (coalesced), then reduce their partial sums in workgroup memory.

override DWG: u32 = 64u;
override MV_LANES: u32 = 32u;

@group(0) @binding(0) var<storage, read> a: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read> b: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;

// The 8 elements from element e (a multiple of 8) of a tensor of dtype dt bound as `a` / `b`.
fn unit_of(dt: u32, v0: vec4<u32>, v1: vec4<u32>) -> array<vec4<f32>, 2> {
    if (is16(dt)) {
        return array<vec4<f32>, 2>(
            vec4<f32>(bitcast<f32>(elem_bits(dt, v0.x, false)), bitcast<f32>(elem_bits(dt, v0.x, true)),
                      bitcast<f32>(elem_bits(dt, v0.y, false)), bitcast<f32>(elem_bits(dt, v0.y, true))),
            vec4<f32>(bitcast<f32>(elem_bits(dt, v0.z, false)), bitcast<f32>(elem_bits(dt, v0.z, true)),
                      bitcast<f32>(elem_bits(dt, v0.w, false)), bitcast<f32>(elem_bits(dt, v0.w, true))));
    }
    return array<vec4<f32>, 2>(bitcast<vec4<f32>>(v0), bitcast<vec4<f32>>(v1));
}

fn a_unit(e: u32) -> array<vec4<f32>, 2> {
    if (is16(DT_A)) {
        return unit_of(DT_A, a[e / 8u], vec4<u32>(0u));
    }
    return unit_of(DT_A, a[e / 4u], a[e / 4u + 1u]);
}

fn b_unit(e: u32) -> array<vec4<f32>, 2> {
    if (is16(DT_B)) {
        return unit_of(DT_B, b[e / 8u], vec4<u32>(0u));
    }
    return unit_of(DT_B, b[e / 4u], b[e / 4u + 1u]);
}

fn mac(acc: vec4<f32>, x: array<vec4<f32>, 2>, w: array<vec4<f32>, 2>) -> vec4<f32> {
    return fma(x[0], w[0], fma(x[1], w[1], acc));
}

fn hsum(v: vec4<f32>) -> f32 {
    return (v.x + v.y) + (v.z + v.w);
}

// Stores columns c, c+1 (c even, local to this launch) of row r.
fn store_pair(r: u32, c: u32, v0: f32, v1: f32) {
    let col = P.n_off + c;
    let l = r * P.n_total + col;
    let e = r * P.out_pitch + col;
    if (is16(DT_OUT)) {
        out[e / 2u] = enc_at(v0, l) | (enc_at(v1, l + 1u) << 16u);
    } else {
        out[e] = enc_at(v0, l);
        out[e + 1u] = enc_at(v1, l + 1u);
    }
}

@compute @workgroup_size(DWG)
fn matvec_lanes(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = 2u * gid.x;
    if (c >= P.n) {
        return;
    }
    let k = P.k;
    let w0 = c * P.b_pitch;
    let w1 = w0 + P.b_pitch;
    var s00 = vec4<f32>(0.0);
    var s01 = vec4<f32>(0.0);
    var s10 = vec4<f32>(0.0);
    var s11 = vec4<f32>(0.0);
    var s20 = vec4<f32>(0.0);
    var s21 = vec4<f32>(0.0);
    var s30 = vec4<f32>(0.0);
    var s31 = vec4<f32>(0.0);
    for (var e = 0u; e < k; e += 8u) {
        let b0 = b_unit(w0 + e);
        let b1 = b_unit(w1 + e);
        let x0 = a_unit(e);
        s00 = mac(s00, x0, b0);
        s01 = mac(s01, x0, b1);
        if (P.m > 1u) {
            let x1 = a_unit(P.a_pitch + e);
            s10 = mac(s10, x1, b0);
            s11 = mac(s11, x1, b1);
        }
        if (P.m > 2u) {
            let x2 = a_unit(2u * P.a_pitch + e);
            s20 = mac(s20, x2, b0);
            s21 = mac(s21, x2, b1);
        }
        if (P.m > 3u) {
            let x3 = a_unit(3u * P.a_pitch + e);
            s30 = mac(s30, x3, b0);
            s31 = mac(s31, x3, b1);
        }
    }
    store_pair(0u, c, hsum(s00), hsum(s01));
    if (P.m > 1u) {
        store_pair(1u, c, hsum(s10), hsum(s11));
    }
    if (P.m > 2u) {
        store_pair(2u, c, hsum(s20), hsum(s21));
    }
    if (P.m > 3u) {
        store_pair(3u, c, hsum(s30), hsum(s31));
    }
}

// Partial sums of matvec_wg: [invocation][row] (DWG ≤ 256 invocations × 4 rows).
var<workgroup> part: array<vec4<f32>, 256>;

// One column per MV_LANES invocations (DWG / MV_LANES columns per workgroup, an even count).
@compute @workgroup_size(DWG)
fn matvec_wg(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let cols = DWG / MV_LANES;
    let lane = lid.x % MV_LANES;
    let local_col = lid.x / MV_LANES;
    // Columns past N read the last column (in bounds) and are never stored.
    let c = min(wid.x * cols + local_col, P.n - 1u);
    let w = c * P.b_pitch;
    var s0 = vec4<f32>(0.0);
    var s1 = vec4<f32>(0.0);
    var s2 = vec4<f32>(0.0);
    var s3 = vec4<f32>(0.0);
    for (var e = lane * 8u; e < P.k; e += MV_LANES * 8u) {
        let bw = b_unit(w + e);
        s0 = mac(s0, a_unit(e), bw);
        if (P.m > 1u) {
            s1 = mac(s1, a_unit(P.a_pitch + e), bw);
        }
        if (P.m > 2u) {
            s2 = mac(s2, a_unit(2u * P.a_pitch + e), bw);
        }
        if (P.m > 3u) {
            s3 = mac(s3, a_unit(3u * P.a_pitch + e), bw);
        }
    }
    part[lid.x] = vec4<f32>(hsum(s0), hsum(s1), hsum(s2), hsum(s3));
    workgroupBarrier();
    for (var h = MV_LANES / 2u; h > 0u; h = h / 2u) {
        if (lane < h) {
            part[lid.x] = part[lid.x] + part[lid.x + h];
        }
        workgroupBarrier();
    }
    // The first invocation of each even column stores the pair (its column and the next).
    let c0 = wid.x * cols + local_col;
    if (lane != 0u || local_col % 2u != 0u || c0 >= P.n) {
        return;
    }
    let v0 = part[lid.x];
    let v1 = part[lid.x + MV_LANES];
    for (var r = 0u; r < P.m; r++) {
        store_pair(r, c0, v0[r], v1[r]);
    }
}
