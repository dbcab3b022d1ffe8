// elementwise.wgsl — unary, binary (numpy broadcasting) and cast, one invocation per output word.
//
// a: (broadcast to out), b: (broadcast to out), out: (out dims). Shapes and strides come in the
// params uniform, so one pipeline serves every size. Compute is f32; the store encodes with
// integer bit operations (prelude.wgsl).

override DT_A: u32 = 0u;
override DT_B: u32 = 0u;
override DT_OUT: u32 = 0u;
// Unary: 0 neg, 1 exp, 2 sqrt, 3 rsqrt, 4 tanh, 5 gelu, 6 silu, 7 relu, 8 erf, 9 gelu_erf.
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

// erf and erfc in f32: FreeBSD's s_erff.c (as in musl and Rust's libm, which the CPU uses), with
// its coefficients. WGSL has no erf. The notice that code asks to keep:
//   Copyright (C) 1993 by Sun Microsystems, Inc. All rights reserved.
//   Developed at SunPro, a Sun Microsystems, Inc. business.
//   Permission to use, copy, modify, and distribute this software is freely granted,
//   provided that this notice is preserved.
// Accuracy here rests on WGSL's `exp` (3 + 2·|x| ulp allowed, in erfc's tail only), so erf is
// within a few ulps and erfc within a few ulps times its argument squared.
const ERX: f32 = 8.4506291151e-01;

// erf(x) = x + x·R(x²) for |x| < 0.84375: returns R(x²).
fn erf_r(x: f32) -> f32 {
    let z = x * x;
    let r = 1.2837916613e-01 + z * (-3.2504209876e-01 + z * (-2.8481749818e-02
        + z * (-5.7702702470e-03 + z * -2.3763017452e-05)));
    let s = 1.0 + z * (3.9791721106e-01 + z * (6.5022252500e-02 + z * (5.0813062117e-03
        + z * (1.3249473704e-04 + z * -3.9602282413e-06))));
    return r / s;
}

// erf(a) = ERX + P/Q for 0.84375 ≤ a < 1.25: returns P/Q.
fn erf_pq(a: f32) -> f32 {
    let s = a - 1.0;
    let p = -2.3621185683e-03 + s * (4.1485610604e-01 + s * (-3.7220788002e-01
        + s * (3.1834661961e-01 + s * (-1.1089469492e-01 + s * (3.5478305072e-02
        + s * -2.1663755178e-03)))));
    let q = 1.0 + s * (1.0642088205e-01 + s * (5.4039794207e-01 + s * (7.1828655899e-02
        + s * (1.2617121637e-01 + s * (1.3637083583e-02 + s * 1.1984500103e-02)))));
    return p / q;
}

// erfc(a) for 1.25 ≤ a < 28, as exp(−a² − 0.5625 + R/S)/a with a² split exactly.
fn erfc_tail(a: f32) -> f32 {
    let s = 1.0 / (a * a);
    var r: f32;
    var q: f32;
    if (a < 2.857143) {
        r = -9.8649440333e-03 + s * (-6.9385856390e-01 + s * (-1.0558626175e+01
            + s * (-6.2375331879e+01 + s * (-1.6239666748e+02 + s * (-1.8460508728e+02
            + s * (-8.1287437439e+01 + s * -9.8143291473e+00))))));
        q = 1.0 + s * (1.9651271820e+01 + s * (1.3765776062e+02 + s * (4.3456588745e+02
            + s * (6.4538726807e+02 + s * (4.2900814819e+02 + s * (1.0863500214e+02
            + s * (6.5702495575e+00 + s * -6.0424413532e-02)))))));
    } else {
        r = -9.8649431020e-03 + s * (-7.9928326607e-01 + s * (-1.7757955551e+01
            + s * (-1.6063638306e+02 + s * (-6.3756646729e+02 + s * (-1.0250950928e+03
            + s * -4.8351919556e+02)))));
        q = 1.0 + s * (3.0338060379e+01 + s * (3.2579251099e+02 + s * (1.5367296143e+03
            + s * (3.1998581543e+03 + s * (2.5530502930e+03 + s * (4.7452853394e+02
            + s * -2.2440952301e+01))))));
    }
    // z: a with its low 13 mantissa bits cleared, so z² is exact in f32.
    let z = bitcast<f32>(bitcast<u32>(a) & 0xffffe000u);
    return exp(-z * z - 0.5625) * exp((z - a) * (z + a) + r / q) / a;
}

fn erf_f32(x: f32) -> f32 {
    let a = abs(x);
    if (a < 0.84375) {
        return x + x * erf_r(x);
    }
    var y = 1.0;
    if (a < 1.25) {
        y = ERX + erf_pq(a);
    } else if (a < 6.0) {
        y = 1.0 - erfc_tail(a);
    }
    return select(y, -y, x < 0.0);
}

// erfc(a) for a ≥ 0.
fn erfc_pos(a: f32) -> f32 {
    if (a < 0.84375) {
        let y = erf_r(a);
        if (a < 0.25) {
            return 1.0 - (a + a * y);
        }
        return 0.5 - (a - 0.5 + a * y);
    }
    if (a < 1.25) {
        return 1.0 - ERX - erf_pq(a);
    }
    if (a < 28.0) {
        return erfc_tail(a);
    }
    return 0.0;
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
        case 7u: { return max(x, 0.0); }
        case 8u: { return erf_f32(x); }
        default: {
            // The negative tail through erfc keeps its relative accuracy (1 + erf cancels).
            let t = x * 0.70710677;
            if (x < 0.0) {
                return 0.5 * x * erfc_pos(-t);
            }
            return 0.5 * x * (1.0 + erf_f32(t));
        }
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
