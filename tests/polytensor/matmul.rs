//! Matmul on the fast CPU path against the f64 reference: odd shapes (an odd size like 783 in one
//! dimension per case), transposes, broadcast batches, every float dtype, with the tolerance
//! scaled by the reduction (settled decision 8), plus NMSE and run-to-run determinism.

use polytensor::{DType, Device, Graph, Tensor};

use crate::common::{Rng, random, run_on};

/// (batch of a, batch of b, m, k, n)
type Case = (&'static [usize], &'static [usize], usize, usize, usize);

const CASES: [Case; 14] = [
    (&[], &[], 1, 1, 1),
    (&[], &[], 3, 17, 50),
    (&[], &[], 783, 3, 17),
    (&[], &[], 17, 783, 3),
    (&[], &[], 50, 1, 783),
    (&[], &[], 0, 3, 5),
    (&[], &[], 4, 0, 6),
    (&[], &[], 65, 129, 33),
    (&[2, 3], &[3], 17, 9, 5),
    (&[1], &[4], 3, 50, 7),
    (&[5], &[], 33, 17, 1),
    (&[], &[2, 1, 2], 9, 16, 3),
    // K and N multiples of 8: the vectorised CPU-adapter kernels, with broadcast batches.
    (&[2, 1], &[3], 7, 16, 24),
    (&[], &[], 40, 64, 32),
];

fn abs(t: &Tensor) -> Tensor {
    let v: Vec<f32> = t.to_f32_vec().iter().map(|x| x.abs()).collect();
    Tensor::from_f32(t.shape(), v, t.dtype()).expect("same shape")
}

fn check(dtype: DType, (ba, bb, m, k, n): Case, ta: bool, tb: bool, rng: &mut Rng) {
    let mut sa: Vec<usize> = ba.to_vec();
    sa.extend(if ta { [k, m] } else { [m, k] });
    let mut sb: Vec<usize> = bb.to_vec();
    sb.extend(if tb { [n, k] } else { [k, n] });
    let a = random(rng, &sa, dtype, -1.0, 1.0);
    let b = random(rng, &sb, dtype, -1.0, 1.0);
    let mut g = Graph::new();
    let (ai, bi) = (
        g.input("a", sa.clone(), dtype),
        g.input("b", sb.clone(), dtype),
    );
    let y = g.matmul_t(ai, bi, ta, tb).expect("matmul builds");
    g.output("y", y).expect("output");
    let inputs = [("a", &a), ("b", &b)];
    let want = run_on(&Device::reference(), &g, &inputs, &[], &[]).expect("reference");
    // Σ|a||b| per element bounds the f32 accumulation error.
    let (aa, ab) = (abs(&a), abs(&b));
    let mag = run_on(
        &Device::reference(),
        &g,
        &[("a", &aa), ("b", &ab)],
        &[],
        &[],
    )
    .expect("magnitudes");
    for device in crate::common::devices_under_test() {
        let fast = run_on(&device, &g, &inputs, &[], &[]).expect("fast");
        let again = run_on(&device, &g, &inputs, &[], &[]).expect("fast again");
        assert_eq!(fast[0], again[0], "results are the same from run to run");
        let what = format!(
            "matmul {dtype} a{sa:?} b{sb:?} ta={ta} tb={tb} on {}",
            device.info().name
        );
        assert_eq!(fast[0].shape(), want[0].shape(), "{what}: shape");
        let (got, exp, mag) = (
            fast[0].to_f64_vec(),
            want[0].to_f64_vec(),
            mag[0].to_f64_vec(),
        );
        check_values(&what, k, dtype, &got, &exp, &mag);
    }
}

/// |got − ref| ≤ 2·K·ε·Σ|a||b| + one rounding of the output dtype, and NMSE ≤ 5e-4.
fn check_values(what: &str, k: usize, dtype: DType, got: &[f64], exp: &[f64], mag: &[f64]) {
    let (mut err2, mut ref2) = (0.0, 0.0);
    for i in 0..got.len() {
        let bound = 2.0 * k as f64 * DType::F32.epsilon() * mag[i] * 1.01
            + 2.0 * dtype.epsilon() * exp[i].abs()
            + 1e-30;
        let d = (got[i] - exp[i]).abs();
        assert!(
            d <= bound,
            "{what}: index {i}: got {}, expected {}, tolerance {bound}",
            got[i],
            exp[i]
        );
        err2 += d * d;
        ref2 += exp[i] * exp[i];
    }
    if ref2 > 0.0 {
        assert!(err2 / ref2 <= 5e-4, "{what}: NMSE {}", err2 / ref2);
    }
}

#[test]
fn matmul_f32_all_cases_and_transposes() {
    let mut rng = Rng::new(10);
    for case in CASES {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            check(DType::F32, case, ta, tb, &mut rng);
        }
    }
}

#[test]
fn matmul_f16_and_bf16() {
    let mut rng = Rng::new(11);
    for dtype in [DType::F16, DType::BF16] {
        for (i, case) in CASES.into_iter().enumerate() {
            // Pairwise: each transpose combination meets every case across the two dtypes.
            let (ta, tb) = [(false, false), (true, false), (false, true), (true, true)][i % 4];
            check(dtype, case, ta, tb, &mut rng);
        }
    }
}

#[test]
fn large_square_matmul_uses_all_threads_and_matches() {
    let mut rng = Rng::new(12);
    check(
        DType::F32,
        (&[], &[], 300, 257, 311),
        false,
        false,
        &mut rng,
    );
    check(
        DType::BF16,
        (&[], &[], 256, 300, 129),
        false,
        true,
        &mut rng,
    );
}

#[test]
fn matmul_aligned_kernel_classes() {
    // Shapes that select the vectorised and subgroup kernels on CPU adapters (K % 64 == 0,
    // N % 8 == 0, untransposed) and the aligned tiles on GPUs (multiples of 64), with broadcast
    // batches and a row count that is not a multiple of 4.
    let mut rng = Rng::new(13);
    for dtype in DType::FLOATS {
        check(dtype, (&[], &[3], 5, 64, 16), false, false, &mut rng);
        check(
            dtype,
            (&[2, 1], &[1, 2], 7, 128, 24),
            false,
            false,
            &mut rng,
        );
        check(dtype, (&[], &[], 64, 64, 64), false, false, &mut rng);
    }
}

#[test]
fn decode_matvec_against_16_bit_weights() {
    // 1 to 4 rows (batch dims folded in) against a transposed [N, K] weight: the CPU reads a
    // 16-bit weight as stored (no widened copy); wgpu runs matvec.wgsl where K is a multiple of
    // 8 and N even (the last four cases), the general kernels otherwise (odd K and N, K = 783).
    let mut rng = Rng::new(14);
    for dtype in DType::FLOATS {
        check(dtype, (&[], &[], 1, 783, 131), false, true, &mut rng);
        check(dtype, (&[], &[], 3, 17, 5), false, true, &mut rng);
        check(dtype, (&[], &[], 4, 1, 1), false, true, &mut rng);
        check(dtype, (&[2], &[], 2, 64, 300), false, true, &mut rng);
        check(dtype, (&[], &[], 1, 8, 2), false, true, &mut rng);
        check(dtype, (&[3], &[], 1, 136, 34), false, true, &mut rng);
        check(dtype, (&[], &[], 1, 1024, 66), false, true, &mut rng);
    }
}
