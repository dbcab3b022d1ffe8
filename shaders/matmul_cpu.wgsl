// matmul_cpu.wgsl — matmul for adapters that run shaders on CPU cores (lavapipe, llvmpipe, WARP),
// aligned, untransposed case. There each invocation is a SIMD lane and every storage load is a
// per-lane gather with a bounds check, so the kernel maximises multiply-adds per load: 16-byte
// loads (vec4<u32>) along K for A and along N for B, and a 4-row register block.
//
// a: (batch.., M, K), b: (batch.., K, N), out: (batch.., M, N), with K and N multiples of 4
// (f32) or 8 (f16/bf16: a word holds two elements, a vec4<u32> eight).

override DT_A: u32 = 0u;
override DT_B: u32 = 0u;
override DT_OUT: u32 = 0u;
override DWG: u32 = 64u;

struct Params {
    bdims: vec4<u32>,
    sa: vec4<u32>,
    sb: vec4<u32>,
    nb: u32,
    m: u32,
    n: u32,
    k: u32,
    a_pitch: u32,
    b_pitch: u32,
    out_pitch: u32,
    ta: u32,
    tb: u32,
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<storage, read> a: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read> b: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> out: array<vec4<u32>>;
@group(0) @binding(3) var<uniform> P: Params;

// Batch offsets (in elements) of output matrix z in a, b and out.
fn bases(z: u32) -> vec3<u32> {
    var rem = z;
    var ma = 0u;
    var mb = 0u;
    for (var d = i32(P.nb) - 1; d >= 0; d--) {
        let n = P.bdims[d];
        let i = rem % n;
        rem = rem / n;
        ma += i * P.sa[d];
        mb += i * P.sb[d];
    }
    return vec3<u32>(ma * P.m * P.k, mb * P.k * P.n, z * P.m * P.n);
}

fn f32x4(w: vec4<u32>) -> vec4<f32> {
    return bitcast<vec4<f32>>(w);
}

// The two 16-bit elements of word w, widened to f32.
fn pair(dt: u32, w: u32) -> vec2<f32> {
    return vec2<f32>(bitcast<f32>(elem_bits(dt, w, false)), bitcast<f32>(elem_bits(dt, w, true)));
}

fn enc(v: f32) -> u32 {
    return encode_bits(DT_OUT, bitcast<u32>(v));
}

// f32: each invocation computes rows row0..row0+3 × 4 contiguous columns.
@compute @workgroup_size(DWG)
fn matmul_v4(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let base = bases(wid.z);
    let quads = P.n / 4u;
    let q = min(gid.x, quads - 1u);
    let row0 = wid.y * 4u;
    var r: array<u32, 4>;
    for (var i = 0u; i < 4u; i++) {
        r[i] = (base.x + min(row0 + i, P.m - 1u) * P.k) / 4u;
    }
    let r0 = r[0];
    let r1 = r[1];
    let r2 = r[2];
    let r3 = r[3];
    let nq = P.n / 4u;
    var bi = base.y / 4u + q;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var k4 = 0u; k4 < P.k / 4u; k4++) {
        let b0 = f32x4(b[bi]);
        let b1 = f32x4(b[bi + nq]);
        let b2 = f32x4(b[bi + 2u * nq]);
        let b3 = f32x4(b[bi + 3u * nq]);
        bi += 4u * nq;
        let a0 = f32x4(a[r0 + k4]);
        let a1 = f32x4(a[r1 + k4]);
        let a2 = f32x4(a[r2 + k4]);
        let a3 = f32x4(a[r3 + k4]);
        acc0 = fma(vec4<f32>(a0.x), b0, fma(vec4<f32>(a0.y), b1, fma(vec4<f32>(a0.z), b2, fma(vec4<f32>(a0.w), b3, acc0))));
        acc1 = fma(vec4<f32>(a1.x), b0, fma(vec4<f32>(a1.y), b1, fma(vec4<f32>(a1.z), b2, fma(vec4<f32>(a1.w), b3, acc1))));
        acc2 = fma(vec4<f32>(a2.x), b0, fma(vec4<f32>(a2.y), b1, fma(vec4<f32>(a2.z), b2, fma(vec4<f32>(a2.w), b3, acc2))));
        acc3 = fma(vec4<f32>(a3.x), b0, fma(vec4<f32>(a3.y), b1, fma(vec4<f32>(a3.z), b2, fma(vec4<f32>(a3.w), b3, acc3))));
    }
    if (gid.x >= quads) {
        return;
    }
    let o = base.z / 4u + gid.x;
    if (row0 < P.m) {
        out[o + row0 * nq] = bitcast<vec4<u32>>(acc0);
    }
    if (row0 + 1u < P.m) {
        out[o + (row0 + 1u) * nq] = bitcast<vec4<u32>>(acc1);
    }
    if (row0 + 2u < P.m) {
        out[o + (row0 + 2u) * nq] = bitcast<vec4<u32>>(acc2);
    }
    if (row0 + 3u < P.m) {
        out[o + (row0 + 3u) * nq] = bitcast<vec4<u32>>(acc3);
    }
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
    if (row0 < P.m) {
        out[o + row0 * no] = vec4<u32>(enc(lo0.x) | (enc(lo0.y) << 16u), enc(lo0.z) | (enc(lo0.w) << 16u),
                                       enc(hi0.x) | (enc(hi0.y) << 16u), enc(hi0.z) | (enc(hi0.w) << 16u));
    }
    if (row0 + 1u < P.m) {
        out[o + (row0 + 1u) * no] = vec4<u32>(enc(lo1.x) | (enc(lo1.y) << 16u), enc(lo1.z) | (enc(lo1.w) << 16u),
                                              enc(hi1.x) | (enc(hi1.y) << 16u), enc(hi1.z) | (enc(hi1.w) << 16u));
    }
    if (row0 + 2u < P.m) {
        out[o + (row0 + 2u) * no] = vec4<u32>(enc(lo2.x) | (enc(lo2.y) << 16u), enc(lo2.z) | (enc(lo2.w) << 16u),
                                              enc(hi2.x) | (enc(hi2.y) << 16u), enc(hi2.z) | (enc(hi2.w) << 16u));
    }
    if (row0 + 3u < P.m) {
        out[o + (row0 + 3u) * no] = vec4<u32>(enc(lo3.x) | (enc(lo3.y) << 16u), enc(lo3.z) | (enc(lo3.w) << 16u),
                                              enc(hi3.x) | (enc(hi3.y) << 16u), enc(hi3.z) | (enc(hi3.w) << 16u));
    }
}
