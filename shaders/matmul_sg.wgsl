// matmul_sg.wgsl — f32 matmul for CPU-emulated adapters with 8-wide subgroups (lavapipe),
// aligned and untransposed: a: (batch.., M, K), b: (batch.., K, N), out: (batch.., M, N). There
// 16-bit matmuls are widened to f32 first (wgpu/mod.rs), so this is their kernel too.
//
// There, every invocation is a SIMD lane and every storage load is a per-lane loop with a bounds
// check, even when all lanes read the same address. So each lane loads *different* data with
// 16-byte loads: a slice of K for each of its 4 rows of A (spread to the other lanes with
// subgroupBroadcast, a register shuffle) and 4 columns of a row of B. Only created on adapters
// whose subgroup size is exactly 8 (the unrolled broadcasts assume it). Requires K % 32 == 0,
// N % 4 == 0 and M ≥ 16.

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
