//! Fused attention on every wgpu adapter (both kernel classes: the CI passes force the GPU class
//! onto lavapipe and run lavapipe at subgroup width 4) against the f64 reference, with
//! `FallbackPolicy::Deny` (`run_on`), so a CPU fallback can never make these pass.
//!
//! Tolerance, derived like matmul's (settled decision 8), per output element (b, h, i, c) with
//! n visible keys, scores s_j, weights w_j = softmax(s)_j and ε = f32 epsilon:
//!
//!   |got − ref| ≤ 2·(2·η + (n + 2)·ε)·Σ_j w_j·|v_jc| + 2·ε_out·|ref|
//!
//! where η = (D·max_j A_j + max_j |s_j| + 3 + 2·R)·ε bounds the relative error of one weight:
//! the f32 dot product (A_j = scale·Σ_c |q_c||k_jc|, D roundings), the scale, and WGSL's `exp`
//! (3 + 2|x| ulp, x up to the score range R = max_j (m − s_j)); normalising doubles it. The
//! value sum adds n + 2 roundings (n terms, the division, a rescale), and the 16-bit store one
//! rounding of the output dtype. Rescaling by the running max multiplies the accumulator and
//! the sum by the same factor, so its error cancels. A row with no visible key must be exactly
//! zero.

use polytensor::{DType, Device, Error, Graph, Offset, Tensor};

use crate::common::{Rng, devices_under_test, random, run_on};

#[derive(Clone, Copy, Debug)]
struct Case {
    dtype: DType,
    b: usize,
    hq: usize,
    hkv: usize,
    sq: usize,
    skv: usize,
    d: usize,
    causal: bool,
    /// q_offset (causal cases use Skv − Sq).
    q_offset: Option<usize>,
    /// Valid keys of batch row 0 (row 1 gets 0) when padding.
    padding: Option<u32>,
}

const fn case(
    dtype: DType,
    (b, hq, hkv): (usize, usize, usize),
    sq: usize,
    skv: usize,
    d: usize,
) -> Case {
    Case {
        dtype,
        b,
        hq,
        hkv,
        sq,
        skv,
        d,
        causal: false,
        q_offset: None,
        padding: None,
    }
}

const fn causal(c: Case) -> Case {
    Case {
        causal: true,
        q_offset: Some(c.skv - c.sq),
        ..c
    }
}

const fn padded(c: Case, k: u32) -> Case {
    Case {
        padding: Some(k),
        ..c
    }
}

/// Every dtype, D ∈ {1, 47, 64, 128, 256}, Sq ∈ {1, 17, 100}, Skv ∈ {1, 17, 513}, GQA 1 and 3
/// (Hkv = 2), causal (q_offset = Skv − Sq), padding (B = 2, lengths [k, 0]), a prefix read
/// without a mask, spread so that each dtype meets several head dims and both masks.
const CASES: [Case; 11] = [
    case(DType::F32, (1, 2, 2), 1, 1, 1),
    padded(causal(case(DType::F32, (2, 6, 2), 17, 513, 64)), 505),
    case(DType::F32, (1, 6, 2), 100, 513, 256),
    case(DType::F16, (1, 6, 2), 100, 17, 47),
    padded(causal(case(DType::F16, (2, 2, 2), 17, 17, 256)), 9),
    Case {
        q_offset: Some(5),
        ..case(DType::F16, (1, 2, 2), 1, 17, 128)
    },
    padded(causal(case(DType::BF16, (2, 2, 2), 100, 513, 128)), 200),
    causal(case(DType::BF16, (1, 6, 2), 1, 513, 47)),
    case(DType::BF16, (1, 2, 2), 17, 1, 64),
    padded(case(DType::BF16, (2, 6, 2), 17, 17, 1), 17),
    causal(case(DType::F32, (1, 2, 2), 100, 513, 47)),
];

/// The inputs and the graph of a case; `pos` names the symbolic q_offset when given.
fn build(c: &Case, rng: &mut Rng, sym: bool) -> (Graph, Vec<(&'static str, Tensor)>) {
    build_as(c, rng, sym, false)
}

/// `build`, or with `lse` the same attention's log-sum-exp per row.
fn build_as(c: &Case, rng: &mut Rng, sym: bool, lse: bool) -> (Graph, Vec<(&'static str, Tensor)>) {
    let mut g = Graph::new();
    let qs = [c.b, c.hq, c.sq, c.d];
    let ks = [c.b, c.hkv, c.skv, c.d];
    let q = g.input("q", qs.to_vec(), c.dtype);
    let k = g.input("k", ks.to_vec(), c.dtype);
    let v = g.input("v", ks.to_vec(), c.dtype);
    let mut inputs = vec![
        ("q", random(rng, &qs, c.dtype, -1.0, 1.0)),
        ("k", random(rng, &ks, c.dtype, -1.0, 1.0)),
        ("v", random(rng, &ks, c.dtype, -1.0, 1.0)),
    ];
    let lengths = c.padding.map(|n| {
        let mut l = vec![0u32; c.b];
        l[0] = n;
        inputs.push(("lengths", Tensor::new(&[c.b], l).expect("lengths")));
        g.input("lengths", vec![c.b], DType::U32)
    });
    let offset = c.q_offset.map(|o| {
        if sym {
            Offset::Sym("pos".to_string())
        } else {
            Offset::Fixed(o)
        }
    });
    let scale = 1.0 / (c.d as f64).sqrt();
    let y = if lse {
        g.attention_lse(q, k, v, lengths, scale, c.causal, offset)
    } else {
        g.attention(q, k, v, lengths, scale, c.causal, offset)
    }
    .expect("attention builds");
    g.output("y", y).expect("output");
    (g, inputs)
}

/// Per-element bound of the module docs, from the inputs as stored (f64); `None` where the row
/// sees no key (the output must be exactly zero).
fn bounds(c: &Case, inputs: &[(&str, Tensor)], want: &[f64]) -> Vec<Option<f64>> {
    let (q, k, v) = (
        inputs[0].1.to_f64_vec(),
        inputs[1].1.to_f64_vec(),
        inputs[2].1.to_f64_vec(),
    );
    let eps = DType::F32.epsilon();
    let eps_out = if c.dtype == DType::F32 {
        0.0
    } else {
        c.dtype.epsilon()
    };
    let scale = 1.0 / (c.d as f64).sqrt();
    let keys = c.q_offset.map_or(c.skv, |o| o + c.sq);
    let d = c.d;
    let mut out = vec![None; want.len()];
    for b in 0..c.b {
        for h in 0..c.hq {
            let kvh = h / (c.hq / c.hkv);
            for i in 0..c.sq {
                let mut n = keys;
                if c.causal {
                    n = n.min(c.q_offset.unwrap_or(0) + i + 1);
                }
                if let Some(len) = c.padding {
                    n = n.min(if b == 0 { len as usize } else { 0 });
                }
                let row = ((b * c.hq + h) * c.sq + i) * d;
                if n == 0 {
                    continue;
                }
                let kr = |j: usize| ((b * c.hkv + kvh) * c.skv + j) * d;
                let (mut s, mut a) = (vec![0.0; n], vec![0.0; n]);
                for j in 0..n {
                    for x in 0..d {
                        s[j] += scale * q[row + x] * k[kr(j) + x];
                        a[j] += scale * (q[row + x] * k[kr(j) + x]).abs();
                    }
                }
                let m = s.iter().copied().fold(f64::MIN, f64::max);
                let range = s.iter().map(|x| m - x).fold(0.0, f64::max);
                let amax = a.iter().copied().fold(0.0, f64::max);
                let smax = s.iter().map(|x| x.abs()).fold(0.0, f64::max);
                let eta = (d as f64 * amax + smax + 3.0 + 2.0 * range) * eps;
                let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                let sum: f64 = e.iter().sum();
                for x in 0..d {
                    let mag: f64 = (0..n).map(|j| e[j] / sum * v[kr(j) + x].abs()).sum();
                    let bound = 2.0 * (2.0 * eta + (n as f64 + 2.0) * eps) * mag
                        + 2.0 * eps_out * want[row + x].abs()
                        + 1e-30;
                    out[row + x] = Some(bound);
                }
            }
        }
    }
    out
}

fn gpus() -> Vec<Device> {
    devices_under_test()
        .into_iter()
        .filter(|d| d.info().backend == "wgpu")
        .collect()
}

fn check(c: &Case, seed: u64) {
    let mut rng = Rng::new(seed);
    let sym = c.q_offset.is_some() && seed % 2 == 1;
    let (g, inputs) = build(c, &mut rng, sym);
    let views: Vec<(&str, &Tensor)> = inputs.iter().map(|(n, t)| (*n, t)).collect();
    let binds: Vec<(&str, usize)> = match (sym, c.q_offset) {
        (true, Some(o)) => vec![("pos", o)],
        _ => vec![],
    };
    let want = run_on(&Device::reference(), &g, &views, &[], &binds).expect("reference");
    let want = want[0].to_f64_vec();
    let bound = bounds(c, &inputs, &want);
    for device in gpus() {
        let what = format!("attention {c:?} on {}", device.info().name);
        let got =
            run_on(&device, &g, &views, &[], &binds).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(got[0].shape(), &[c.b, c.hq, c.sq, c.d], "{what}: shape");
        assert_eq!(got[0].dtype(), c.dtype, "{what}: dtype");
        let got = got[0].to_f64_vec();
        for (idx, (&x, &w)) in got.iter().zip(&want).enumerate() {
            match bound[idx] {
                // A fully masked row: zeros (+0.0 bits), never NaN.
                None => assert!(
                    x == 0.0 && x.is_sign_positive(),
                    "{what}: index {idx} of a fully masked row: got {x}"
                ),
                Some(tol) => assert!(
                    (x - w).abs() <= tol,
                    "{what}: index {idx}: got {x}, expected {w}, tolerance {tol}"
                ),
            }
        }
    }
}

#[test]
fn attention_gpu_matches_reference() {
    for (n, c) in CASES.iter().enumerate() {
        check(c, 100 + n as u64);
    }
}

#[test]
fn attention_gpu_fully_masked_rows_are_zero() {
    // Batch row 1 has length 0 and row 0 length 3 under a causal mask: every query of row 1 and
    // none of row 0 is fully masked; `check` demands exact zeros there.
    let c = padded(causal(case(DType::BF16, (2, 4, 2), 5, 9, 32)), 3);
    check(&c, 7);
    let c = padded(case(DType::F32, (2, 2, 2), 3, 4, 8), 0);
    check(&c, 8);
}

#[test]
fn attention_gpu_reading_past_the_keys_is_an_error() {
    let c = Case {
        q_offset: Some(10),
        ..causal(case(DType::F32, (1, 2, 2), 8, 17, 16))
    };
    let mut rng = Rng::new(9);
    let (g, inputs) = build(&c, &mut rng, true);
    let views: Vec<(&str, &Tensor)> = inputs.iter().map(|(n, t)| (*n, t)).collect();
    for device in gpus() {
        let name = device.info().name.clone();
        // 10 + 8 queries read 18 keys of 17.
        match run_on(&device, &g, &views, &[], &[("pos", 10)]) {
            Err(Error::InvalidArgument {
                op: "attention", ..
            }) => {}
            other => panic!("{name}: expected an attention InvalidArgument, got {other:?}"),
        }
        // The same program at a valid position runs.
        run_on(&device, &g, &views, &[], &[("pos", 9)])
            .unwrap_or_else(|e| panic!("{name}: position 9: {e}"));
    }
}

/// Decode (at most 4 query rows per head) runs split-K on GPUs, on GL and wherever the
/// CPU-emulated kernel choice would be `attn_rows`: `attn_split` cuts the keys into chunks of at
/// least 256, one workgroup per (chunk, head, batch row), and `attn_merge` combines the partial
/// softmaxes. Chunks where a row sees no key (padding, the causal diagonal), GQA 8, every dtype,
/// an odd head dim and a 256-wide f32 head (4 words per invocation) against the reference on
/// every adapter; the run statistics show the two launches and the chunk count where split-K
/// must run (GPUs, GL, `POLYTENSOR_KERNELS=gpu`, odd head dims), and wherever it ran.
#[test]
fn attention_gpu_decode_runs_split_k() {
    let cases = [
        // 1500 of 2048 keys in batch row 0 (6 chunks of 256, the last one partly), none in row 1.
        (
            padded(causal(case(DType::F32, (2, 6, 2), 1, 2048, 64)), 1500),
            8,
        ),
        (causal(case(DType::F16, (1, 16, 2), 4, 2048, 80)), 8),
        (case(DType::BF16, (1, 3, 3), 2, 700, 256), 3),
        (case(DType::F32, (1, 2, 2), 3, 300, 256), 2),
        (case(DType::F16, (1, 4, 2), 1, 9000, 47), 29),
    ];
    let forced = std::env::var("POLYTENSOR_KERNELS").is_ok_and(|v| v == "gpu");
    for (n, (c, chunks)) in cases.iter().enumerate() {
        check(c, 300 + n as u64);
        let mut rng = Rng::new(1);
        let (g, inputs) = build(c, &mut rng, false);
        let views: Vec<(&str, polytensor::TensorView<'_>)> =
            inputs.iter().map(|(n, t)| (*n, t.view())).collect();
        for device in gpus() {
            let mut s = polytensor::Session::new(&device);
            s.set_fallback(polytensor::FallbackPolicy::Deny);
            let p = s.compile(&g).expect("compile");
            s.run(&p, &views, &[]).expect("run");
            let launches: Vec<(String, [u32; 3])> = s
                .last_run_stats()
                .launches
                .iter()
                .map(|l| (l.kernel.to_string(), l.grid))
                .collect();
            let info = device.info();
            let name = info.name.clone();
            let must = !info.software || forced || info.api == "GL" || !c.d.is_multiple_of(8);
            assert!(
                launches.len() == 2 || !must,
                "{name}: {c:?}: split-K expected, ran {launches:?}"
            );
            if launches.len() == 2 {
                assert_eq!(launches[0].0, "attention_split/attn_split", "{name}");
                assert_eq!(launches[1].0, "attention_merge/attn_merge", "{name}");
                assert_eq!(
                    launches[0].1,
                    [(chunks * c.hq * c.b) as u32, 1, 1],
                    "{name}: {c:?}: one workgroup per chunk, head and batch row"
                );
            }
        }
    }
}

/// Per-row bound of `lse` attention (f32 `[B, Hq, Sq]`): with η as in the module docs (the
/// relative error of one weight: the dot product, the scale and `exp`), the sum adds n + 1
/// roundings and `ln` and the final addition of the max about two more, so
///
///   |got − ref| ≤ 2·(η + (n + 3)·ε) + 2·ε·|ref|.
///
/// `None` where the row sees no key (the output must be f32's lowest, exactly).
fn lse_bounds(c: &Case, inputs: &[(&str, Tensor)]) -> Vec<Option<f64>> {
    let (q, k) = (inputs[0].1.to_f64_vec(), inputs[1].1.to_f64_vec());
    let eps = DType::F32.epsilon();
    let scale = 1.0 / (c.d as f64).sqrt();
    let keys = c.q_offset.map_or(c.skv, |o| o + c.sq);
    let d = c.d;
    let mut out = vec![None; c.b * c.hq * c.sq];
    for b in 0..c.b {
        for h in 0..c.hq {
            let kvh = h / (c.hq / c.hkv);
            for i in 0..c.sq {
                let mut n = keys;
                if c.causal {
                    n = n.min(c.q_offset.unwrap_or(0) + i + 1);
                }
                if let Some(len) = c.padding {
                    n = n.min(if b == 0 { len as usize } else { 0 });
                }
                let row = (b * c.hq + h) * c.sq + i;
                if n == 0 {
                    continue;
                }
                let kr = |j: usize| ((b * c.hkv + kvh) * c.skv + j) * d;
                let (mut s, mut a) = (vec![0.0; n], vec![0.0; n]);
                for j in 0..n {
                    for x in 0..d {
                        s[j] += scale * q[row * d + x] * k[kr(j) + x];
                        a[j] += scale * (q[row * d + x] * k[kr(j) + x]).abs();
                    }
                }
                let m = s.iter().copied().fold(f64::MIN, f64::max);
                let range = s.iter().map(|x| m - x).fold(0.0, f64::max);
                let amax = a.iter().copied().fold(0.0, f64::max);
                let smax = s.iter().map(|x| x.abs()).fold(0.0, f64::max);
                let eta = (d as f64 * amax + smax + 3.0 + 2.0 * range) * eps;
                let lse = m + s.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
                out[row] = Some(2.0 * (eta + (n as f64 + 3.0) * eps) + 2.0 * eps * lse.abs());
            }
        }
    }
    out
}

/// `lse` attention (`Graph::attention_lse`): each query row's log-sum-exp of its scaled, masked
/// scores in f32 `[B, Hq, Sq]`, on the CPU fast path and every adapter, over every case of
/// `CASES` (each dtype of q and k, GQA, causal at an offset, padding with an empty batch row)
/// against the f64 reference; a row that sees no key gives f32's lowest value exactly.
#[test]
fn attention_lse_matches_reference() {
    for (n, c) in CASES.iter().enumerate() {
        let mut rng = Rng::new(500 + n as u64);
        let (g, inputs) = build_as(c, &mut rng, false, true);
        let views: Vec<(&str, &Tensor)> = inputs.iter().map(|(n, t)| (*n, t)).collect();
        let want = run_on(&Device::reference(), &g, &views, &[], &[]).expect("reference");
        assert_eq!(want[0].shape(), &[c.b, c.hq, c.sq], "{c:?}: shape");
        assert_eq!(want[0].dtype(), DType::F32, "{c:?}: dtype");
        let want = want[0].to_f64_vec();
        let bound = lse_bounds(c, &inputs);
        for device in devices_under_test() {
            let what = format!("attention_lse {c:?} on {}", device.info().name);
            let got =
                run_on(&device, &g, &views, &[], &[]).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(got[0].shape(), &[c.b, c.hq, c.sq], "{what}: shape");
            assert_eq!(got[0].dtype(), DType::F32, "{what}: dtype");
            for (idx, (&x, &w)) in got[0].to_f64_vec().iter().zip(&want).enumerate() {
                match bound[idx] {
                    None => assert!(
                        x == f64::from(f32::MIN) && w == x,
                        "{what}: row {idx} sees no key: got {x}, reference {w}"
                    ),
                    Some(tol) => assert!(
                        (x - w).abs() <= tol,
                        "{what}: row {idx}: got {x}, expected {w}, tolerance {tol}"
                    ),
                }
            }
        }
    }
}
