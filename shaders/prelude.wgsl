// prelude.wgsl — storage dtypes and their integer-only conversions, prepended to every kernel.
//
// Every tensor binding is an array<u32>. f32, u32 and i32 take one word per element; f16 and bf16
// are packed two per word (element 2i in the low half), and a 16-bit tensor whose innermost
// dimension is odd has an even row pitch (one pad element per row), so no two invocations ever
// write the same word (settled decision 1). Conversions work on integer bits only, mirroring
// src/dtype.rs line for line, so every adapter stores the same bits as the CPU.

const DT_F32: u32 = 0u;
const DT_F16: u32 = 1u;
const DT_BF16: u32 = 2u;
const DT_U32: u32 = 3u;
const DT_I32: u32 = 4u;

fn is16(dt: u32) -> bool {
    return dt == DT_F16 || dt == DT_BF16;
}

// The word holding physical element e.
fn word_of(dt: u32, e: u32) -> u32 {
    return select(e, e >> 1u, is16(dt));
}

// Physical element index of logical flat index l in a tensor whose innermost dimension has
// `last` elements stored with row pitch `pitch`.
fn phys(l: u32, last: u32, pitch: u32) -> u32 {
    let n = max(last, 1u);
    return (l / n) * pitch + l % n;
}

// f16 bits → f32 bits (exact; NaN made quiet with its payload kept). Branch-free: every case is
// computed and one is selected, which keeps SIMD lanes together on CPU-emulated adapters.
fn f16_to_f32_bits(h: u32) -> u32 {
    let sign = (h & 0x8000u) << 16u;
    let e = (h >> 10u) & 0x1fu;
    let m = h & 0x3ffu;
    let normal = sign | ((e + 112u) << 23u) | (m << 13u);
    let inf_nan = sign | 0x7f800000u | select(0u, 0x400000u | (m << 13u), m != 0u);
    // A subnormal m · 2^-24 has its leading one at bit p (0..9): shifts stay below 32.
    let p = 31u - countLeadingZeros(max(m, 1u));
    let sub = sign | ((p + 103u) << 23u) | ((m << (23u - p)) & 0x7fffffu);
    var r = select(normal, inf_nan, e == 0x1fu);
    r = select(r, select(sub, sign, m == 0u), e == 0u);
    return r;
}

// f32 bits → f16 bits, round to nearest even (subnormals exact, ≥ 65520 → Inf, NaN quiet).
fn f32_to_f16_bits(x: u32) -> u32 {
    let sign = (x >> 16u) & 0x8000u;
    let a = x & 0x7fffffffu;
    if (a > 0x7f800000u) {
        return sign | 0x7e00u | ((a >> 13u) & 0x3ffu);
    }
    if (a >= 0x477ff000u) {
        return sign | 0x7c00u;
    }
    if (a >= 0x38800000u) {
        let base = (((a >> 23u) - 112u) << 10u) | ((a >> 13u) & 0x3ffu);
        let rem = a & 0x1fffu;
        let up = rem > 0x1000u || (rem == 0x1000u && (base & 1u) == 1u);
        return sign | (base + select(0u, 1u, up));
    }
    if (a <= 0x33000000u) {
        return sign;
    }
    // f16 subnormal: the shift is 14..=24, so every shift count stays below 32.
    let mant = (a & 0x7fffffu) | 0x800000u;
    let shift = 126u - (a >> 23u);
    let k = mant >> shift;
    let rem = mant & ((1u << shift) - 1u);
    let half = 1u << (shift - 1u);
    let up = rem > half || (rem == half && (k & 1u) == 1u);
    return sign | (k + select(0u, 1u, up));
}

// f32 bits → bf16 bits, round to nearest even (NaN quiet, overflow carries into Inf).
fn f32_to_bf16_bits(x: u32) -> u32 {
    if ((x & 0x7fffffffu) > 0x7f800000u) {
        return (x >> 16u) | 0x0040u;
    }
    return (x + 0x7fffu + ((x >> 16u) & 1u)) >> 16u;
}

// The element of dtype `dt` in word w (the high half when `odd`), as f32 bits for the float
// dtypes and raw bits for the integer ones.
fn elem_bits(dt: u32, w: u32, odd: bool) -> u32 {
    if (dt == DT_F16) {
        return f16_to_f32_bits(select(w & 0xffffu, w >> 16u, odd));
    }
    if (dt == DT_BF16) {
        return select(w << 16u, w & 0xffff0000u, odd);
    }
    return w;
}

// f32 bits (or raw integer bits) → the stored bits of dtype `dt` (16 bits for f16/bf16).
fn encode_bits(dt: u32, x: u32) -> u32 {
    if (dt == DT_F16) {
        return f32_to_f16_bits(x);
    }
    if (dt == DT_BF16) {
        return f32_to_bf16_bits(x);
    }
    return x;
}

// Stochastic rounding (src/rng.rs has the same functions with the same constants): random bits
// of logical flat element `index` under the run's two keys, then round up iff r < t, where t is
// the dropped fraction left-aligned to 32 bits. Integer operations only.
fn fmix32(h0: u32) -> u32 {
    var h = h0;
    h ^= h >> 16u;
    h *= 0x85ebca6bu;
    h ^= h >> 13u;
    h *= 0xc2b2ae35u;
    return h ^ (h >> 16u);
}

fn sr_bits(keys: vec2<u32>, index: u32) -> u32 {
    let x = fmix32(index * 0x9e3779b1u + keys.x);
    return fmix32(x ^ keys.y);
}

fn f32_to_bf16_sr(x: u32, r: u32) -> u32 {
    if ((x & 0x7fffffffu) > 0x7f800000u) {
        return (x >> 16u) | 0x0040u;
    }
    let a = x & 0x7fffffffu;
    let t = (a & 0xffffu) << 16u;
    return ((x >> 16u) & 0x8000u) | ((a >> 16u) + select(0u, 1u, r < t));
}

fn f32_to_f16_sr(x: u32, r: u32) -> u32 {
    let sign = (x >> 16u) & 0x8000u;
    let a = x & 0x7fffffffu;
    if (a > 0x7f800000u) {
        return sign | 0x7e00u | ((a >> 13u) & 0x3ffu);
    }
    if (a >= 0x47800000u) {
        return sign | 0x7c00u;
    }
    var trunc = 0u;
    var t = 0u;
    if (a >= 0x38800000u) {
        trunc = (((a >> 23u) - 112u) << 10u) | ((a >> 13u) & 0x3ffu);
        t = (a & 0x1fffu) << 19u;
    } else {
        // f16 subnormal grid (units of 2^-24): `shift` ≥ 14 dropped bits. Each branch keeps its
        // shift counts below 32 (SPIR-V and GLSL leave larger counts undefined).
        let e = a >> 23u;
        let mant = (a & 0x7fffffu) | 0x800000u;
        let shift = 126u - min(e, 126u);
        if (e != 0u && shift < 32u) {
            trunc = mant >> shift;
            t = mant << (32u - shift);
        } else if (e != 0u && shift < 56u) {
            t = mant >> (shift - 32u);
        }
    }
    return sign | (trunc + select(0u, 1u, r < t));
}

// encode_bits with the node's rounding: stochastic (`sr`) for f16/bf16, else nearest even.
fn encode_round(dt: u32, x: u32, sr: bool, keys: vec2<u32>, index: u32) -> u32 {
    if (sr && dt == DT_F16) {
        return f32_to_f16_sr(x, sr_bits(keys, index));
    }
    if (sr && dt == DT_BF16) {
        return f32_to_bf16_sr(x, sr_bits(keys, index));
    }
    return encode_bits(dt, x);
}

// Reads element `i` (0..8) of a vec4 pair.
fn at8(v: array<vec4<u32>, 2>, i: u32) -> u32 {
    return v[i >> 2u][i & 3u];
}
