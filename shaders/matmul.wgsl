// matmul.wgsl — batched C = A·B with broadcast batch dims and optional transposes.
//
// a: (batch.., M, K) or (batch.., K, M) when ta; b: (batch.., K, N) or (batch.., N, K) when tb;
// out: (batch.., M, N) — or columns n_off.. of a wider output when a weight is split over
// several bindings (each launch then sees N = its chunk). One workgroup computes a BM×BN tile of one output matrix; each invocation
// keeps a 4×4 register block (4 rows, 4 adjacent columns: two whole words of a 16-bit output).
// K is walked in BK-deep slabs staged in workgroup memory as f32. Accumulation is always f32.
// ALIGNED (M % BM == 0, N % BN == 0, K % BK == 0) drops every bounds check.

override WX: u32 = 16u;          // invocations along N
override WY: u32 = 16u;          // invocations along M
override BK: u32 = 16u;
override BM: u32 = 64u;          // WY · 4
override BN: u32 = 64u;          // WX · 4
override A_TILE: u32 = 1024u;    // BK · BM
override B_TILE: u32 = 1024u;    // BK · BN
override ALIGNED: bool = false;


@group(0) @binding(0) var<storage, read> a: array<u32>;
@group(0) @binding(1) var<storage, read> b: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;

var<workgroup> As: array<f32, A_TILE>;   // [BK][BM]
var<workgroup> Bs: array<f32, B_TILE>;   // [BK][BN]

fn load_a(e: u32) -> f32 {
    return bitcast<f32>(elem_bits(DT_A, a[word_of(DT_A, e)], (e & 1u) == 1u));
}

fn load_b(e: u32) -> f32 {
    return bitcast<f32>(elem_bits(DT_B, b[word_of(DT_B, e)], (e & 1u) == 1u));
}

@compute @workgroup_size(WX, WY)
fn matmul(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    // Batch offsets (elements) of this output matrix in a, b and out.
    let mats = batch_matrices(wid.z);
    let ma = mats.x;
    let mb = mats.y;
    let a_rows = select(P.m, P.k, P.ta == 1u);
    let b_rows = select(P.k, P.n, P.tb == 1u);
    let a_base = ma * a_rows * P.a_pitch;
    let b_base = mb * b_rows * P.b_pitch;
    let o_base = wid.z * P.m * P.out_pitch;

    let row0 = wid.y * BM;
    let col0 = wid.x * BN;
    let tid = lid.y * WX + lid.x;
    let threads = WX * WY;
    var acc: array<vec4<f32>, 4>;
    for (var r = 0u; r < 4u; r++) {
        acc[r] = vec4<f32>(0.0);
    }
    for (var k0 = 0u; k0 < P.k; k0 += BK) {
        // Stage A[row0.., k0..] as [BK][BM]; consecutive invocations read consecutive
        // addresses of the stored layout.
        for (var idx = tid; idx < BM * BK; idx += threads) {
            var i: u32;
            var kk: u32;
            if (P.ta == 1u) {
                kk = idx / BM;
                i = idx % BM;
            } else {
                i = idx / BK;
                kk = idx % BK;
            }
            let gi = row0 + i;
            let gk = k0 + kk;
            var v = 0.0;
            if (ALIGNED || (gi < P.m && gk < P.k)) {
                v = load_a(a_base + select(gi * P.a_pitch + gk, gk * P.a_pitch + gi, P.ta == 1u));
            }
            As[kk * BM + i] = v;
        }
        for (var idx = tid; idx < BN * BK; idx += threads) {
            var j: u32;
            var kk: u32;
            if (P.tb == 1u) {
                j = idx / BK;
                kk = idx % BK;
            } else {
                kk = idx / BN;
                j = idx % BN;
            }
            let gj = col0 + j;
            let gk = k0 + kk;
            var v = 0.0;
            if (ALIGNED || (gj < P.n && gk < P.k)) {
                v = load_b(b_base + select(gk * P.b_pitch + gj, gj * P.b_pitch + gk, P.tb == 1u));
            }
            Bs[kk * BN + j] = v;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let bo = kk * BN + lid.x * 4u;
            let bv = vec4<f32>(Bs[bo], Bs[bo + 1u], Bs[bo + 2u], Bs[bo + 3u]);
            let ao = kk * BM + lid.y * 4u;
            acc[0] = fma(vec4<f32>(As[ao]), bv, acc[0]);
            acc[1] = fma(vec4<f32>(As[ao + 1u]), bv, acc[1]);
            acc[2] = fma(vec4<f32>(As[ao + 2u]), bv, acc[2]);
            acc[3] = fma(vec4<f32>(As[ao + 3u]), bv, acc[3]);
        }
        workgroupBarrier();
    }
    let c0 = col0 + lid.x * 4u;
    for (var r = 0u; r < 4u; r++) {
        let gi = row0 + lid.y * 4u + r;
        if (!ALIGNED && gi >= P.m) {
            continue;
        }
        let base = o_base + gi * P.out_pitch + P.n_off;
        let lrow = (wid.z * P.m + gi) * P.n_total + P.n_off;
        if (is16(DT_OUT)) {
            // Two whole words per row: columns (c0, c0+1) and (c0+2, c0+3); the pad column of an
            // odd N is written as zero by the invocation that owns its word.
            for (var p = 0u; p < 2u; p++) {
                let gj = c0 + 2u * p;
                if (gj < P.n) { // only this launch's words (a split weight's chunk)
                    let lo = select(0u, enc_at(acc[r][2u * p], lrow + gj), gj < P.n);
                    let hi = select(0u, enc_at(acc[r][2u * p + 1u], lrow + gj + 1u), gj + 1u < P.n);
                    out[(base + gj) >> 1u] = lo | (hi << 16u);
                }
            }
        } else {
            for (var c = 0u; c < 4u; c++) {
                if (ALIGNED || c0 + c < P.n) {
                    out[base + c0 + c] = bitcast<u32>(acc[r][c]);
                }
            }
        }
    }
}

// The variant for adapters that run shaders on CPU cores (lavapipe, llvmpipe, WARP): no
// workgroup memory and no barriers (a barrier splits the shader into coroutines there), and
// output columns interleaved across invocations so that the B loads of neighbouring invocations
// — the SIMD lanes — are contiguous. Each invocation owns 4 rows × 4 columns: for f32 the
// columns lane + j·DWG (j < 4); for 16-bit outputs two whole words (column pairs) word + j·DWG
// (j < 2), so no word is ever shared.
override DWG: u32 = 64u;

// Element (k, c) of B; c is already clamped into range (columns past N compute garbage that
// is never stored), so the inner loop has no branches.
fn b_at(b_base: u32, k: u32, c: u32) -> f32 {
    return load_b(b_base + select(k * P.b_pitch + c, c * P.b_pitch + k, P.tb == 1u));
}

fn a_at(a_base: u32, i: u32, k: u32) -> f32 {
    return load_a(a_base + select(i * P.a_pitch + k, k * P.a_pitch + i, P.ta == 1u));
}

// Stores one row of an invocation's block; `lrow` is the row's logical flat index.
fn store_row(base: u32, lrow: u32, cols: vec4<u32>, v: vec4<f32>, pairs: bool) {
    if (pairs) {
        for (var p = 0u; p < 2u; p++) {
            let gj = cols[2u * p];
            if (gj < P.n) { // only this launch's words (a split weight's chunk)
                let lo = select(0u, enc_at(v[2u * p], lrow + gj), gj < P.n);
                let hi = select(0u, enc_at(v[2u * p + 1u], lrow + gj + 1u), gj + 1u < P.n);
                out[(base + gj) >> 1u] = lo | (hi << 16u);
            }
        }
    } else {
        for (var c = 0u; c < 4u; c++) {
            if (cols[c] < P.n) {
                out[base + cols[c]] = encode_bits(DT_OUT, bitcast<u32>(v[c]));
            }
        }
    }
}

@compute @workgroup_size(DWG)
fn matmul_direct(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let mats = batch_matrices(wid.z);
    let ma = mats.x;
    let mb = mats.y;
    let a_base = ma * select(P.m, P.k, P.ta == 1u) * P.a_pitch;
    let b_base = mb * select(P.k, P.n, P.tb == 1u) * P.b_pitch;
    let o_base = wid.z * P.m * P.out_pitch;
    let row0 = wid.y * 8u;
    let pairs = is16(DT_OUT);
    var cols: vec4<u32>;
    if (pairs) {
        let w0 = wid.x * DWG * 2u + lid.x;
        cols = vec4<u32>(2u * w0, 2u * w0 + 1u, 2u * (w0 + DWG), 2u * (w0 + DWG) + 1u);
    } else {
        let c0 = wid.x * DWG * 4u + lid.x;
        cols = vec4<u32>(c0, c0 + DWG, c0 + 2u * DWG, c0 + 3u * DWG);
    }
    let last = P.n - 1u;
    let cc = min(cols, vec4<u32>(last));
    // Rows past M read row M-1 (in bounds) and are never stored.
    let mm = P.m - 1u;
    let r0 = min(row0, mm);
    let r1 = min(row0 + 1u, mm);
    let r2 = min(row0 + 2u, mm);
    let r3 = min(row0 + 3u, mm);
    let r4 = min(row0 + 4u, mm);
    let r5 = min(row0 + 5u, mm);
    let r6 = min(row0 + 6u, mm);
    let r7 = min(row0 + 7u, mm);
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    var acc4 = vec4<f32>(0.0);
    var acc5 = vec4<f32>(0.0);
    var acc6 = vec4<f32>(0.0);
    var acc7 = vec4<f32>(0.0);
    for (var k = 0u; k < P.k; k++) {
        let bv = vec4<f32>(b_at(b_base, k, cc.x), b_at(b_base, k, cc.y), b_at(b_base, k, cc.z), b_at(b_base, k, cc.w));
        acc0 = fma(vec4<f32>(a_at(a_base, r0, k)), bv, acc0);
        acc1 = fma(vec4<f32>(a_at(a_base, r1, k)), bv, acc1);
        acc2 = fma(vec4<f32>(a_at(a_base, r2, k)), bv, acc2);
        acc3 = fma(vec4<f32>(a_at(a_base, r3, k)), bv, acc3);
        acc4 = fma(vec4<f32>(a_at(a_base, r4, k)), bv, acc4);
        acc5 = fma(vec4<f32>(a_at(a_base, r5, k)), bv, acc5);
        acc6 = fma(vec4<f32>(a_at(a_base, r6, k)), bv, acc6);
        acc7 = fma(vec4<f32>(a_at(a_base, r7, k)), bv, acc7);
    }
    let accs = array<vec4<f32>, 8>(acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7);
    for (var r = 0u; r < 8u; r++) {
        if (row0 + r < P.m) {
            let gi = row0 + r;
            store_row(o_base + gi * P.out_pitch + P.n_off, (wid.z * P.m + gi) * P.n_total + P.n_off, cols, accs[r], pairs);
        }
    }
}
