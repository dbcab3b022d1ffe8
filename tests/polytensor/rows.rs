//! Softmax, RMS norm, layer norm, argmax (the `rows` kernel family) and erf / exact GELU on every
//! device × f32/f16/bf16 against the f64 reference: odd row lengths (1, 3, 17, 783), huge (1e4)
//! and tiny magnitudes, constant and fully masked rows, argmax ties and NaN.

use polytensor::{DType, Device, Graph, Tensor, UnaryOp};

use crate::common::{Rng, assert_close, conform, devices_under_test, random, run_on};

const E32: f64 = f32::EPSILON as f64;

/// (shape, lo, hi, offset) cases: one odd size per case, lengths on both sides of the tree
/// kernel's threshold (32), and a length of 1.
fn cases() -> Vec<(&'static [usize], f32, f32, f32, &'static str)> {
    vec![
        (&[3, 783], -4.0, 4.0, 0.0, "normal"),
        (&[17, 3], -4.0, 4.0, 0.0, "normal"),
        (&[2, 3, 17], -4.0, 4.0, 0.0, "normal"),
        (&[783, 1], -4.0, 4.0, 0.0, "normal"),
        (&[3, 783], -1e4, 1e4, 0.0, "huge"),
        (&[17, 64], -1.0, 1.0, 1e4, "huge offset"),
        (&[1, 783], -1e-4, 1e-4, 0.0, "tiny"),
        (&[3, 17], -1e-4, 1e-4, 0.0, "tiny"),
        (&[3, 783], 0.0, 0.0, 3.0, "constant"),
        (&[17, 3], 0.0, 0.0, 1e4, "constant huge"),
    ]
}

fn data(rng: &mut Rng, shape: &[usize], dtype: DType, lo: f32, hi: f32, off: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = rng.vec(n, lo, hi).into_iter().map(|x| x + off).collect();
    Tensor::from_f32(shape, v, dtype).expect("tensor")
}

/// The output rounding of a 16-bit dtype: one ulp relative (the f32 result and the f64 reference
/// may round to the two neighbours of a near-tie), plus f16's subnormal spacing.
fn storage_tol(d: DType) -> (f64, f64) {
    match d {
        DType::F32 => (0.0, 0.0),
        DType::F16 => (2f64.powi(-24), 2.0 * d.epsilon()),
        _ => (0.0, 2.0 * d.epsilon()),
    }
}

#[test]
fn softmax_matches_reference() {
    let mut rng = Rng::new(61);
    for dtype in DType::FLOATS {
        for (shape, lo, hi, off, what) in cases() {
            let x = data(&mut rng, shape, dtype, lo, hi, off);
            let mut g = Graph::new();
            let xi = g.input("x", shape, dtype);
            let y = g.softmax(xi).expect("softmax builds");
            g.output("y", y).expect("output");
            let len = *shape.last().expect("rank 1") as f64;
            // exp is within (3 + 2|d|) ulp in WGSL, and y ≤ e^d bounds |d|·y by 1/e; the sum of
            // positive terms is within len·ε relative; the division adds a few ulps.
            let (atol, rtol) = (4.0 * E32, (8.0 + 2.0 * len) * E32);
            conform(
                &format!("softmax {dtype} {shape:?} {what}"),
                &g,
                &[("x", &x)],
                &[],
                |d| (atol + storage_tol(d).0, rtol + storage_tol(d).1),
            );
        }
    }
}

#[test]
fn rms_norm_matches_reference() {
    let mut rng = Rng::new(62);
    for dtype in DType::FLOATS {
        for (shape, lo, hi, off, what) in cases() {
            let last = *shape.last().expect("rank 1");
            let x = data(&mut rng, shape, dtype, lo, hi, off);
            let w = random(&mut rng, &[last], dtype, 0.5, 2.0);
            let mut g = Graph::new();
            let xi = g.input("x", shape, dtype);
            let wi = g.input("w", [last], dtype);
            let y = g.rms_norm(xi, wi, 1e-5).expect("rms_norm builds");
            g.output("y", y).expect("output");
            // A product of factors: the sum of squares (len·ε), the rsqrt and two products.
            let rtol = (8.0 + last as f64) * E32;
            conform(
                &format!("rms_norm {dtype} {shape:?} {what}"),
                &g,
                &[("x", &x), ("w", &w)],
                &[],
                |d| (4.0 * E32 + storage_tol(d).0, rtol + storage_tol(d).1),
            );
        }
    }
}

#[test]
fn layer_norm_matches_reference_with_and_without_parameters() {
    let mut rng = Rng::new(63);
    for dtype in DType::FLOATS {
        for (k, (shape, lo, hi, off, what)) in cases().into_iter().enumerate() {
            let last = *shape.last().expect("rank 1");
            let x = data(&mut rng, shape, dtype, lo, hi, off);
            let w = random(&mut rng, &[last], dtype, 0.5, 2.0);
            let b = random(&mut rng, &[last], dtype, -1.0, 1.0);
            // Every weight/bias combination, across the cases.
            let (hw, hb) = (k % 2 == 0, k % 4 < 2 || k == 9);
            let mut g = Graph::new();
            let xi = g.input("x", shape, dtype);
            let wi = hw.then(|| g.input("w", [last], dtype));
            let bi = hb.then(|| g.input("b", [last], dtype));
            let y = g.layer_norm(xi, wi, bi, 1e-5).expect("layer_norm builds");
            g.output("y", y).expect("output");
            let mut inputs = vec![("x", &x)];
            if hw {
                inputs.push(("w", &w));
            }
            if hb {
                inputs.push(("b", &b));
            }
            // The shifted mean and variance are within len·ε of the row's spread, so the
            // normalised value is within ~4·len·ε absolutely (|w| ≤ 2), the rest relative.
            let n = last as f64;
            let (atol, rtol) = ((8.0 + 8.0 * n) * E32, (8.0 + 2.0 * n) * E32);
            conform(
                &format!("layer_norm {dtype} {shape:?} {what} weight={hw} bias={hb}"),
                &g,
                &inputs,
                &[],
                |d| (atol + storage_tol(d).0, rtol + storage_tol(d).1),
            );
        }
    }
}

/// Exact indices on every device, the reference and hand-written expectations agreeing.
fn check_argmax(what: &str, x: &Tensor, want: Option<&[u32]>) {
    let shape = x.shape().to_vec();
    let mut g = Graph::new();
    let xi = g.input("x", shape.as_slice(), x.dtype());
    let y = g.argmax(xi).expect("argmax builds");
    g.output("y", y).expect("output");
    let r = run_on(&Device::reference(), &g, &[("x", x)], &[], &[]).expect("reference");
    let mut out_shape = shape.clone();
    if let Some(l) = out_shape.last_mut() {
        *l = 1;
    }
    assert_eq!(r[0].shape(), out_shape.as_slice(), "{what}");
    if let Some(want) = want {
        assert_eq!(
            r[0].as_slice::<u32>().expect("u32"),
            want,
            "{what}: reference"
        );
    }
    for device in devices_under_test() {
        let name = &device.info().name;
        let got = run_on(&device, &g, &[("x", x)], &[], &[])
            .unwrap_or_else(|e| panic!("{what} on {name}: {e}"));
        assert_close(&format!("{what} on {name}"), &got[0], &r[0], 0.0, 0.0);
    }
}

#[test]
fn argmax_takes_the_lowest_index_of_ties_and_the_first_nan() {
    let nan = f32::NAN;
    let inf = f32::INFINITY;
    let rows: Vec<(Vec<f32>, u32)> = vec![
        (vec![1.0, 3.0, 3.0, 2.0], 1),
        (vec![2.0; 4], 0),
        (vec![-1.0, -2.0, -3.0, -0.5], 3),
        (vec![1.0, nan, 5.0, -nan], 1),
        (vec![-0.0, 0.0, -0.0, -1.0], 0),
        (vec![-inf, -inf, -inf, -inf], 0),
        (vec![-inf, -3.0e38, inf, inf], 2),
        (vec![-5.0, -4.0, -4.0, -4.5], 1),
    ];
    let n = rows.len();
    let flat: Vec<f32> = rows.iter().flat_map(|(r, _)| r.clone()).collect();
    let want: Vec<u32> = rows.iter().map(|(_, w)| *w).collect();
    for dtype in DType::FLOATS {
        let x = Tensor::from_f32(&[n, 4], flat.clone(), dtype).expect("tensor");
        check_argmax(&format!("argmax {dtype} hand-written"), &x, Some(&want));
        // The same rows spread over a long row (the tree kernel): each pattern at a
        // different place, with the rest far below.
        for (k, (r, w)) in rows.iter().enumerate() {
            let mut long = vec![-1e30f32; 783];
            let at = 100 + 77 * k;
            long[at..at + 4].copy_from_slice(r);
            let x = Tensor::from_f32(&[1, 783], long, dtype).expect("tensor");
            let want = if r.iter().all(|v| *v == -inf) {
                0
            } else {
                at as u32 + w
            };
            check_argmax(&format!("argmax {dtype} long row {k}"), &x, Some(&[want]));
        }
    }
}

#[test]
fn argmax_matches_reference_on_random_rows_with_ties() {
    let mut rng = Rng::new(64);
    for dtype in DType::FLOATS {
        for shape in [&[3, 783][..], &[17, 3], &[783, 1], &[2, 3, 17], &[1, 4099]] {
            // Few distinct values: ties everywhere (bf16 logits tie often).
            let n: usize = shape.iter().product();
            let v: Vec<f32> = rng.vec(n, 0.0, 6.0).into_iter().map(f32::floor).collect();
            let x = Tensor::from_f32(shape, v, dtype).expect("tensor");
            check_argmax(&format!("argmax {dtype} {shape:?} ties"), &x, None);
            let x = random(&mut rng, shape, dtype, -4.0, 4.0);
            check_argmax(&format!("argmax {dtype} {shape:?} random"), &x, None);
        }
    }
}

#[test]
fn softmax_of_masked_rows_is_uniform_never_nan() {
    let inf = f32::INFINITY;
    for len in [3usize, 783] {
        let l = len as f32;
        let rows: Vec<(Vec<f32>, Vec<f32>)> = vec![
            (vec![-inf; len], vec![1.0 / l; len]),
            (vec![f32::MIN; len], vec![1.0 / l; len]),
            (vec![-1e30; len], vec![1.0 / l; len]),
            (
                (0..len).map(|k| if k == 1 { 0.0 } else { -inf }).collect(),
                (0..len).map(|k| if k == 1 { 1.0 } else { 0.0 }).collect(),
            ),
            (
                (0..len).map(|k| if k == 2 { inf } else { 1.0 }).collect(),
                (0..len).map(|k| if k == 2 { 1.0 } else { 0.0 }).collect(),
            ),
        ];
        let n = rows.len();
        let flat: Vec<f32> = rows.iter().flat_map(|(r, _)| r.clone()).collect();
        let want: Vec<f32> = rows.iter().flat_map(|(_, w)| w.clone()).collect();
        for dtype in DType::FLOATS {
            let x = Tensor::from_f32(&[n, len], flat.clone(), dtype).expect("tensor");
            let want = Tensor::from_f32(&[n, len], want.clone(), dtype).expect("tensor");
            let mut g = Graph::new();
            let xi = g.input("x", [n, len], dtype);
            let y = g.softmax(xi).expect("softmax");
            g.output("y", y).expect("output");
            let mut devices = devices_under_test();
            devices.push(Device::reference());
            for device in devices {
                let name = &device.info().name;
                let got = run_on(&device, &g, &[("x", &x)], &[], &[])
                    .unwrap_or_else(|e| panic!("masked softmax on {name}: {e}"));
                assert!(
                    got[0].to_f64_vec().iter().all(|v| v.is_finite()),
                    "masked softmax {dtype} on {name}: non-finite output"
                );
                let rtol = (8.0 + 2.0 * len as f64) * E32 + storage_tol(dtype).1;
                assert_close(
                    &format!("masked softmax {dtype} len {len} on {name}"),
                    &got[0],
                    &want,
                    1e-7,
                    rtol,
                );
            }
        }
    }
}

/// Spacing of f32 at |v| (the ulp), for an absolute-plus-ulp bound.
fn ulp32(v: f64) -> f64 {
    let a = (v.abs() as f32).max(f32::MIN_POSITIVE);
    f64::from(f32::from_bits(a.to_bits() + 1) - a)
}

#[test]
fn erf_and_exact_gelu_match_f64_across_minus_ten_to_ten() {
    // A dense grid over [−10, 10] plus the branch points of the erf approximation.
    let mut v: Vec<f32> = (0..=8000).map(|k| -10.0 + k as f32 * 0.0025).collect();
    for b in [
        0.84375f32,
        1.25,
        2.857_143,
        6.0,
        28.0f32.sqrt(),
        1e-6,
        1e-30,
    ] {
        v.extend([
            b,
            -b,
            f32::from_bits(b.to_bits() - 1),
            -f32::from_bits(b.to_bits() + 1),
        ]);
    }
    let n = v.len();
    for op in [UnaryOp::Erf, UnaryOp::GeluErf] {
        for dtype in DType::FLOATS {
            let x = Tensor::from_f32(&[n], v.clone(), dtype).expect("tensor");
            let mut g = Graph::new();
            let xi = g.input("x", [n], dtype);
            let y = g.unary(op, xi).expect("unary");
            g.output("y", y).expect("output");
            let want = run_on(&Device::reference(), &g, &[("x", &x)], &[], &[]).expect("ref");
            // Straight from f64 (the reference's value before it is stored), so the bound below
            // holds the f32 kernels to a few ulps of the true value.
            let xs = x.to_f64_vec();
            let exact: Vec<f64> = xs.iter().map(|&t| op.eval_f64(t)).collect();
            for device in devices_under_test() {
                let name = &device.info().name;
                let got = run_on(&device, &g, &[("x", &x)], &[], &[])
                    .unwrap_or_else(|e| panic!("{op:?} on {name}: {e}"));
                let got = got[0].to_f64_vec();
                for (i, (&a, &e)) in got.iter().zip(&exact).enumerate() {
                    // erf: 4 ulps. gelu_erf's negative tail is erfc(|x|/√2), whose relative
                    // condition grows like x²: x/√2 is rounded in f32 (and WGSL's exp is within
                    // 3 + 2·|arg| ulps), so that tail gets 2·x²·ε relative on top.
                    let cond = if op == UnaryOp::GeluErf && xs[i] < 0.0 {
                        2.0 * xs[i] * xs[i] * E32 / 2.0 * e.abs()
                    } else {
                        0.0
                    };
                    let tol = cond
                        + match dtype {
                            DType::F32 => 4.0 * ulp32(e),
                            d => storage_tol(d).0 + storage_tol(d).1 * e.abs() + 4.0 * ulp32(e),
                        };
                    assert!(
                        (a - e).abs() <= tol,
                        "{op:?} {dtype} on {name}: x = {}: got {a}, expected {e} (stored {}), \
                         tolerance {tol}",
                        xs[i],
                        want[0].to_f64_vec()[i]
                    );
                }
            }
        }
    }
}

#[test]
fn row_ops_reject_bad_operands_naming_op_and_shapes() {
    let mut g = Graph::new();
    let x = g.input("x", [3, 17], DType::F32);
    let w16 = g.input("w16", [16], DType::F32);
    let wb = g.input("wb", [17], DType::BF16);
    let w = g.input("w", [17], DType::F32);
    let e = g.rms_norm(x, w16, 1e-5).expect_err("shape");
    assert!(
        e.to_string().contains("rms_norm") && e.to_string().contains("[16]"),
        "{e}"
    );
    let e = g.layer_norm(x, Some(w), Some(wb), 1e-5).expect_err("dtype");
    assert!(e.to_string().contains("layer_norm"), "{e}");
    for eps in [0.0, -1.0, f64::NAN, 1e300] {
        let e = g.rms_norm(x, w, eps).expect_err("eps");
        assert!(e.to_string().contains("eps"), "{e}");
    }
    let s = g.input("s", [0usize; 0], DType::F32);
    assert!(g.softmax(s).is_err() && g.argmax(s).is_err());
    let u = g.input("u", [3], DType::U32);
    assert!(g.softmax(u).is_err() && g.argmax(u).is_err());
    let a = g.argmax(x).expect("argmax");
    let node = g.node(a).expect("node");
    assert_eq!(
        (node.dtype, node.shape.to_string()),
        (DType::U32, "[3,1]".to_string())
    );
}
