// matmul_cpu.wgsl — 16-bit matmul for adapters that run shaders on CPU cores (lavapipe,
// llvmpipe, WARP), aligned, untransposed case (f32 uses matmul.wgsl's matmul_direct, which
// measured faster there than 16-byte loads). There each invocation is a SIMD lane and every storage load is a
// per-lane gather with a bounds check, so the kernel maximises multiply-adds per load: 16-byte
// loads (vec4<u32>) along K for A and along N for B, and a 4-row register block.
//
// a: (batch.., M, K), b: (batch.., K, N), out: (batch.., M, N), f16 or bf16, with K and N
// multiples of 8 (a word holds two elements, a vec4<u32> eight).

override DWG: u32 = 64u;


@group(0) @binding(0) var<storage, read> a: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read> b: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> out: array<vec4<u32>>;

// Batch offsets (in elements) of output matrix z in a, b and out (contiguous operands).
fn bases(z: u32) -> vec3<u32> {
    let mats = batch_matrices(z);
    return vec3<u32>(mats.x * P.m * P.k, mats.y * P.k * P.n, z * P.m * P.n);
}

// The two 16-bit elements of word w, widened to f32.
fn pair(dt: u32, w: u32) -> vec2<f32> {
    return vec2<f32>(bitcast<f32>(elem_bits(dt, w, false)), bitcast<f32>(elem_bits(dt, w, true)));
}

// Four words (eight columns from `c`) of one output row `gi` of matrix `z`.
fn words8(lo: vec4<f32>, hi: vec4<f32>, z: u32, gi: u32, c: u32) -> vec4<u32> {
    let l = (z * P.m + gi) * P.n + c;
    return vec4<u32>(enc_at(lo.x, l) | (enc_at(lo.y, l + 1u) << 16u), enc_at(lo.z, l + 2u) | (enc_at(lo.w, l + 3u) << 16u),
                     enc_at(hi.x, l + 4u) | (enc_at(hi.y, l + 5u) << 16u), enc_at(hi.z, l + 6u) | (enc_at(hi.w, l + 7u) << 16u));
}

// f16/bf16: each invocation computes rows row0..row0+3 × 8 contiguous columns (four whole
// output words), walking K two at a time (one A word per row, two B vec4s).
@compute @workgroup_size(DWG)
fn matmul_v8(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let base = bases(wid.z);
    let octs = P.n / 8u;
    let q = min(gid.x, octs - 1u);
    let row0 = wid.y * 4u;
    // A rows as vec4 indices (8 elements each); B rows as vec4 indices (8 columns each).
    var ra: array<u32, 4>;
    for (var i = 0u; i < 4u; i++) {
        ra[i] = (base.x + min(row0 + i, P.m - 1u) * P.k) / 8u;
    }
    let ra0 = ra[0];
    let ra1 = ra[1];
    let ra2 = ra[2];
    let ra3 = ra[3];
    var bi = base.y / 8u + q;
    var lo0 = vec4<f32>(0.0);
    var hi0 = vec4<f32>(0.0);
    var lo1 = vec4<f32>(0.0);
    var hi1 = vec4<f32>(0.0);
    var lo2 = vec4<f32>(0.0);
    var hi2 = vec4<f32>(0.0);
    var lo3 = vec4<f32>(0.0);
    var hi3 = vec4<f32>(0.0);
    for (var k8 = 0u; k8 < P.k / 8u; k8++) {
        let av0 = a[ra0 + k8];
        let av1 = a[ra1 + k8];
        let av2 = a[ra2 + k8];
        let av3 = a[ra3 + k8];
        for (var j = 0u; j < 4u; j++) {
            // B rows k = 8·k8 + 2j and 2j+1, eight columns each.
            let w0 = b[bi];
            let w1 = b[bi + octs];
            bi += 2u * octs;
            let b0l = vec4<f32>(pair(DT_B, w0.x), pair(DT_B, w0.y));
            let b0h = vec4<f32>(pair(DT_B, w0.z), pair(DT_B, w0.w));
            let b1l = vec4<f32>(pair(DT_B, w1.x), pair(DT_B, w1.y));
            let b1h = vec4<f32>(pair(DT_B, w1.z), pair(DT_B, w1.w));
            let p0 = pair(DT_A, av0[j]);
            let p1 = pair(DT_A, av1[j]);
            let p2 = pair(DT_A, av2[j]);
            let p3 = pair(DT_A, av3[j]);
            lo0 = fma(vec4<f32>(p0.x), b0l, fma(vec4<f32>(p0.y), b1l, lo0));
            hi0 = fma(vec4<f32>(p0.x), b0h, fma(vec4<f32>(p0.y), b1h, hi0));
            lo1 = fma(vec4<f32>(p1.x), b0l, fma(vec4<f32>(p1.y), b1l, lo1));
            hi1 = fma(vec4<f32>(p1.x), b0h, fma(vec4<f32>(p1.y), b1h, hi1));
            lo2 = fma(vec4<f32>(p2.x), b0l, fma(vec4<f32>(p2.y), b1l, lo2));
            hi2 = fma(vec4<f32>(p2.x), b0h, fma(vec4<f32>(p2.y), b1h, hi2));
            lo3 = fma(vec4<f32>(p3.x), b0l, fma(vec4<f32>(p3.y), b1l, lo3));
            hi3 = fma(vec4<f32>(p3.x), b0h, fma(vec4<f32>(p3.y), b1h, hi3));
        }
    }
    if (gid.x >= octs) {
        return;
    }
    let o = base.z / 8u + gid.x;
    let no = P.n / 8u;
    let c = gid.x * 8u;
    if (row0 < P.m) {
        out[o + row0 * no] = words8(lo0, hi0, wid.z, row0, c);
    }
    if (row0 + 1u < P.m) {
        out[o + (row0 + 1u) * no] = words8(lo1, hi1, wid.z, row0 + 1u, c);
    }
    if (row0 + 2u < P.m) {
        out[o + (row0 + 2u) * no] = words8(lo2, hi2, wid.z, row0 + 2u, c);
    }
    if (row0 + 3u < P.m) {
        out[o + (row0 + 3u) * no] = words8(lo3, hi3, wid.z, row0 + 3u, c);
    }
}
