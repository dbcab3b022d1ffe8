//! Rope (the `rope` kernel family) on every device and the f64 reference against the direct
//! formula, computed here in f64 pair by pair: positions 0, 1, 1000 and 4095 (one compiled
//! program, the first position bound per run), both layouts, rotary_dim < D and = D (odd half
//! included, so a 16-bit word straddles the halves), three heads, f32/f16/bf16. A per-run offset
//! gives the same bits as a fixed one and builds no pipeline; builder and run-time errors.

use polytensor::{DType, Device, Dim, Error, FallbackPolicy, Graph, Offset, Session, Tensor};

use crate::common::{Rng, devices_under_test};

/// f32 results: within this fraction of the row's norm (a rotation keeps the norm), at every
/// position. An f32 product pos · θ^(−2i/d) alone is off by up to 4095 · 2⁻²⁴ ≈ 2.4e-4 rad at
/// position 4095, a hundred times this.
const F32_TOL: f64 = 2e-6;

/// (D, rotary_dim, θ) cases: full and partial rotation, an odd half (3), the kernel's largest
/// rotary dim (256), Llama's θ and Llama 3's.
const CASES: [(usize, usize, f64); 5] = [
    (64, 64, 10_000.0),
    (64, 32, 500_000.0),
    (6, 6, 10_000.0),
    (10, 4, 10_000.0),
    (256, 256, 1_000_000.0),
];

/// First positions of the runs (two rows each): positions 0, 1, 999, 1000, 4094, 4095.
const FIRSTS: [usize; 3] = [0, 999, 4094];

const B: usize = 2;
const H: usize = 3;
const S: usize = 2;

/// The direct formula in f64: pair (a, b) turns by pos · θ^(−2i/rot).
fn direct(
    x: &[f64],
    d: usize,
    (theta, rot, interleaved): (f64, usize, bool),
    first: usize,
) -> Vec<f64> {
    let mut y = x.to_vec();
    for (r, (out, row)) in y.chunks_mut(d).zip(x.chunks(d)).enumerate() {
        let pos = (first + r % S) as f64;
        for i in 0..rot / 2 {
            let (a, b) = if interleaved {
                (2 * i, 2 * i + 1)
            } else {
                (i, i + rot / 2)
            };
            let angle = pos * theta.powf(-2.0 * i as f64 / rot as f64);
            let (s, c) = angle.sin_cos();
            out[a] = row[a] * c - row[b] * s;
            out[b] = row[b] * c + row[a] * s;
        }
    }
    y
}

fn rope_graph(dtype: DType, d: usize, attrs: (f64, usize, bool), offset: Offset) -> Graph {
    let (theta, rot, interleaved) = attrs;
    let mut g = Graph::new();
    let x = g.input("x", [B, H, S, d], dtype);
    let y = g
        .rope(x, theta, rot, interleaved, offset)
        .expect("rope builds");
    g.output("y", y).expect("output");
    g
}

fn session(device: &Device) -> Session {
    let mut s = Session::new(device);
    s.set_fallback(FallbackPolicy::Deny);
    s
}

/// Each row's largest |got − want| over the row's norm, checking 16-bit elements against their
/// own rounding (two units of roundoff of |want|, f16's subnormal spacing) on top of `F32_TOL`.
fn check(what: &str, got: &Tensor, x: &[f64], want: &[f64], d: usize) -> Vec<f64> {
    let dtype = got.dtype();
    let g = got.to_f64_vec();
    let (round, floor) = match dtype {
        DType::F32 => (0.0, 0.0),
        DType::F16 => (2.0 * dtype.epsilon(), 2f64.powi(-24)),
        _ => (2.0 * dtype.epsilon(), 0.0),
    };
    let mut worst = vec![0f64; want.len() / d];
    for (r, ((gr, wr), xr)) in g.chunks(d).zip(want.chunks(d)).zip(x.chunks(d)).enumerate() {
        let norm = xr.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-30);
        for (k, (&a, &e)) in gr.iter().zip(wr).enumerate() {
            let err = (a - e).abs();
            let tol = F32_TOL * norm + round * e.abs() + floor;
            assert!(
                err <= tol,
                "{what}: row {r} element {k}: got {a}, expected {e}, error {err:e} over tolerance \
                 {tol:e} (row norm {norm})"
            );
            worst[r] = worst[r].max(err / norm);
        }
    }
    worst
}

fn every_device() -> Vec<Device> {
    let mut devices = vec![Device::reference()];
    devices.extend(devices_under_test());
    devices
}

#[test]
fn rope_matches_the_direct_formula_at_positions_0_1_1000_4095() {
    let mut rng = Rng::new(161);
    for device in every_device() {
        let name = device.info().name.clone();
        let mut s = session(&device);
        // The worst f32 error over the row norm at each position, for the report.
        let mut worst = [0f64; FIRSTS.len() * S];
        for dtype in DType::FLOATS {
            for (c, &(d, rot, theta)) in CASES.iter().enumerate() {
                for interleaved in [false, true] {
                    let attrs = (theta, rot, interleaved);
                    let n = B * H * S * d;
                    let x =
                        Tensor::from_f32(&[B, H, S, d], rng.vec(n, -1.0, 1.0), dtype).expect("x");
                    let xs = x.to_f64_vec();
                    let g = rope_graph(dtype, d, attrs, Offset::Sym("pos".into()));
                    let p = s
                        .compile(&g)
                        .unwrap_or_else(|e| panic!("rope on {name}: {e}"));
                    for (j, &first) in FIRSTS.iter().enumerate() {
                        let what = format!(
                            "rope {dtype} D={d} rotary_dim={rot} theta={theta} \
                             interleaved={interleaved} positions {first}.. (case {c}) on {name}"
                        );
                        let out = s
                            .run(&p, &[("x", x.view())], &[("pos", first)])
                            .unwrap_or_else(|e| panic!("{what}: {e}"));
                        let got = &out.into_vec()[0].1;
                        let want = direct(&xs, d, attrs, first);
                        let e = check(&what, got, &xs, &want, d);
                        if dtype == DType::F32 {
                            for (r, e) in e.iter().enumerate() {
                                let w = &mut worst[j * S + r % S];
                                *w = w.max(*e);
                            }
                        }
                    }
                }
            }
        }
        let worst: Vec<String> = (0..worst.len())
            .map(|k| format!("{}: {:.2e}", FIRSTS[k / S] + k % S, worst[k]))
            .collect();
        println!(
            "rope f32 on {name}: worst error / row norm by position: {}",
            worst.join(", ")
        );
    }
}

#[test]
fn a_run_time_offset_gives_the_bits_of_a_fixed_one_and_builds_nothing() {
    let mut rng = Rng::new(162);
    let d = 64;
    for device in every_device() {
        let name = device.info().name.clone();
        for dtype in DType::FLOATS {
            for interleaved in [false, true] {
                let attrs = (10_000.0, 48, interleaved);
                let x = Tensor::from_f32(&[B, H, S, d], rng.vec(B * H * S * d, -2.0, 2.0), dtype)
                    .expect("x");
                let mut s = session(&device);
                let sym = s
                    .compile(&rope_graph(dtype, d, attrs, Offset::Sym("pos".into())))
                    .expect("compile");
                let mut decode = Vec::new();
                for first in [7, 1000, 3] {
                    let out = s
                        .run(&sym, &[("x", x.view())], &[("pos", first)])
                        .unwrap_or_else(|e| panic!("{name}: {e}"));
                    assert_eq!(
                        s.last_run_stats().pipelines_built,
                        0,
                        "{name}: a new position built a pipeline"
                    );
                    decode.push(out.into_vec().remove(0).1);
                }
                let fixed = s
                    .compile(&rope_graph(dtype, d, attrs, Offset::Fixed(1000)))
                    .expect("compile");
                let out = s
                    .run(&fixed, &[("x", x.view())], &[])
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
                let want = &out.into_vec()[0].1;
                assert_eq!(
                    decode[1].to_f64_vec(),
                    want.to_f64_vec(),
                    "{name} {dtype} interleaved={interleaved}: offset bound to 1000 ≠ fixed 1000"
                );
                assert_ne!(
                    decode[0].to_f64_vec(),
                    decode[1].to_f64_vec(),
                    "{name}: the bound offset was ignored"
                );
            }
        }
    }
}

#[test]
fn run_time_offset_errors() {
    let g = rope_graph(
        DType::F32,
        8,
        (10_000.0, 8, false),
        Offset::Sym("pos".into()),
    );
    let x = Tensor::from_f32(&[B, H, S, 8], vec![0.5; B * H * S * 8], DType::F32).expect("x");
    for device in every_device() {
        let name = device.info().name.clone();
        let mut s = session(&device);
        let p = s.compile(&g).expect("compile");
        let err = s
            .run(&p, &[("x", x.view())], &[])
            .expect_err("an unbound offset");
        assert!(err.to_string().contains("pos"), "{name}: {err}");
        // Positions reach 2²⁴ − 1 at most: the last run that fits, then one past it.
        let last = (1 << 24) - S;
        s.run(&p, &[("x", x.view())], &[("pos", last)])
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let err = s
            .run(&p, &[("x", x.view())], &[("pos", last + 1)])
            .expect_err("a position past 2²⁴ − 1");
        assert!(
            matches!(err, Error::InvalidArgument { op: "rope", .. }),
            "{name}: {err}"
        );
    }
}

#[test]
fn rope_builder_errors() {
    let bad = |shape: &[usize], dtype: DType, theta: f64, rot: usize, offset: Offset| {
        let mut g = Graph::new();
        let x = g.input("x", shape, dtype);
        g.rope(x, theta, rot, false, offset)
            .expect_err("a bad rope")
            .to_string()
    };
    let f = DType::F32;
    let cases = [
        (bad(&[1, 2, 3, 7], f, 1e4, 6, Offset::Fixed(0)), "even"),
        (
            bad(&[1, 2, 3, 8], f, 1e4, 10, Offset::Fixed(0)),
            "rotary_dim",
        ),
        (
            bad(&[1, 2, 3, 8], f, 1e4, 5, Offset::Fixed(0)),
            "rotary_dim",
        ),
        (
            bad(&[1, 2, 3, 8], f, 1e4, 0, Offset::Fixed(0)),
            "rotary_dim",
        ),
        (bad(&[2, 3, 8], f, 1e4, 8, Offset::Fixed(0)), "[B, H, S, D]"),
        (
            bad(&[1, 2, 3, 8], f, f64::NAN, 8, Offset::Fixed(0)),
            "theta",
        ),
        (bad(&[1, 2, 3, 8], f, 0.5, 8, Offset::Fixed(0)), "theta"),
        (
            bad(&[1, 2, 3, 8], DType::I32, 1e4, 8, Offset::Fixed(0)),
            "i32",
        ),
        (
            bad(&[1, 2, 3, 8], f, 1e4, 8, Offset::Fixed((1 << 24) - 2)),
            "position",
        ),
    ];
    for (err, want) in cases {
        assert!(err.contains(want), "got `{err}`, want `{want}`");
    }
    // A symbolic head dim is refused; a symbolic sequence is fine.
    let mut g = Graph::new();
    let x = g.input(
        "x",
        [
            Dim::Fixed(1),
            Dim::Fixed(2),
            Dim::Fixed(3),
            Dim::sym("d", 8),
        ],
        f,
    );
    assert!(g.rope(x, 1e4, 8, false, Offset::Fixed(0)).is_err());
    let x = g.input(
        "y",
        [
            Dim::Fixed(1),
            Dim::Fixed(2),
            Dim::sym("s", 9),
            Dim::Fixed(8),
        ],
        f,
    );
    g.rope(x, 1e4, 8, true, Offset::Sym("p".into()))
        .expect("symbolic sequence");
}

#[test]
fn a_rotary_dim_over_the_kernels_256_is_refused_by_wgpu_and_falls_back() {
    let (d, attrs) = (512, (10_000.0, 512, true));
    let g = rope_graph(DType::F32, d, attrs, Offset::Fixed(4094));
    let mut rng = Rng::new(163);
    let x =
        Tensor::from_f32(&[B, H, S, d], rng.vec(B * H * S * d, -1.0, 1.0), DType::F32).expect("x");
    let xs = x.to_f64_vec();
    let want = direct(&xs, d, attrs, 4094);
    for device in devices_under_test() {
        let name = device.info().name.clone();
        if device.info().backend != "wgpu" {
            continue;
        }
        let Err(err) = session(&device).compile(&g) else {
            panic!("{name}: a rotary dim over 256 compiled on wgpu with fallback denied");
        };
        assert!(err.to_string().contains("rotary_dim"), "{name}: {err}");
        let mut s = Session::new(&device);
        s.set_fallback(FallbackPolicy::Allow);
        let p = s.compile(&g).expect("compile with fallback");
        let out = s.run(&p, &[("x", x.view())], &[]).expect("run");
        check(
            &format!("fallback on {name}"),
            &out.into_vec()[0].1,
            &xs,
            &want,
            d,
        );
    }
}

#[test]
fn a_bf16_stochastic_precision_policy_rounds_rope_stochastically() {
    let (d, attrs) = (64, (10_000.0, 64, false));
    let g = rope_graph(DType::F32, d, attrs, Offset::Fixed(4094));
    let mut rng = Rng::new(164);
    let x =
        Tensor::from_f32(&[B, H, S, d], rng.vec(B * H * S * d, -1.0, 1.0), DType::F32).expect("x");
    let xs = x.to_f64_vec();
    let want = direct(&xs, d, attrs, 4094);
    let eps = DType::BF16.epsilon();
    for device in every_device() {
        let name = device.info().name.clone();
        let mut s = session(&device);
        s.set_precision(Some(polytensor::Precision {
            dtype: DType::BF16,
            stochastic: true,
        }));
        let p = s.compile(&g).expect("compile");
        let mut runs = Vec::new();
        for _ in 0..2 {
            let out = s.run(&p, &[("x", x.view())], &[]).expect("run");
            let y = out.into_vec().remove(0).1;
            // Outputs keep their declared dtype: the bf16 values, widened.
            assert!(
                y.to_f64_vec()
                    .iter()
                    .all(|&v| f64::from(half::bf16::from_f64(v)) == v),
                "{name}: not bf16 values"
            );
            // The input's rounding (≤ ε of the row norm, rotated) and the output's (< 1 ulp).
            for (r, (yr, (wr, xr))) in y
                .to_f64_vec()
                .chunks(d)
                .zip(want.chunks(d).zip(xs.chunks(d)))
                .enumerate()
            {
                let norm = xr.iter().map(|v| v * v).sum::<f64>().sqrt();
                for (k, (&a, &e)) in yr.iter().zip(wr).enumerate() {
                    assert!(
                        (a - e).abs() <= (4.0 * eps + F32_TOL) * norm,
                        "{name}: row {r} element {k}: got {a}, expected {e}"
                    );
                }
            }
            runs.push(y.to_f64_vec());
        }
        assert_ne!(
            runs[0], runs[1],
            "{name}: the next run drew the same rounding"
        );
    }
}
