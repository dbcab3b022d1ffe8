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

// 16 scalar chains, in workgroups of 8 (one subgroup on CPU-side SIMD compilers).
@compute @workgroup_size(8)
fn mad_scalar8(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) ng: vec3<u32>) {
    let i = gid.x + gid.y * ng.x * 8u;
    let s = src[i % arrayLength(&src)].x;
    var a: array<f32, 16>;
    for (var j = 0u; j < 16u; j++) {
        a[j] = s + f32(j);
    }
    for (var t = 0u; t < ITERS; t++) {
        a[0] = a[0] * 0.999999 + 1e-7; a[1] = a[1] * 0.999999 + 1e-7;
        a[2] = a[2] * 0.999999 + 1e-7; a[3] = a[3] * 0.999999 + 1e-7;
        a[4] = a[4] * 0.999999 + 1e-7; a[5] = a[5] * 0.999999 + 1e-7;
        a[6] = a[6] * 0.999999 + 1e-7; a[7] = a[7] * 0.999999 + 1e-7;
        a[8] = a[8] * 0.999999 + 1e-7; a[9] = a[9] * 0.999999 + 1e-7;
        a[10] = a[10] * 0.999999 + 1e-7; a[11] = a[11] * 0.999999 + 1e-7;
        a[12] = a[12] * 0.999999 + 1e-7; a[13] = a[13] * 0.999999 + 1e-7;
        a[14] = a[14] * 0.999999 + 1e-7; a[15] = a[15] * 0.999999 + 1e-7;
    }
    var r = 0.0;
    for (var j = 0u; j < 16u; j++) {
        r += a[j];
    }
    if (r == 12345.678) {
        dst[i % arrayLength(&dst)] = vec4<f32>(r);
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
