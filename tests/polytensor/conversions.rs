//! f32 ↔ f16/bf16: exhaustive round trips over all 65 536 patterns, round to nearest even at ties,
//! subnormals, overflow and NaN/Inf, and the bulk (F16C) conversions agreeing with the integer
//! definition bit for bit.

use half::f16;
use polytensor::dtype::{
    bf16_bits_to_f32, f16_bits_to_f32, f32_to_bf16_bits, f32_to_f16_bits, narrow_bf16, narrow_f16,
    widen_f16,
};

use crate::common::Rng;

#[test]
fn f16_round_trip_is_exact_for_every_pattern() {
    for h in 0..=u16::MAX {
        let f = f16_bits_to_f32(h);
        let back = f32_to_f16_bits(f);
        let x = f32::from_bits(f);
        if (h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0 {
            assert!(x.is_nan(), "{h:#06x} must decode to NaN");
            assert_eq!(back & 0x8000, h & 0x8000, "{h:#06x}: NaN sign");
            assert_eq!(
                back,
                h | 0x0200,
                "{h:#06x}: NaN comes back quiet with its payload"
            );
        } else {
            assert_eq!(back, h, "{h:#06x} -> {x:e} -> {back:#06x}");
            assert_eq!(
                f64::from(x),
                f64::from(f16::from_bits(h)),
                "{h:#06x}: value"
            );
        }
    }
}

#[test]
fn bf16_round_trip_is_exact_for_every_pattern() {
    for h in 0..=u16::MAX {
        let f = bf16_bits_to_f32(h);
        let back = f32_to_bf16_bits(f);
        if (h & 0x7f80) == 0x7f80 && (h & 0x7f) != 0 {
            assert!(f32::from_bits(f).is_nan());
            assert_eq!(
                back,
                h | 0x0040,
                "{h:#06x}: NaN comes back quiet, same sign"
            );
        } else {
            assert_eq!(back, h, "{h:#06x}");
        }
    }
}

#[test]
fn rne_at_ties_subnormals_overflow_and_specials() {
    let f16b = |x: f32| f32_to_f16_bits(x.to_bits());
    let bf = |x: f32| f32_to_bf16_bits(x.to_bits());
    // f16 ties: 1 + 2^-11 is halfway between 1 and 1 + 2^-10: even (1.0) wins.
    assert_eq!(f16b(1.0 + 2f32.powi(-11)), 0x3c00);
    // 1 + 3·2^-11 is halfway between 1+2^-10 (odd) and 1+2^-9 (even).
    assert_eq!(f16b(1.0 + 3.0 * 2f32.powi(-11)), 0x3c02);
    // Just above a tie rounds up.
    assert_eq!(
        f16b(f32::from_bits((1.0f32 + 2f32.powi(-11)).to_bits() + 1)),
        0x3c01
    );
    // Largest finite, and the overflow threshold 65520 (tie to even = Inf).
    assert_eq!(f16b(65504.0), 0x7bff);
    assert_eq!(f16b(65519.99), 0x7bff);
    assert_eq!(f16b(65520.0), 0x7c00);
    assert_eq!(f16b(-1e9), 0xfc00);
    assert_eq!(f16b(f32::INFINITY), 0x7c00);
    assert_eq!(f16b(f32::NEG_INFINITY), 0xfc00);
    // Subnormals: 2^-24 is the smallest; 2^-25 is a tie with zero (even: 0); 3·2^-25 ties to 2·2^-24.
    assert_eq!(f16b(2f32.powi(-24)), 0x0001);
    assert_eq!(f16b(2f32.powi(-25)), 0x0000);
    assert_eq!(f16b(-(2f32.powi(-25))), 0x8000);
    assert_eq!(f16b(f32::from_bits(2f32.powi(-25).to_bits() + 1)), 0x0001);
    assert_eq!(f16b(3.0 * 2f32.powi(-25)), 0x0002);
    assert_eq!(f16b(2f32.powi(-14) - 2f32.powi(-25)), 0x0400); // rounds up into the normals
    assert_eq!(f16b(f32::from_bits(1)), 0x0000); // f32 subnormal → 0
    // NaN: quiet, sign kept.
    assert_eq!(f16b(f32::NAN) & 0x7e00, 0x7e00);
    assert_eq!(f16b(-f32::NAN) & 0x8000, 0x8000);
    assert_eq!(
        f16b(f32::from_bits(0x7f80_0001)) & 0x7e00,
        0x7e00,
        "signalling NaN stays NaN"
    );
    // bf16: ties, overflow, subnormals (bf16 shares f32's exponent range).
    assert_eq!(bf(1.0 + 2f32.powi(-8)), 0x3f80);
    assert_eq!(bf(1.0 + 3.0 * 2f32.powi(-8)), 0x3f82);
    assert_eq!(
        bf(f32::MAX),
        0x7f80,
        "above the largest finite bf16 rounds to Inf"
    );
    assert_eq!(
        bf(f32::from_bits(0x0000_8000)),
        0x0000,
        "subnormal tie to even"
    );
    assert_eq!(
        bf(f32::from_bits(0x0001_8000)),
        0x0002,
        "subnormal tie to even (odd lsb)"
    );
    assert_eq!(bf(f32::from_bits(0x0000_8001)), 0x0001);
    assert_eq!(
        bf(f32::from_bits(0x7f80_0001)) & 0x7fc0,
        0x7fc0,
        "signalling NaN → quiet NaN"
    );
    assert_eq!(bf(f32::NEG_INFINITY), 0xff80);
}

/// f32 bit patterns covering every exponent (subnormals included), random mantissas, ties,
/// and the specials.
fn every_exponent(rng: &mut Rng) -> Vec<f32> {
    let mut v = Vec::new();
    for sign in [0u32, 1] {
        for exp in 0..=255u32 {
            for _ in 0..64 {
                let man = (rng.next_u64() as u32) & 0x7f_ffff;
                v.push(f32::from_bits((sign << 31) | (exp << 23) | man));
            }
            for low in [0x1000u32, 0x3000, 0x8000, 0x1_8000, 0x1fff, 0x2000] {
                v.push(f32::from_bits((sign << 31) | (exp << 23) | low));
            }
        }
    }
    v
}

#[test]
fn bulk_conversions_match_the_integer_definition() {
    let mut rng = Rng::new(7);
    let xs = every_exponent(&mut rng);
    // The bulk paths the library runs (F16C where present, multi-threaded).
    let h = narrow_f16(&xs);
    let b = narrow_bf16(&xs);
    for (i, &x) in xs.iter().enumerate() {
        assert_eq!(
            h[i].to_bits(),
            f32_to_f16_bits(x.to_bits()),
            "f16 of {:#010x}",
            x.to_bits()
        );
        assert_eq!(
            b[i].to_bits(),
            f32_to_bf16_bits(x.to_bits()),
            "bf16 of {:#010x}",
            x.to_bits()
        );
    }
    let all: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).collect();
    let back = widen_f16(&all);
    for (h, f) in all.iter().zip(&back) {
        assert_eq!(
            f.to_bits(),
            f16_bits_to_f32(h.to_bits()),
            "f16 {:#06x} widened",
            h.to_bits()
        );
    }
}
