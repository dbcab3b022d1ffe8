//! Stochastic rounding, reproducible bit for bit on every backend.
//!
//! Random bits come from a counter-based, stateless hash of (seed, stream, run counter, logical
//! flat element index): no state, no atomics. The per-run part (seed, stream, counter) folds into
//! two 32-bit keys on the host ([`sr_keys`]); each element then costs two rounds of murmur3's
//! 32-bit finaliser ([`sr_bits_keyed`]). `shaders/prelude.wgsl` has the same functions with the
//! same constants, so the CPU and every GPU draw the same bits.
//!
//! Rounding (settled decision 3): truncate the magnitude to the target format, take the dropped
//! bits as a fraction left-aligned to 32 bits, `t`, and round up — add one to the truncated bit
//! pattern, carrying into the next binade and past the largest finite value into Inf — iff
//! `r < t`. So P(up) = t / 2³², and the expected result is the input. Integer operations only.
//!
//! ```
//! use polytensor::rng::{sr_bits, f32_to_bf16_sr};
//! // Anyone can reproduce polytensor's SR outside it: same (seed, stream, counter, index) →
//! // same random bits → same bf16.
//! let r = sr_bits(42, 7, 0, 12345);
//! let x = 1.0f32 + 2f32.powi(-9); // a quarter of the way from 1.0 to the next bf16
//! let y = f32_to_bf16_sr(x.to_bits(), r);
//! assert!(y == 0x3f80 || y == 0x3f81);
//! assert_eq!(y, f32_to_bf16_sr(x.to_bits(), sr_bits(42, 7, 0, 12345)));
//! ```

/// SplitMix64's finaliser: folds the 64-bit per-run inputs on the host.
fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// murmur3's 32-bit finaliser (a bijection with full avalanche).
pub fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// The two 32-bit keys of one (seed, stream, run counter): what a kernel receives per run.
pub fn sr_keys(seed: u64, stream: u32, counter: u64) -> [u32; 2] {
    let k = mix64(seed ^ mix64(u64::from(stream) ^ mix64(counter)));
    [k as u32, (k >> 32) as u32]
}

/// The random bits of element `index` under `keys` (the per-element half, as in the kernels).
pub fn sr_bits_keyed(keys: [u32; 2], index: u32) -> u32 {
    let x = fmix32(index.wrapping_mul(0x9e37_79b1).wrapping_add(keys[0]));
    fmix32(x ^ keys[1])
}

/// The 32 random bits for logical flat element `index` of the node with `stream`, in the run
/// with `seed` and run `counter`.
pub fn sr_bits(seed: u64, stream: u32, counter: u64, index: u32) -> u32 {
    sr_bits_keyed(sr_keys(seed, stream, counter), index)
}

/// f32 bits → bf16 bits, rounded stochastically with random bits `r`. NaN → quiet NaN of the
/// same sign; ±Inf stay; subnormals are on the grid like any other value.
pub fn f32_to_bf16_sr(x: u32, r: u32) -> u16 {
    if x & 0x7fff_ffff > 0x7f80_0000 {
        return ((x >> 16) | 0x0040) as u16;
    }
    let a = x & 0x7fff_ffff;
    let t = (a & 0xffff) << 16;
    (((x >> 16) & 0x8000) | ((a >> 16) + u32::from(r < t))) as u16
}

/// f32 bits → f16 bits, rounded stochastically with random bits `r`. |x| ≥ 65536 → ±Inf (as
/// with round to nearest even); f16 subnormals are on the grid; below 2⁻³³ the dropped field is
/// wider than 32 bits and `t` keeps its top 32 (a bias under 2⁻³² ulp), and from 2⁻⁵⁶ down
/// `t = 0`. Every shift count stays below 32.
pub fn f32_to_f16_sr(x: u32, r: u32) -> u16 {
    let sign = ((x >> 16) & 0x8000) as u16;
    let a = x & 0x7fff_ffff;
    if a > 0x7f80_0000 {
        return sign | 0x7e00 | ((a >> 13) & 0x3ff) as u16;
    }
    if a >= 0x4780_0000 {
        return sign | 0x7c00;
    }
    let (trunc, t) = if a >= 0x3880_0000 {
        (
            (((a >> 23) - 112) << 10) | ((a >> 13) & 0x3ff),
            (a & 0x1fff) << 19,
        )
    } else {
        let e = a >> 23;
        let mant = (a & 0x7f_ffff) | 0x80_0000;
        // f16 subnormal grid: units of 2^-24; `shift` dropped bits (≥ 14).
        let shift = 126u32.saturating_sub(e);
        if e == 0 || shift >= 56 {
            (0, 0)
        } else if shift < 32 {
            (mant >> shift, mant << (32 - shift))
        } else {
            (0, mant >> (shift - 32))
        }
    };
    sign | (trunc + u32::from(r < t)) as u16
}

/// [`f32_to_bf16_sr`] without branches (the same results), for vectorised bulk loops.
#[inline]
pub fn f32_to_bf16_sr_select(x: u32, r: u32) -> u16 {
    let a = x & 0x7fff_ffff;
    let t = (a & 0xffff) << 16;
    let rounded = ((x >> 16) & 0x8000) | ((a >> 16) + u32::from(r < t));
    let nan = (x >> 16) | 0x0040;
    (if a > 0x7f80_0000 { nan } else { rounded }) as u16
}

/// [`f32_to_f16_sr`] without branches (the same results), for vectorised bulk loops. Every
/// candidate is computed with clamped shift counts and the right one selected.
#[inline]
pub fn f32_to_f16_sr_select(x: u32, r: u32) -> u16 {
    let sign = (x >> 16) & 0x8000;
    let a = x & 0x7fff_ffff;
    let e = a >> 23;
    let n_trunc = (e.wrapping_sub(112) << 10) | ((a >> 13) & 0x3ff);
    let n_t = (a & 0x1fff) << 19;
    let mant = (a & 0x7f_ffff) | 0x80_0000;
    let shift = 126u32.saturating_sub(e);
    let s_lo = shift.min(31);
    let s_hi = shift.saturating_sub(32).min(31);
    let sub_trunc = if shift < 32 { mant >> s_lo } else { 0 };
    let sub_t = if e == 0 || shift >= 56 {
        0
    } else if shift < 32 {
        mant << (32 - s_lo).min(31)
    } else {
        mant >> s_hi
    };
    let normal = a >= 0x3880_0000;
    let trunc = if normal { n_trunc } else { sub_trunc };
    let t = if normal { n_t } else { sub_t };
    let mut out = sign | (trunc + u32::from(r < t));
    out = if a >= 0x4780_0000 { sign | 0x7c00 } else { out };
    out = if a > 0x7f80_0000 {
        sign | 0x7e00 | ((a >> 13) & 0x3ff)
    } else {
        out
    };
    out as u16
}
