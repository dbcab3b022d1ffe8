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
                // Inputs whose mean (2) is far from 0, so a kernel that returns zeros, or drops
                // part of the sum, is far outside the tolerance.
                let x = random(&mut rng, shape, dtype, 1.0, 3.0);
                let mean_abs =
                    x.to_f64_vec().iter().map(|v| v.abs()).sum::<f64>() / x.numel().max(1) as f64;
                let mut g = Graph::new();
                let xi = g.input("x", shape, dtype);
                let y = g.reduce(op, xi, axis).expect("reduce builds");
                g.output("y", y).expect("output");
                let len = shape[axis] as f64;
                // f32 accumulation error grows linearly with the length: c·n·ε·mean|x| for a
                // mean, and n times that for a sum (whose value is n times larger).
                let scale = match op {
                    ReduceOp::Sum => len * mean_abs,
                    ReduceOp::Mean => mean_abs,
                    ReduceOp::Max => 0.0,
                };
                let acc = 2.0 * len * DType::F32.epsilon() * scale;
                let what = format!("{op:?} {dtype} {shape:?} axis {axis}");
                conform(&what, &g, &[("x", &x)], &[], |d| (tol(d).0 + acc, tol(d).1));
                assert!(acc < 0.01 * scale.max(1.0), "{what}: the bound stays tight");
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

#[test]
fn integer_constants_and_states_stay_exact() {
    use polytensor::{Offset, Session, Storage, tensor::constant_storage};
    // Values f32 cannot hold: 2^24 + 1 and the integer extremes.
    let u = [16_777_217.0, 4_294_967_295.0, 0.0];
    let i = [-16_777_217.0, 2_147_483_647.0, -2_147_483_648.0];
    let mut g = Graph::new();
    let cu = g.constant(&u, [3], DType::U32).expect("u32 constant");
    let ci = g.constant(&i, [3], DType::I32).expect("i32 constant");
    let splat = g.constant(&[16_777_217.0], [2], DType::U32).expect("splat");
    g.state("su", [3], DType::U32);
    g.state("si", [3], DType::I32);
    let wu = g.write_state("su", cu, 0, Offset::Fixed(0)).expect("write");
    let wi = g.write_state("si", ci, 0, Offset::Fixed(0)).expect("write");
    for (name, id) in [
        ("u", cu),
        ("i", ci),
        ("splat", splat),
        ("wu", wu),
        ("wi", wi),
    ] {
        g.output(name, id).expect("out");
    }
    let want_u = Tensor::new(&[3], vec![16_777_217u32, u32::MAX, 0]).expect("u");
    let want_i = Tensor::new(&[3], vec![-16_777_217i32, i32::MAX, i32::MIN]).expect("i");
    // Every device under test (GPUs included: no trip through f32 there either).
    let mut devices = crate::common::devices_under_test();
    devices.push(Device::reference());
    for device in devices {
        let name = device.info().name.clone();
        let mut s = Session::new(&device);
        s.create_state("su", &[3], DType::U32).expect("state");
        s.create_state("si", &[3], DType::I32).expect("state");
        let p = s.compile(&g).expect("compile");
        let out = s.run(&p, &[], &[]).expect("run");
        assert_eq!(out.get("u").expect("u"), &want_u, "{name}");
        assert_eq!(out.get("i").expect("i"), &want_i, "{name}");
        assert_eq!(
            out.get("splat")
                .expect("splat")
                .as_slice::<u32>()
                .expect("u32"),
            &[16_777_217, 16_777_217],
            "{name}"
        );
        assert_eq!(out.get("wu").expect("wu"), &want_u, "{name}");
        assert_eq!(out.get("wi").expect("wi"), &want_i, "{name}");
        assert_eq!(s.read_state("su").expect("su"), want_u, "{name}");
        assert_eq!(s.read_state("si").expect("si"), want_i, "{name}");
        // A state set from the host above 2^24 is read and rewritten exactly too.
        let mut g2 = Graph::new();
        let st = g2.state("su", [3], DType::U32);
        g2.write_state("su", st, 0, Offset::Fixed(0))
            .expect("rewrite");
        g2.output("st", st).expect("out");
        let p2 = s.compile(&g2).expect("compile");
        let big = Tensor::new(&[3], vec![u32::MAX - 1, 33_554_433, 16_777_219]).expect("big");
        s.set_state("su", big.view()).expect("set");
        let out = s.run(&p2, &[], &[]).expect("run");
        assert_eq!(out.get("st").expect("st"), &big, "{name}");
        assert_eq!(s.read_state("su").expect("su"), big, "{name}");
    }
    // Values an integer dtype cannot hold are refused when the graph is built, naming them.
    for (v, dtype) in [
        (1.5, DType::U32),
        (4_294_967_296.0, DType::U32),
        (-1.0, DType::U32),
        (2_147_483_648.0, DType::I32),
        (-2_147_483_649.0, DType::I32),
        (f64::NAN, DType::I32),
        (f64::INFINITY, DType::U32),
    ] {
        let e = Graph::new()
            .constant(&[1.0, v], [2], dtype)
            .expect_err("out of range");
        assert!(e.to_string().contains(&format!("{v}")), "{v} {dtype}: {e}");
    }
    let text = "%0: u32[1] = Constant(values:[1.5])()\nout c = %0";
    assert!(Graph::parse(text).is_err(), "validate refuses it too");
    // The one conversion rule, directly.
    assert_eq!(
        constant_storage(&[0.1], DType::F32, 2).expect("f32"),
        Storage::F32(vec![0.1f32; 2])
    );
    assert_eq!(
        constant_storage(&[16_777_217.0, 1.0], DType::U32, 2).expect("u32"),
        Storage::U32(vec![16_777_217, 1])
    );
    assert_eq!(
        constant_storage(&[1.0 + 2f64.powi(-9)], DType::BF16, 1).expect("bf16"),
        Storage::BF16(vec![half::bf16::from_f32(1.0)])
    );
    assert!(constant_storage(&[1.0, 2.0], DType::F32, 3).is_err());
}
