//! Every elementwise op, reduction and cast × dtype: the fast CPU path against the f64 reference,
//! on odd shapes (0, 1, 3, 17, 50, 783) and broadcasts.

use polytensor::{BinaryOp, DType, Device, Graph, ReduceOp, Tensor, UnaryOp};

use crate::common::{Rng, conform, random, run_on, tol};

#[test]
fn unary_ops_match_reference() {
    let mut rng = Rng::new(1);
    for op in UnaryOp::ALL {
        let (lo, hi) = match op {
            UnaryOp::Sqrt | UnaryOp::Rsqrt => (0.05, 9.0),
            UnaryOp::Exp => (-6.0, 6.0),
            _ => (-4.0, 4.0),
        };
        for dtype in DType::FLOATS {
            for shape in [&[783][..], &[3, 17], &[1], &[0], &[2, 0, 3]] {
                let x = random(&mut rng, shape, dtype, lo, hi);
                let mut g = Graph::new();
                let xi = g.input("x", shape, dtype);
                let y = g.unary(op, xi).expect("unary builds");
                g.output("y", y).expect("output");
                let what = format!("{op:?} {dtype} {shape:?}");
                conform(&what, &g, &[("x", &x)], &[], |d| (tol(d).0, 2.0 * tol(d).1));
            }
        }
    }
}

#[test]
fn binary_ops_broadcast_and_match_reference() {
    let mut rng = Rng::new(2);
    let cases: [(&[usize], &[usize]); 7] = [
        (&[3, 17], &[3, 17]),
        (&[50, 1], &[1, 783]),
        (&[783], &[1]),
        (&[2, 3, 1], &[3, 5]),
        (&[0, 3], &[1, 3]),
        (&[1], &[1]),
        (&[17], &[4, 1, 17]),
    ];
    for op in BinaryOp::ALL {
        for dtype in DType::FLOATS {
            for (sa, sb) in cases {
                let a = random(&mut rng, sa, dtype, -3.0, 3.0);
                // Divisors stay away from zero so the quotient is well conditioned.
                let b = random(&mut rng, sb, dtype, 0.5, 2.0);
                let mut g = Graph::new();
                let (ai, bi) = (g.input("a", sa, dtype), g.input("b", sb, dtype));
                let y = g.binary(op, ai, bi).expect("binary builds");
                g.output("y", y).expect("output");
                let what = format!("{op:?} {dtype} {sa:?}×{sb:?}");
                conform(&what, &g, &[("a", &a), ("b", &b)], &[], tol);
            }
        }
    }
}

#[test]
fn reductions_match_reference_with_length_scaled_tolerance() {
    let mut rng = Rng::new(3);
    let cases: [(&[usize], usize); 5] = [
        (&[3, 783], 1),
        (&[17, 50, 3], 1),
        (&[783], 0),
        (&[4, 1], 1),
        (&[5, 3], 0),
    ];
    for op in [ReduceOp::Sum, ReduceOp::Max, ReduceOp::Mean] {
        for dtype in DType::FLOATS {
            for (shape, axis) in cases {
                let x = random(&mut rng, shape, dtype, -2.0, 2.0);
                let mut g = Graph::new();
                let xi = g.input("x", shape, dtype);
                let y = g.reduce(op, xi, axis).expect("reduce builds");
                g.output("y", y).expect("output");
                let len = shape[axis] as f64;
                // f32 accumulation error grows with the length: c·n·ε·Σ|x| (|x| ≤ 2).
                let acc = 2.0 * len * DType::F32.epsilon() * 2.0 * len;
                let what = format!("{op:?} {dtype} {shape:?} axis {axis}");
                conform(&what, &g, &[("x", &x)], &[], |d| (tol(d).0 + acc, tol(d).1));
            }
        }
    }
}

#[test]
fn casts_between_all_dtypes_are_exact_and_carry_specials() {
    let mut rng = Rng::new(4);
    for from in polytensor::DType::ALL {
        for to in polytensor::DType::ALL {
            let x = random(&mut rng, &[783], from, -100.0, 100.0);
            let mut g = Graph::new();
            let xi = g.input("x", [783], from);
            let y = g.cast(xi, to).expect("cast builds");
            g.output("y", y).expect("output");
            if from.is_float() == to.is_float() {
                conform(
                    &format!("cast {from}→{to}"),
                    &g,
                    &[("x", &x)],
                    &[],
                    |_| (0.0, 0.0),
                );
            } else {
                // Float ↔ integer casts run on the CPU only (WGSL's conversion may round either
                // way); check the CPU path here and the fallback in gpu.rs.
                let f = run_on(&Device::cpu(), &g, &[("x", &x)], &[], &[]).expect("cpu");
                let r =
                    run_on(&Device::reference(), &g, &[("x", &x)], &[], &[]).expect("reference");
                crate::common::assert_close(&format!("cast {from}→{to}"), &f[0], &r[0], 0.0, 0.0);
            }
        }
    }
    // NaN, ±Inf, overflow, subnormals: the fast path stores exactly the integer definition's bits.
    let specials = vec![
        f32::NAN,
        -f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        65520.0,
        -65504.0,
        1e-7,
        -3.0e-8,
        f32::from_bits(1),
        f32::MAX,
        0.0,
        -0.0,
        1.0 + 2f32.powi(-11),
    ];
    let x = Tensor::new(&[specials.len()], specials.clone()).expect("tensor");
    for to in [DType::F16, DType::BF16] {
        let mut g = Graph::new();
        let xi = g.input("x", [specials.len()], DType::F32);
        let y = g.cast(xi, to).expect("cast");
        let back = g.cast(y, DType::F32).expect("cast back");
        g.output("y", y).expect("output");
        g.output("back", back).expect("output");
        for device in crate::common::devices_under_test() {
            let out = run_on(&device, &g, &[("x", &x)], &[], &[]).expect("run");
            let bits: Vec<u16> = bytemuck::pod_collect_to_vec::<u8, u16>(out[0].as_bytes());
            for (i, &v) in specials.iter().enumerate() {
                let want = match to {
                    DType::F16 => polytensor::dtype::f32_to_f16_bits(v.to_bits()),
                    _ => polytensor::dtype::f32_to_bf16_bits(v.to_bits()),
                };
                assert_eq!(bits[i], want, "{to} of {v:e} ({:#010x})", v.to_bits());
            }
            let back = out[1].as_slice::<f32>().expect("f32");
            assert!(
                back[0].is_nan()
                    && back[0].is_sign_positive()
                    && back[1].is_nan()
                    && back[1].is_sign_negative()
            );
            assert_eq!((back[2], back[3]), (f32::INFINITY, f32::NEG_INFINITY));
        }
    }
}

#[test]
fn constants_splat_and_per_element() {
    let mut g = Graph::new();
    let x = g.input("x", [2, 3], DType::F32);
    let c1 = g.constant(&[0.5], [1], DType::F32).expect("splat");
    let c2 = g
        .constant(&[1.0, 2.0, 3.0], [3], DType::F32)
        .expect("per element");
    let y = g.mul(x, c1).expect("mul");
    let y = g.add(y, c2).expect("add");
    g.output("y", y).expect("output");
    let x = Tensor::new(&[2, 3], vec![2.0f32, 4.0, 6.0, 8.0, 10.0, 12.0]).expect("tensor");
    conform("constants", &g, &[("x", &x)], &[], |_| (0.0, 0.0));
    let f = run_on(&Device::cpu(), &g, &[("x", &x)], &[], &[]).expect("cpu");
    assert_eq!(f[0].to_f32_vec(), vec![2.0, 4.0, 6.0, 5.0, 7.0, 9.0]);
}
