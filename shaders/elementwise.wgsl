// elementwise.wgsl — unary, binary (numpy broadcasting) and cast, one invocation per output word.
//
// a: (broadcast to out), b: (broadcast to out), out: (out dims). Shapes and strides come in the
// params uniform, so one pipeline serves every size. Compute is f32; the store encodes with
// integer bit operations (prelude.wgsl).

override DT_A: u32 = 0u;
override DT_B: u32 = 0u;
override DT_OUT: u32 = 0u;
// Unary: 0 neg, 1 exp, 2 sqrt, 3 rsqrt, 4 tanh, 5 gelu, 6 silu, 7 relu.
// Binary: 0 add, 1 sub, 2 mul, 3 div, 4 max.
override OP: u32 = 0u;
override WG: u32 = 256u;
override ROUND: u32 = 0u;     // 0 nearest even, 1 stochastic (keys in params)

struct Params {
    dims: array<vec4<u32>, 2>,   // out dims, outermost first, `rank` of them (0: no broadcast)
    sa: array<vec4<u32>, 2>,     // a's logical strides in out's index space (0 = broadcast)
    sb: array<vec4<u32>, 2>,
    rank: u32,
    out_last: u32,
    out_pitch: u32,
    words: u32,                  // output words to write
    a_last: u32,
    a_pitch: u32,
    b_last: u32,
    b_pitch: u32,
    row_words: u32,              // invocations per dispatch row (2-D dispatch for large tensors)
    ka: u32,                     // stochastic-rounding keys of this node and run
    kb: u32,
    _p2: u32,
}

@group(0) @binding(0) var<storage, read> a: array<u32>;
@group(0) @binding(1) var<storage, read> b: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;
@group(0) @binding(3) var<uniform> P: Params;

fn load_a(l: u32) -> u32 {
    let e = phys(l, P.a_last, P.a_pitch);
    return elem_bits(DT_A, a[word_of(DT_A, e)], (e & 1u) == 1u);
}

// The stored bits of a's element (16 bits for f16/bf16), undecoded.
fn load_a_raw(l: u32) -> u32 {
    let e = phys(l, P.a_last, P.a_pitch);
    let w = a[word_of(DT_A, e)];
    if (is16(DT_A)) {
        return select(w & 0xffffu, w >> 16u, (e & 1u) == 1u);
    }
    return w;
}

fn load_b(l: u32) -> u32 {
    let e = phys(l, P.b_last, P.b_pitch);
    return elem_bits(DT_B, b[word_of(DT_B, e)], (e & 1u) == 1u);
}

// Logical offsets into a and b of logical output element l. Rank 0 in the params means every
// operand has the output's shape (no broadcasting): the offsets are l itself.
fn offsets(l: u32) -> vec2<u32> {
    if (P.rank == 0u) {
        return vec2<u32>(l, l);
    }
    var rem = l;
    var oa = 0u;
    var ob = 0u;
    for (var d = i32(P.rank) - 1; d >= 0; d--) {
        let n = at8(P.dims, u32(d));
        let i = rem % n;
        rem = rem / n;
        oa += i * at8(P.sa, u32(d));
        ob += i * at8(P.sb, u32(d));
    }
    return vec2<u32>(oa, ob);
}

fn unary_op(x: f32) -> f32 {
    switch OP {
        case 0u: { return -x; }
        case 1u: { return exp(min(x, 88.0)); }
        case 2u: { return sqrt(x); }
        case 3u: { return inverseSqrt(x); }
        // tanh saturates to ±1 in f32 past |x| = 9; clamping keeps exp-based tanh finite.
        case 4u: { return tanh(clamp(x, -15.0, 15.0)); }
        case 5u: {
            let u = clamp(0.7978846 * (x + 0.044715 * x * x * x), -15.0, 15.0);
            return 0.5 * x * (1.0 + tanh(u));
        }
        case 6u: { return x / (1.0 + exp(min(-x, 88.0))); }
        default: { return max(x, 0.0); }
    }
}

fn binary_op(x: f32, y: f32) -> f32 {
    switch OP {
        case 0u: { return x + y; }
        case 1u: { return x - y; }
        case 2u: { return x * y; }
        case 3u: { return x / y; }
        default: { return max(x, y); }
    }
}

// Runs `kind` (0 unary, 1 binary, 2 cast) for the output word of this invocation.
fn run(kind: u32, gid: vec3<u32>) {
    let w = gid.y * P.row_words + gid.x;
    if (w >= P.words) {
        return;
    }
    let per = select(1u, 2u, is16(DT_OUT));
    var word = 0u;
    for (var h = 0u; h < per; h++) {
        let pe = w * per + h;
        let col = pe % P.out_pitch;
        var bits = 0u;
        if (col < P.out_last) {
            let l = (pe / P.out_pitch) * P.out_last + col;
            let o = offsets(l);
            let sr = ROUND == 1u;
            let keys = vec2<u32>(P.ka, P.kb);
            if (kind == 0u) {
                bits = encode_round(DT_OUT, bitcast<u32>(unary_op(bitcast<f32>(load_a(o.x)))), sr, keys, l);
            } else if (kind == 1u) {
                let x = bitcast<f32>(load_a(o.x));
                let y = bitcast<f32>(load_b(o.y));
                bits = encode_round(DT_OUT, bitcast<u32>(binary_op(x, y)), sr, keys, l);
            } else if (DT_A == DT_OUT) {
                // A cast to its own dtype copies the stored bits (signalling NaNs included).
                bits = load_a_raw(o.x);
            } else {
                // Cast: integer bits end to end (NaN, ±Inf and subnormals carried exactly).
                bits = encode_round(DT_OUT, load_a(o.x), sr, keys, l);
            }
        }
        word |= bits << (16u * h);
    }
    out[w] = word;
}

@compute @workgroup_size(WG)
fn unary(@builtin(global_invocation_id) gid: vec3<u32>) {
    run(0u, gid);
}

@compute @workgroup_size(WG)
fn binary(@builtin(global_invocation_id) gid: vec3<u32>) {
    run(1u, gid);
}

@compute @workgroup_size(WG)
fn convert(@builtin(global_invocation_id) gid: vec3<u32>) {
    run(2u, gid);
}
