// rope.wgsl — rotary position embedding of x [B, H, S, D] (rows of D at pitch x_pitch), one
// invocation per output word (a 16-bit word's two elements belong to one row: D is even).
//
// Element k < rot of row r turns with its partner (rotate-half: k ± rot/2; interleaved: k ^ 1) by
// the angle pos · f_i, pos = first + r mod S, f_i = θ^(−2i/rot). WGSL's sin and cos are accurate
// only on [−π, π], and an f32 product pos · f_i is off by up to pos · 2⁻²⁴ rad, so the angle is
// reduced exactly, with integers: the host sends g_i = f_i / 2π as a 64-bit fixed-point fraction
// of a turn (G_i = g_i · 2⁶⁴, from f64), the kernel forms pos · G_i mod 2⁶⁴ (pos < 2²⁴, integer
// products, exact and the same on every adapter), reads the top bits as a signed fraction of a
// turn in [−1/2, 1/2) and scales it to radians; only that last scaling rounds (≈ half an f32 ulp
// of the reduced angle), so position 4095 — or 10⁷ — is as accurate as position 1.

override DT_X: u32 = 0u;
override DT_OUT: u32 = 0u;
override WG: u32 = 256u;
override ROUND: u32 = 0u;     // 0 nearest even, 1 stochastic (keys in params)

struct Params {
    rows: u32,                   // B · H · S
    len: u32,                    // D
    x_pitch: u32,
    out_pitch: u32,
    seq: u32,                    // S
    first: u32,                  // the position of row s = 0
    rot: u32,                    // rotary_dim
    interleaved: u32,
    words: u32,                  // output words to write
    row_words: u32,              // invocations per dispatch row (2-D dispatch for large tensors)
    ka: u32,                     // stochastic-rounding keys of this node and run
    kb: u32,
    // G_i as (low, high) u32 halves: pair i at freq[i / 2].xy (even i) or .zw (odd i).
    freq: array<vec4<u32>, 64>,
}

@group(0) @binding(0) var<storage, read> x: array<u32>;
@group(0) @binding(1) var<storage, read_write> out: array<u32>;
@group(0) @binding(2) var<uniform> P: Params;

// 2π / 2³² as f32 (0x30c90fdb) and the rest of it (2π − f32(2π)) / 2³² (0xa43bbd2e).
const K_HI: u32 = 0x30c90fdbu;
const K_LO: u32 = 0xa43bbd2eu;

fn x_bits(r: u32, k: u32) -> u32 {
    let e = r * P.x_pitch + k;
    return elem_bits(DT_X, x[word_of(DT_X, e)], (e & 1u) == 1u);
}

// a · b as a 64-bit (low, high) pair, from 16-bit halves (every partial product fits in u32).
fn mul_wide(a: u32, b: u32) -> vec2<u32> {
    let a0 = a & 0xffffu;
    let a1 = a >> 16u;
    let b0 = b & 0xffffu;
    let b1 = b >> 16u;
    let p00 = a0 * b0;
    let p01 = a0 * b1;
    let p10 = a1 * b0;
    let mid = (p00 >> 16u) + (p01 & 0xffffu) + (p10 & 0xffffu);
    let lo = (p00 & 0xffffu) | (mid << 16u);
    let hi = a1 * b1 + (p01 >> 16u) + (p10 >> 16u) + (mid >> 16u);
    return vec2<u32>(lo, hi);
}

// (cos, sin) of pos · f_i.
fn cos_sin(pos: u32, i: u32) -> vec2<f32> {
    let v = P.freq[i >> 1u];
    let g = select(v.xy, v.zw, (i & 1u) == 1u);
    // pos · G mod 2⁶⁴ (u32 products wrap): the angle's fraction of a turn, 64 bits.
    let p = mul_wide(pos, g.x);
    let s = bitcast<i32>(p.y + pos * g.y);     // signed, in 2⁻³² turns: [−2³¹, 2³¹)
    // s split into a part with ≤ 24 significant bits and a rest in [0, 256), both exact in f32,
    // plus the next 24 bits of the fraction.
    let s_hi = s & -256i;
    let t_hi = f32(s_hi);
    let t_lo = f32(s - s_hi) + f32(p.x >> 8u) * (1.0 / 16777216.0);
    let r = t_hi * bitcast<f32>(K_HI) + (t_lo * bitcast<f32>(K_HI) + f32(s) * bitcast<f32>(K_LO));
    return vec2<f32>(cos(r), sin(r));
}

// f32 bits of output element k of row r, at position pos.
fn value(r: u32, k: u32, pos: u32) -> u32 {
    if (k >= P.rot) {
        return x_bits(r, k);
    }
    let half = P.rot >> 1u;
    // (pair, partner, sign of the partner's term): the first of a pair gets x·cos − partner·sin,
    // the second x·cos + partner·sin.
    var i = k >> 1u;
    var partner = k ^ 1u;
    var sgn = select(-1.0, 1.0, (k & 1u) == 1u);
    if (P.interleaved == 0u) {
        let second = k >= half;
        i = select(k, k - half, second);
        partner = select(k + half, k - half, second);
        sgn = select(-1.0, 1.0, second);
    }
    let cs = cos_sin(pos, i);
    let a = bitcast<f32>(x_bits(r, k));
    let b = bitcast<f32>(x_bits(r, partner));
    return bitcast<u32>(a * cs.x + sgn * b * cs.y);
}

@compute @workgroup_size(WG)
fn rope(@builtin(global_invocation_id) gid: vec3<u32>) {
    let w = gid.y * P.row_words + gid.x;
    if (w >= P.words) {
        return;
    }
    let per = select(1u, 2u, is16(DT_OUT));
    let row_words = P.out_pitch / per;
    let r = w / row_words;
    let pos = P.first + r % P.seq;
    let keys = vec2<u32>(P.ka, P.kb);
    var word = 0u;
    for (var h = 0u; h < per; h++) {
        let k = (w % row_words) * per + h;
        if (k < P.len) {
            let y = value(r, k, pos);
            word |= encode_round(DT_OUT, y, ROUND == 1u, keys, r * P.len + k) << (16u * h);
        }
    }
    out[w] = word;
}
