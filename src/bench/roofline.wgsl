// roofline.wgsl — `polytensor bench`'s roofline kernels, run on a raw wgpu device: FMA chains
// that stay in registers (three variants: compilers differ on which runs best), copy (16 and 64
// bytes per invocation), triad, and one tiny dispatch for the submit+wait floor.
@group(0) @binding(0) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> src2: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> dst: array<vec4<f32>>;

override ITERS: u32 = 256u;

@compute @workgroup_size(64)
fn fma_peak(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) ng: vec3<u32>) {
    let i = gid.x + gid.y * ng.x * 64u;
    let s = src[i % arrayLength(&src)];
    var a0 = s; var a1 = s + 1.0; var a2 = s + 2.0; var a3 = s + 3.0;
    var a4 = s + 4.0; var a5 = s + 5.0; var a6 = s + 6.0; var a7 = s + 7.0;
    let m = vec4<f32>(0.999999);
    let c = vec4<f32>(1e-7);
    for (var t = 0u; t < ITERS; t++) {
        a0 = fma(a0, m, c); a1 = fma(a1, m, c); a2 = fma(a2, m, c); a3 = fma(a3, m, c);
        a4 = fma(a4, m, c); a5 = fma(a5, m, c); a6 = fma(a6, m, c); a7 = fma(a7, m, c);
    }
    let r = ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7));
    // Never true for these values: keeps the chains live without a store per invocation.
    if (r.x == 12345.678) {
        dst[i % arrayLength(&dst)] = r;
    }
}

// The same chains as separate multiply and add (some CPU-side compilers lower `fma` to a
// library call where the target lacks FMA); the roofline takes the faster of the two.
@compute @workgroup_size(64)
fn mad_peak(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) ng: vec3<u32>) {
    let i = gid.x + gid.y * ng.x * 64u;
    let s = src[i % arrayLength(&src)];
    var a0 = s; var a1 = s + 1.0; var a2 = s + 2.0; var a3 = s + 3.0;
    var a4 = s + 4.0; var a5 = s + 5.0; var a6 = s + 6.0; var a7 = s + 7.0;
    let m = vec4<f32>(0.999999);
    let c = vec4<f32>(1e-7);
    for (var t = 0u; t < ITERS; t++) {
        a0 = a0 * m + c; a1 = a1 * m + c; a2 = a2 * m + c; a3 = a3 * m + c;
        a4 = a4 * m + c; a5 = a5 * m + c; a6 = a6 * m + c; a7 = a7 * m + c;
    }
    let r = ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7));
    if (r.x == 12345.678) {
        dst[i % arrayLength(&dst)] = r;
    }
}

@compute @workgroup_size(64)
fn copy(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) ng: vec3<u32>) {
    let i = gid.x + gid.y * ng.x * 64u;
    if (i < arrayLength(&dst)) {
        dst[i] = src[i];
    }
}

// Four consecutive vec4s (64 bytes) per invocation: fewer, wider accesses per lane.
@compute @workgroup_size(64)
fn copy4(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) ng: vec3<u32>) {
    let i = 4u * (gid.x + gid.y * ng.x * 64u);
    if (i + 3u < arrayLength(&dst)) {
        dst[i] = src[i];
        dst[i + 1u] = src[i + 1u];
        dst[i + 2u] = src[i + 2u];
        dst[i + 3u] = src[i + 3u];
    }
}

@compute @workgroup_size(64)
fn triad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) ng: vec3<u32>) {
    let i = gid.x + gid.y * ng.x * 64u;
    if (i < arrayLength(&dst)) {
        dst[i] = src[i] + 3.0 * src2[i];
    }
}

@compute @workgroup_size(64)
fn tiny(@builtin(global_invocation_id) gid: vec3<u32>) {
    if (gid.x == 0u) {
        dst[0] = src[0] + src2[0];
    }
}

// 32 scalar chains: lavapipe (SPIR-V) runs vec4 arithmetic about 5× slower than the same work
// in scalars, llvmpipe GL does not (75 vs 15 GFLOP/s on lavapipe, 84 vs 72 on GL, this CPU).
@compute @workgroup_size(64)
fn mad_scalar32(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) ng: vec3<u32>) {
    let i = gid.x + gid.y * ng.x * 64u;
    let s = src[i % arrayLength(&src)].x;
    var a0 = s + 0.0;
    var a1 = s + 1.0;
    var a2 = s + 2.0;
    var a3 = s + 3.0;
    var a4 = s + 4.0;
    var a5 = s + 5.0;
    var a6 = s + 6.0;
    var a7 = s + 7.0;
    var a8 = s + 8.0;
    var a9 = s + 9.0;
    var a10 = s + 10.0;
    var a11 = s + 11.0;
    var a12 = s + 12.0;
    var a13 = s + 13.0;
    var a14 = s + 14.0;
    var a15 = s + 15.0;
    var a16 = s + 16.0;
    var a17 = s + 17.0;
    var a18 = s + 18.0;
    var a19 = s + 19.0;
    var a20 = s + 20.0;
    var a21 = s + 21.0;
    var a22 = s + 22.0;
    var a23 = s + 23.0;
    var a24 = s + 24.0;
    var a25 = s + 25.0;
    var a26 = s + 26.0;
    var a27 = s + 27.0;
    var a28 = s + 28.0;
    var a29 = s + 29.0;
    var a30 = s + 30.0;
    var a31 = s + 31.0;
    for (var t = 0u; t < ITERS; t++) {
        a0 = a0 * 0.999999 + 1e-7;
        a1 = a1 * 0.999999 + 1e-7;
        a2 = a2 * 0.999999 + 1e-7;
        a3 = a3 * 0.999999 + 1e-7;
        a4 = a4 * 0.999999 + 1e-7;
        a5 = a5 * 0.999999 + 1e-7;
        a6 = a6 * 0.999999 + 1e-7;
        a7 = a7 * 0.999999 + 1e-7;
        a8 = a8 * 0.999999 + 1e-7;
        a9 = a9 * 0.999999 + 1e-7;
        a10 = a10 * 0.999999 + 1e-7;
        a11 = a11 * 0.999999 + 1e-7;
        a12 = a12 * 0.999999 + 1e-7;
        a13 = a13 * 0.999999 + 1e-7;
        a14 = a14 * 0.999999 + 1e-7;
        a15 = a15 * 0.999999 + 1e-7;
        a16 = a16 * 0.999999 + 1e-7;
        a17 = a17 * 0.999999 + 1e-7;
        a18 = a18 * 0.999999 + 1e-7;
        a19 = a19 * 0.999999 + 1e-7;
        a20 = a20 * 0.999999 + 1e-7;
        a21 = a21 * 0.999999 + 1e-7;
        a22 = a22 * 0.999999 + 1e-7;
        a23 = a23 * 0.999999 + 1e-7;
        a24 = a24 * 0.999999 + 1e-7;
        a25 = a25 * 0.999999 + 1e-7;
        a26 = a26 * 0.999999 + 1e-7;
        a27 = a27 * 0.999999 + 1e-7;
        a28 = a28 * 0.999999 + 1e-7;
        a29 = a29 * 0.999999 + 1e-7;
        a30 = a30 * 0.999999 + 1e-7;
        a31 = a31 * 0.999999 + 1e-7;
    }
    let r = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + a10 + a11 + a12 + a13 + a14 + a15 + a16 + a17 + a18 + a19 + a20 + a21 + a22 + a23 + a24 + a25 + a26 + a27 + a28 + a29 + a30 + a31;
    if (r == 12345.678) {
        dst[i % arrayLength(&dst)] = vec4<f32>(r);
    }
}
