// matmul_sg.wgsl — matmul for CPU-emulated adapters with 8-wide subgroups (lavapipe), aligned
// and untransposed: a: (batch.., M, K), b: (batch.., K, N), out: (batch.., M, N). Used for f32
// (matmul_sg4) and f16 (matmul_sg8), where each measured fastest (kernels/matmul.rs has the
// numbers).
//
// There, every invocation is a SIMD lane and every storage load is a per-lane loop with a bounds
// check, even when all lanes read the same address. So each lane loads *different* data with
// 16-byte loads: a slice of K for each of its 4 rows of A (spread to the other lanes with
// subgroupBroadcast, a register shuffle) and 4 (f32) or 8 (16-bit) columns of a row of B. Only
// created on adapters whose subgroup size is exactly 8 (the unrolled broadcasts assume it).
// Requires K % 32 == 0 and N % 4 == 0 (f32), K % 64 == 0 and N % 8 == 0 (16-bit).

override DWG: u32 = 64u;

// Rows of the f32 register block per invocation (a constant: function-scope arrays need one).
const SG_ROWS: u32 = 16u;


@group(0) @binding(0) var<storage, read> a: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read> b: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;

// Batch offsets (in elements) of output matrix z in a, b and out (contiguous operands).
fn bases(z: u32) -> vec3<u32> {
    let mats = batch_matrices(z);
    return vec3<u32>(mats.x * P.m * P.k, mats.y * P.k * P.n, z * P.m * P.n);
}

// 4 rows × 8 columns per lane; a lane's A slice is 8 consecutive k (4 words).

// The two 16-bit elements of word w, widened to f32.
fn pair(dt: u32, w: u32) -> vec2<f32> {
    return vec2<f32>(bitcast<f32>(elem_bits(dt, w, false)), bitcast<f32>(elem_bits(dt, w, true)));
}

// Eight k steps from B row index `bi` (stride no vec4s) with A words x[r] = A[r][k..k+8].
fn step8(acc: ptr<function, array<vec4<f32>, 8>>, x: array<vec4<u32>, 4>, bi: u32, no: u32) {
    for (var t = 0u; t < 4u; t++) {
        let w0 = b[bi + 2u * t * no];
        let w1 = b[bi + (2u * t + 1u) * no];
        let b0l = vec4<f32>(pair(DT_B, w0.x), pair(DT_B, w0.y));
        let b0h = vec4<f32>(pair(DT_B, w0.z), pair(DT_B, w0.w));
        let b1l = vec4<f32>(pair(DT_B, w1.x), pair(DT_B, w1.y));
        let b1h = vec4<f32>(pair(DT_B, w1.z), pair(DT_B, w1.w));
        for (var r = 0u; r < 4u; r++) {
            let p = pair(DT_A, x[r][t]);
            (*acc)[2u * r] = fma(vec4<f32>(p.y), b1l, fma(vec4<f32>(p.x), b0l, (*acc)[2u * r]));
            (*acc)[2u * r + 1u] = fma(vec4<f32>(p.y), b1h, fma(vec4<f32>(p.x), b0h, (*acc)[2u * r + 1u]));
        }
    }
}

@compute @workgroup_size(DWG)
fn matmul_sg8(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>,
              @builtin(subgroup_invocation_id) lane: u32) {
    let base = bases(wid.z);
    let no = P.n / 8u;
    let q = min(gid.x, no - 1u);
    let row0 = wid.y * 4u;
    let mm = P.m - 1u;
    let ko = P.k / 8u;
    let r0 = (base.x / 8u) + min(row0, mm) * ko + lane;
    let r1 = (base.x / 8u) + min(row0 + 1u, mm) * ko + lane;
    let r2 = (base.x / 8u) + min(row0 + 2u, mm) * ko + lane;
    let r3 = (base.x / 8u) + min(row0 + 3u, mm) * ko + lane;
    var acc: array<vec4<f32>, 8>;
    for (var i = 0u; i < 8u; i++) {
        acc[i] = vec4<f32>(0.0);
    }
    var bi = base.y / 8u + q;
    for (var k8 = 0u; k8 < ko; k8 += 8u) {
        let a0 = a[r0 + k8];
        let a1 = a[r1 + k8];
        let a2 = a[r2 + k8];
        let a3 = a[r3 + k8];
        step8(&acc, array(subgroupBroadcast(a0, 0u), subgroupBroadcast(a1, 0u), subgroupBroadcast(a2, 0u), subgroupBroadcast(a3, 0u)), bi, no);
        step8(&acc, array(subgroupBroadcast(a0, 1u), subgroupBroadcast(a1, 1u), subgroupBroadcast(a2, 1u), subgroupBroadcast(a3, 1u)), bi + 8u * no, no);
        step8(&acc, array(subgroupBroadcast(a0, 2u), subgroupBroadcast(a1, 2u), subgroupBroadcast(a2, 2u), subgroupBroadcast(a3, 2u)), bi + 16u * no, no);
        step8(&acc, array(subgroupBroadcast(a0, 3u), subgroupBroadcast(a1, 3u), subgroupBroadcast(a2, 3u), subgroupBroadcast(a3, 3u)), bi + 24u * no, no);
        step8(&acc, array(subgroupBroadcast(a0, 4u), subgroupBroadcast(a1, 4u), subgroupBroadcast(a2, 4u), subgroupBroadcast(a3, 4u)), bi + 32u * no, no);
        step8(&acc, array(subgroupBroadcast(a0, 5u), subgroupBroadcast(a1, 5u), subgroupBroadcast(a2, 5u), subgroupBroadcast(a3, 5u)), bi + 40u * no, no);
        step8(&acc, array(subgroupBroadcast(a0, 6u), subgroupBroadcast(a1, 6u), subgroupBroadcast(a2, 6u), subgroupBroadcast(a3, 6u)), bi + 48u * no, no);
        step8(&acc, array(subgroupBroadcast(a0, 7u), subgroupBroadcast(a1, 7u), subgroupBroadcast(a2, 7u), subgroupBroadcast(a3, 7u)), bi + 56u * no, no);
        bi += 64u * no;
    }
    if (gid.x >= no) {
        return;
    }
    for (var r = 0u; r < 4u; r++) {
        let gi = row0 + r;
        if (gi < P.m) {
            let l = base.z + gi * P.n + 8u * gid.x;
            let lo = acc[2u * r];
            let hi = acc[2u * r + 1u];
            let o = l / 2u;
            out[o] = enc_at(lo.x, l) | (enc_at(lo.y, l + 1u) << 16u);
            out[o + 1u] = enc_at(lo.z, l + 2u) | (enc_at(lo.w, l + 3u) << 16u);
            out[o + 2u] = enc_at(hi.x, l + 4u) | (enc_at(hi.y, l + 5u) << 16u);
            out[o + 3u] = enc_at(hi.z, l + 6u) | (enc_at(hi.w, l + 7u) << 16u);
        }
    }
}

// f32: SG_ROWS rows × 4 columns per lane. Per 32-deep slab of K a lane makes SG_ROWS + 32 16-byte
// loads for 128·SG_ROWS multiply-adds (the direct kernel: 12 scalar loads per 32).

fn fma4(acc: vec4<f32>, x: vec4<f32>, b0: vec4<f32>, b1: vec4<f32>, b2: vec4<f32>, b3: vec4<f32>) -> vec4<f32> {
    return fma(vec4<f32>(x.w), b3, fma(vec4<f32>(x.z), b2, fma(vec4<f32>(x.y), b1, fma(vec4<f32>(x.x), b0, acc))));
}

@compute @workgroup_size(DWG)
fn matmul_sg4(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>,
              @builtin(subgroup_invocation_id) lane: u32) {
    let base = bases(wid.z);
    let nq = P.n / 4u;
    let kq = P.k / 4u;
    let row0 = wid.y * SG_ROWS;
    var acc: array<vec4<f32>, SG_ROWS>;
    var av: array<vec4<f32>, SG_ROWS>;
    var ra: array<u32, SG_ROWS>;
    for (var r = 0u; r < SG_ROWS; r++) {
        acc[r] = vec4<f32>(0.0);
        // Rows past M read row M-1 (in bounds) and are never stored.
        ra[r] = base.x / 4u + min(row0 + r, P.m - 1u) * kq + lane;
    }
    var bi = base.y / 4u + min(gid.x, nq - 1u);
    for (var k8 = 0u; k8 < kq; k8 += 8u) {
        // Lane l holds A[r][4(k8+l) .. 4(k8+l)+4]; block j broadcasts lane j's slice.
        for (var r = 0u; r < SG_ROWS; r++) {
            av[r] = bitcast<vec4<f32>>(a[ra[r] + k8]);
        }
        {
            let b0 = bitcast<vec4<f32>>(b[bi + 0u * nq]);
            let b1 = bitcast<vec4<f32>>(b[bi + 1u * nq]);
            let b2 = bitcast<vec4<f32>>(b[bi + 2u * nq]);
            let b3 = bitcast<vec4<f32>>(b[bi + 3u * nq]);
            for (var r = 0u; r < SG_ROWS; r++) {
                acc[r] = fma4(acc[r], subgroupBroadcast(av[r], 0u), b0, b1, b2, b3);
            }
        }
        {
            let b0 = bitcast<vec4<f32>>(b[bi + 4u * nq]);
            let b1 = bitcast<vec4<f32>>(b[bi + 5u * nq]);
            let b2 = bitcast<vec4<f32>>(b[bi + 6u * nq]);
            let b3 = bitcast<vec4<f32>>(b[bi + 7u * nq]);
            for (var r = 0u; r < SG_ROWS; r++) {
                acc[r] = fma4(acc[r], subgroupBroadcast(av[r], 1u), b0, b1, b2, b3);
            }
        }
        {
            let b0 = bitcast<vec4<f32>>(b[bi + 8u * nq]);
            let b1 = bitcast<vec4<f32>>(b[bi + 9u * nq]);
            let b2 = bitcast<vec4<f32>>(b[bi + 10u * nq]);
            let b3 = bitcast<vec4<f32>>(b[bi + 11u * nq]);
            for (var r = 0u; r < SG_ROWS; r++) {
                acc[r] = fma4(acc[r], subgroupBroadcast(av[r], 2u), b0, b1, b2, b3);
            }
        }
        {
            let b0 = bitcast<vec4<f32>>(b[bi + 12u * nq]);
            let b1 = bitcast<vec4<f32>>(b[bi + 13u * nq]);
            let b2 = bitcast<vec4<f32>>(b[bi + 14u * nq]);
            let b3 = bitcast<vec4<f32>>(b[bi + 15u * nq]);
            for (var r = 0u; r < SG_ROWS; r++) {
                acc[r] = fma4(acc[r], subgroupBroadcast(av[r], 3u), b0, b1, b2, b3);
            }
        }
        {
            let b0 = bitcast<vec4<f32>>(b[bi + 16u * nq]);
            let b1 = bitcast<vec4<f32>>(b[bi + 17u * nq]);
            let b2 = bitcast<vec4<f32>>(b[bi + 18u * nq]);
            let b3 = bitcast<vec4<f32>>(b[bi + 19u * nq]);
            for (var r = 0u; r < SG_ROWS; r++) {
                acc[r] = fma4(acc[r], subgroupBroadcast(av[r], 4u), b0, b1, b2, b3);
            }
        }
        {
            let b0 = bitcast<vec4<f32>>(b[bi + 20u * nq]);
            let b1 = bitcast<vec4<f32>>(b[bi + 21u * nq]);
            let b2 = bitcast<vec4<f32>>(b[bi + 22u * nq]);
            let b3 = bitcast<vec4<f32>>(b[bi + 23u * nq]);
            for (var r = 0u; r < SG_ROWS; r++) {
                acc[r] = fma4(acc[r], subgroupBroadcast(av[r], 5u), b0, b1, b2, b3);
            }
        }
        {
            let b0 = bitcast<vec4<f32>>(b[bi + 24u * nq]);
            let b1 = bitcast<vec4<f32>>(b[bi + 25u * nq]);
            let b2 = bitcast<vec4<f32>>(b[bi + 26u * nq]);
            let b3 = bitcast<vec4<f32>>(b[bi + 27u * nq]);
            for (var r = 0u; r < SG_ROWS; r++) {
                acc[r] = fma4(acc[r], subgroupBroadcast(av[r], 6u), b0, b1, b2, b3);
            }
        }
        {
            let b0 = bitcast<vec4<f32>>(b[bi + 28u * nq]);
            let b1 = bitcast<vec4<f32>>(b[bi + 29u * nq]);
            let b2 = bitcast<vec4<f32>>(b[bi + 30u * nq]);
            let b3 = bitcast<vec4<f32>>(b[bi + 31u * nq]);
            for (var r = 0u; r < SG_ROWS; r++) {
                acc[r] = fma4(acc[r], subgroupBroadcast(av[r], 7u), b0, b1, b2, b3);
            }
        }
        bi += 32u * nq;
    }
    if (gid.x >= nq) {
        return;
    }
    for (var r = 0u; r < SG_ROWS; r++) {
        let gi = row0 + r;
        if (gi < P.m) {
            let o = base.z + gi * P.n + 4u * gid.x;
            out[o] = bitcast<u32>(acc[r].x);
            out[o + 1u] = bitcast<u32>(acc[r].y);
            out[o + 2u] = bitcast<u32>(acc[r].z);
            out[o + 3u] = bitcast<u32>(acc[r].w);
        }
    }
}
