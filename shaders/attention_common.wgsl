// attention_common.wgsl — what every attention kernel shares (attention.wgsl, attention_cpu.wgsl,
// attention_sg.wgsl, attention_split.wgsl): the dtype overrides, the params, the lengths binding
// and the params uniform, the finite sentinel, the shifted exp, the visible-key count and the
// output encoding. Each kernel file declares q, k, v (bindings 0..2) and out (binding 4; the
// split kernel's partials) with its own element type.

override DT_IN: u32 = 0u;    // q, k and v
override DT_OUT: u32 = 0u;
override ROUND: u32 = 0u;

struct Params {
    hq: u32,
    hkv: u32,
    sq: u32,
    skv: u32,
    d: u32,
    in_pitch: u32,           // row pitch of q, k and v (elements)
    out_pitch: u32,
    keys: u32,               // keys read: q_offset + Sq, or Skv
    off: u32,                // the causal diagonal: query i sees keys ≤ off + i
    causal: u32,
    padding: u32,
    scale: f32,
    qblocks: u32,            // query blocks per (batch, head); attention_split.wgsl: key chunks
    blocks: u32,             // workgroups in all
    row_groups: u32,         // workgroups per dispatch row
    ka: u32,                 // stochastic-rounding keys of this node and run
    kb: u32,
    step: u32,               // attention_cpu.wgsl: keys per online-softmax step (its CK)
    chunk: u32,              // attention_split.wgsl: keys per chunk (a multiple of its GS)
    _p2: u32,
}

@group(0) @binding(3) var<storage, read> lens: array<u32>;   // q again without padding
@group(0) @binding(5) var<uniform> P: Params;

const FMAX: f32 = 3.4028235e38;
// exp(x − m) for x ≤ m without overflow, also with x or m at the −FMAX sentinel: the halves
// cannot overflow, and exp(−128) is 0 in f32.
fn exp_shifted(x: f32, m: f32) -> f32 {
    return exp(2.0 * max(0.5 * x - 0.5 * m, -64.0));
}

// Keys query row i of batch row b sees (backend/cpu/attention.rs `Geometry::visible`).
fn visible(b: u32, i: u32) -> u32 {
    var n = P.keys;
    if (P.causal != 0u) {
        n = min(n, P.off + i + 1u);
    }
    if (P.padding != 0u) {
        n = min(n, lens[b]);
    }
    return n;
}

// Output element c of query row `row` (flat over B, Hq, Sq), rounded for storage.
fn encoded(x: f32, row: u32, c: u32) -> u32 {
    return encode_round(DT_OUT, bitcast<u32>(x), ROUND == 1u, vec2<u32>(P.ka, P.kb), row * P.d + c);
}
