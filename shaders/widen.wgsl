// widen.wgsl — f16/bf16 → f32 for contiguous tensors (even innermost dimension, a multiple of 8
// elements): each invocation decodes one 16-byte load (8 elements) into two 16-byte stores. On
// CPU-emulated adapters this is 8× fewer invocations and loads than the one-word cast kernel.

override DT_A: u32 = 1u;
override WG: u32 = 64u;

struct Params {
    count: u32,      // 16-byte groups of 8 input elements
    row_words: u32,  // invocations per dispatch row
    _p0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<storage, read> a: array<vec4<u32>>;
// Binding 1 is the cast family's unused second operand (the general kernel's layout).
@group(0) @binding(2) var<storage, read_write> out: array<vec4<u32>>;
@group(0) @binding(3) var<uniform> P: Params;

fn two(w: u32) -> vec2<u32> {
    return vec2<u32>(elem_bits(DT_A, w, false), elem_bits(DT_A, w, true));
}

@compute @workgroup_size(WG)
fn widen(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.y * P.row_words + gid.x;
    if (i >= P.count) {
        return;
    }
    let w = a[i];
    out[2u * i] = vec4<u32>(two(w.x), two(w.y));
    out[2u * i + 1u] = vec4<u32>(two(w.z), two(w.w));
}
