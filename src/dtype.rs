//! Data types, rounding modes and the f32 ↔ f16/bf16 conversions.
//!
//! The scalar conversions here are written with integer operations on the bit patterns only. They
//! are the definition the WGSL kernels follow word for word (settled decision 1 of DESIGN.md), so
//! every backend stores the same bits. The bulk conversions use the `half` crate's slice routines
//! (F16C on x86 when present), which the tests check against the scalar definition.

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// The element type a tensor is stored in.
///
/// Floating-point ops compute and accumulate in f32 whatever the storage dtype; `U32`/`I32` hold
/// indices and integers (inputs, weights, state and casts only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DType {
    F32,
    F16,
    BF16,
    U32,
    I32,
}

impl DType {
    /// Every dtype, in a fixed order.
    pub const ALL: [DType; 5] = [DType::F32, DType::F16, DType::BF16, DType::U32, DType::I32];
    /// The floating-point dtypes.
    pub const FLOATS: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

    /// Bytes per element in host memory.
    pub fn size_of(self) -> usize {
        match self {
            DType::F32 | DType::U32 | DType::I32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }

    /// True for F32, F16 and BF16.
    pub fn is_float(self) -> bool {
        match self {
            DType::F32 | DType::F16 | DType::BF16 => true,
            DType::U32 | DType::I32 => false,
        }
    }

    /// Unit roundoff (half an ulp at 1.0) of a float dtype; 0 for the integer dtypes.
    pub fn epsilon(self) -> f64 {
        match self {
            DType::F32 => f64::from(f32::EPSILON) / 2.0,
            DType::F16 => 2f64.powi(-11),
            DType::BF16 => 2f64.powi(-8),
            DType::U32 | DType::I32 => 0.0,
        }
    }

    /// The lower-case name used in the text form and on the CLI (`f32`, `bf16`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::U32 => "u32",
            DType::I32 => "i32",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        DType::ALL
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or_else(|| {
                Error::Unsupported(format!("unknown dtype `{s}` (f32, f16, bf16, u32, i32)"))
            })
    }
}

/// How a value is rounded when it is stored in a narrower float format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum Rounding {
    /// IEEE round to nearest, ties to even.
    #[default]
    NearestEven,
    /// Stochastic rounding drawing from the random stream `stream` (fixed when the node is
    /// built; see [`crate::rng`]). Applies to f16/bf16 outputs; f32 and integer outputs ignore
    /// it.
    Stochastic { stream: u32 },
}

/// f32 → bf16 bits, round to nearest even. NaN becomes a quiet NaN of the same sign (the top
/// payload bits kept), ±Inf stays, values past the largest finite bf16 carry into ±Inf.
pub fn f32_to_bf16_bits(x: u32) -> u16 {
    if x & 0x7fff_ffff > 0x7f80_0000 {
        return ((x >> 16) | 0x0040) as u16;
    }
    // Adding 0x7fff (+1 when the kept lsb is odd) carries into the kept bits exactly when the
    // dropped half is above the tie, or at the tie with an odd lsb.
    let round = 0x7fff + ((x >> 16) & 1);
    (x.wrapping_add(round) >> 16) as u16
}

/// bf16 bits → f32 bits (exact; NaN payloads are kept).
pub fn bf16_bits_to_f32(h: u16) -> u32 {
    u32::from(h) << 16
}

/// f32 → f16 bits, round to nearest even, f16 subnormals exact, overflow to ±Inf
/// (|x| ≥ 65520 rounds to Inf, as IEEE says), NaN → quiet NaN of the same sign.
pub fn f32_to_f16_bits(x: u32) -> u16 {
    let sign = ((x >> 16) & 0x8000) as u16;
    let a = x & 0x7fff_ffff;
    if a > 0x7f80_0000 {
        return sign | 0x7e00 | ((a >> 13) & 0x3ff) as u16;
    }
    if a >= 0x477f_f000 {
        return sign | 0x7c00;
    }
    if a >= 0x3880_0000 {
        // Normal f16: rebias the exponent, round the 13 dropped mantissa bits.
        let base = (((a >> 23) - 112) << 10) | ((a >> 13) & 0x3ff);
        let rem = a & 0x1fff;
        let up = rem > 0x1000 || (rem == 0x1000 && base & 1 == 1);
        return sign | (base + u32::from(up)) as u16;
    }
    if a <= 0x3300_0000 {
        // At or below 2^-25 (half the smallest subnormal): the tie goes to the even zero.
        return sign;
    }
    // f16 subnormal: k = round(mant · 2^(e+1)) with e the unbiased exponent in [-25, -15].
    let mant = (a & 0x7f_ffff) | 0x80_0000;
    let shift = 126 - (a >> 23); // = -(e + 1), in 14..=24
    let k = mant >> shift;
    let rem = mant & ((1 << shift) - 1);
    let half = 1 << (shift - 1);
    let up = rem > half || (rem == half && k & 1 == 1);
    sign | (k + u32::from(up)) as u16
}

/// f16 bits → f32 bits (exact, subnormals included; NaN becomes quiet, payload kept).
pub fn f16_bits_to_f32(h: u16) -> u32 {
    let h = u32::from(h);
    let sign = (h & 0x8000) << 16;
    let exp = (h >> 10) & 0x1f;
    let man = h & 0x3ff;
    if exp == 0x1f {
        if man == 0 {
            return sign | 0x7f80_0000;
        }
        return sign | 0x7fc0_0000 | (man << 13);
    }
    if exp == 0 {
        if man == 0 {
            return sign;
        }
        // man · 2^-24 with its leading one at bit p.
        let p = 31 - man.leading_zeros();
        return sign | ((p + 103) << 23) | ((man << (23 - p)) & 0x7f_ffff);
    }
    sign | ((exp + 112) << 23) | (man << 13)
}

/// Elements per rayon task in bulk conversions: large enough that scheduling is noise.
const CONVERT_CHUNK: usize = 1 << 15;

/// Conversions up to this many elements run on the calling thread.
const SEQUENTIAL: usize = 1 << 14;

/// Elements converted per stack block: the block stays in L1 between convert and copy.
const BLOCK: usize = 512;

/// Fills a new vector of `src.len()` elements by converting `BLOCK`-element blocks with `f`,
/// multi-threaded, writing into uninitialised capacity (no zeroing pass, no page-touching twice).
fn convert_new<S: Sync, D: Copy + Default + Send>(
    src: &[S],
    f: impl Fn(&[S], &mut [D]) + Sync,
) -> Vec<D> {
    let mut out = Vec::new();
    convert_into(src, &mut out, f);
    out
}

/// Like `convert_new`, into `out` (cleared; its capacity is reused, so a recycled buffer costs
/// no allocation and no page faults).
fn convert_into<S: Sync, D: Copy + Default + Send>(
    src: &[S],
    out: &mut Vec<D>,
    f: impl Fn(&[S], &mut [D]) + Sync,
) {
    let n = src.len();
    out.clear();
    out.reserve(n);
    let convert = |d: &mut [std::mem::MaybeUninit<D>], s: &[S]| {
        let mut buf = [D::default(); BLOCK];
        for (d, s) in d.chunks_mut(BLOCK).zip(s.chunks(BLOCK)) {
            let b = &mut buf[..s.len()];
            f(s, b);
            for (o, &v) in d.iter_mut().zip(b.iter()) {
                o.write(v);
            }
        }
    };
    let dst = &mut out.spare_capacity_mut()[..n];
    if n <= SEQUENTIAL {
        // Waking the pool costs more than converting a small operand on this thread.
        convert(dst, src);
    } else {
        dst.par_chunks_mut(CONVERT_CHUNK)
            .zip(src.par_chunks(CONVERT_CHUNK))
            .for_each(|(d, s)| convert(d, s));
    }
    // SAFETY: the chunks above cover all `n` slots of the spare capacity and each was written.
    unsafe { out.set_len(n) };
}

/// f16 → f32 into `out` (exact), reusing its capacity.
pub fn widen_f16_into(src: &[f16], out: &mut Vec<f32>) {
    convert_into(src, out, |s, d| s.convert_to_f32_slice(d));
}

/// bf16 → f32 into `out` (exact), reusing its capacity.
pub fn widen_bf16_into(src: &[bf16], out: &mut Vec<f32>) {
    convert_into(src, out, |s, d: &mut [f32]| {
        for (o, &x) in d.iter_mut().zip(s) {
            *o = f32::from_bits(bf16_bits_to_f32(x.to_bits()));
        }
    });
}

/// f16 → a new f32 vector (exact), F16C where present.
pub fn widen_f16(src: &[f16]) -> Vec<f32> {
    convert_new(src, |s, d| s.convert_to_f32_slice(d))
}

/// bf16 → a new f32 vector (exact).
pub fn widen_bf16(src: &[bf16]) -> Vec<f32> {
    convert_new(src, |s, d: &mut [f32]| {
        for (o, &x) in d.iter_mut().zip(s) {
            *o = f32::from_bits(bf16_bits_to_f32(x.to_bits()));
        }
    })
}

/// f32 → a new f16 vector (round to nearest even), F16C where present.
pub fn narrow_f16(src: &[f32]) -> Vec<f16> {
    convert_new(src, |s, d: &mut [f16]| d.convert_from_f32_slice(s))
}

/// f32 → a new bf16 vector (round to nearest even).
pub fn narrow_bf16(src: &[f32]) -> Vec<bf16> {
    convert_new(src, |s, d: &mut [bf16]| {
        for (o, &x) in d.iter_mut().zip(s) {
            *o = bf16::from_bits(f32_to_bf16_bits(x.to_bits()));
        }
    })
}

/// f32 → a new 16-bit vector rounded stochastically: element `i` draws
/// `rng::sr_bits_keyed(keys, i)` (the logical flat index), so the result does not depend on how
/// the work is split over threads.
fn narrow_sr<D: Copy + Default + Send>(
    src: &[f32],
    keys: [u32; 2],
    f: impl Fn(u32, u32) -> D + Sync,
) -> Vec<D> {
    let n = src.len();
    let mut out: Vec<D> = Vec::with_capacity(n);
    out.spare_capacity_mut()[..n]
        .par_chunks_mut(CONVERT_CHUNK)
        .zip(src.par_chunks(CONVERT_CHUNK))
        .enumerate()
        .for_each(|(c, (d, s))| {
            // Blocks: the random bits first (a vectorisable integer loop), then the roundings.
            let mut r = [0u32; BLOCK];
            let mut v = [D::default(); BLOCK];
            for (b, (d, s)) in d.chunks_mut(BLOCK).zip(s.chunks(BLOCK)).enumerate() {
                let base = (c * CONVERT_CHUNK + b * BLOCK) as u32;
                sr_block(keys, base, s, &mut r, &mut v, &f);
                for (o, &v) in d.iter_mut().zip(v.iter()) {
                    o.write(v);
                }
            }
        });
    // SAFETY: the chunks cover all `n` slots of the spare capacity and each was written.
    unsafe { out.set_len(n) };
    out
}

/// One block of stochastic rounding: the random bits (an integer loop), then the roundings.
#[inline(always)]
fn sr_block_generic<D: Copy>(
    keys: [u32; 2],
    base: u32,
    s: &[f32],
    r: &mut [u32; BLOCK],
    v: &mut [D; BLOCK],
    f: &impl Fn(u32, u32) -> D,
) {
    for (i, r) in r.iter_mut().enumerate() {
        *r = crate::rng::sr_bits_keyed(keys, base.wrapping_add(i as u32));
    }
    for ((v, &x), &r) in v.iter_mut().zip(s).zip(r.iter()) {
        *v = f(x.to_bits(), r);
    }
}

/// The same block compiled for AVX2 (8-lane 32-bit multiplies; the baseline x86-64 target has
/// no vector 32-bit multiply).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn sr_block_avx2<D: Copy>(
    keys: [u32; 2],
    base: u32,
    s: &[f32],
    r: &mut [u32; BLOCK],
    v: &mut [D; BLOCK],
    f: &impl Fn(u32, u32) -> D,
) {
    sr_block_generic(keys, base, s, r, v, f);
}

fn sr_block<D: Copy>(
    keys: [u32; 2],
    base: u32,
    s: &[f32],
    r: &mut [u32; BLOCK],
    v: &mut [D; BLOCK],
    f: &impl Fn(u32, u32) -> D,
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        unsafe { sr_block_avx2(keys, base, s, r, v, f) };
        return;
    }
    sr_block_generic(keys, base, s, r, v, f);
}

/// f32 → f16 with stochastic rounding under `keys` ([`crate::rng::sr_keys`]).
pub fn narrow_f16_sr(src: &[f32], keys: [u32; 2]) -> Vec<f16> {
    narrow_sr(src, keys, |x, r| {
        f16::from_bits(crate::rng::f32_to_f16_sr_select(x, r))
    })
}

/// f32 → bf16 with stochastic rounding under `keys` ([`crate::rng::sr_keys`]).
pub fn narrow_bf16_sr(src: &[f32], keys: [u32; 2]) -> Vec<bf16> {
    narrow_sr(src, keys, |x, r| {
        bf16::from_bits(crate::rng::f32_to_bf16_sr_select(x, r))
    })
}
