// matmul_params.wgsl — shared by every matmul kernel (matmul, matmul_cpu, matmul_sg): the params
// uniform, the batch offsets of one output matrix, and the rounded store.

override DT_A: u32 = 0u;
override DT_B: u32 = 0u;
override DT_OUT: u32 = 0u;
override ROUND: u32 = 0u;   // 0 nearest even, 1 stochastic (keys in params)

struct Params {
    bdims: vec4<u32>,    // output batch dims (outermost first), `nb` of them
    sa: vec4<u32>,       // a's batch strides, in matrices (0 = broadcast)
    sb: vec4<u32>,
    nb: u32,
    m: u32,
    n: u32,
    k: u32,
    a_pitch: u32,        // stored row length of a (K, or M when ta), padded
    b_pitch: u32,
    out_pitch: u32,
    ta: u32,
    tb: u32,
    ka: u32,             // stochastic-rounding keys of this node and run
    kb: u32,
    n_off: u32,          // first output column of this launch (a weight split over bindings)
    n_total: u32,        // output columns in all
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(3) var<uniform> P: Params;

// Matrix indices (ma, mb) of a and b for output matrix z (broadcast batch dims).
fn batch_matrices(z: u32) -> vec2<u32> {
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
    return vec2<u32>(ma, mb);
}

// The stored bits of an output value at logical flat index `l`, with the node's rounding.
fn enc_at(v: f32, l: u32) -> u32 {
    return encode_round(DT_OUT, bitcast<u32>(v), ROUND == 1u, vec2<u32>(P.ka, P.kb), l);
}
