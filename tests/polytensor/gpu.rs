//! GPU-specific guarantees: 16-bit stores bit-identical to the CPU on inputs covering every f32
//! exponent (repeated, on odd lengths and odd row lengths, where a race on a shared word would
//! show), and placement: CPU fallback under `Allow` (reported), `Err` under `Deny`, tensors over
//! the binding limit.

use polytensor::backend::wgpu::devices_with_binding_limit;
use polytensor::{DType, Device, Error, FallbackPolicy, Graph, Session, Tensor};

use crate::common::{Rng, devices_under_test, run_on};

fn gpus() -> Vec<Device> {
    devices_under_test()
        .into_iter()
        .filter(|d| d.info().backend == "wgpu")
        .collect()
}

/// f32 values covering every exponent (subnormals included), 16-bit ties, values beside the
/// largest finite f16/bf16, NaN and ±Inf.
fn every_exponent(n: usize, rng: &mut Rng) -> Vec<f32> {
    let special = [
        f32::NAN,
        -f32::NAN,
        f32::from_bits(0x7f80_0001),
        f32::INFINITY,
        f32::NEG_INFINITY,
        65504.0,
        65519.0,
        65520.0,
        -65536.0,
        f32::MAX,
        f32::MIN_POSITIVE,
        f32::from_bits(1),
        -0.0,
        1.0 + 2f32.powi(-11),
        1.0 + 2f32.powi(-8),
        2f32.powi(-25),
        3.0 * 2f32.powi(-25),
        2f32.powi(-14) - 2f32.powi(-25),
    ];
    (0..n)
        .map(|i| {
            if i < special.len() {
                return special[i];
            }
            let r = rng.next_u64();
            let exp = (i as u32) % 256;
            let man = (r as u32) & 0x7f_ffff;
            // Every fourth value sits exactly on a 16-bit tie.
            let man = if i % 4 == 0 {
                (man & !0xffff) | 0x8000
            } else {
                man
            };
            f32::from_bits(((r >> 40) as u32 & 1) << 31 | exp << 23 | man)
        })
        .collect()
}

#[test]
fn sixteen_bit_stores_are_bit_identical_to_the_cpu() {
    let mut rng = Rng::new(30);
    for shape in [&[100_003usize][..], &[301, 333]] {
        let n: usize = shape.iter().product();
        let x = Tensor::new(shape, every_exponent(n, &mut rng)).expect("x");
        let mut g = Graph::new();
        let xi = g.input("x", shape, DType::F32);
        let h = g.cast(xi, DType::F16).expect("f16");
        let b = g.cast(xi, DType::BF16).expect("bf16");
        let hb = g.cast(h, DType::BF16).expect("f16→bf16");
        let bh = g.cast(b, DType::F16).expect("bf16→f16");
        let back = g.cast(h, DType::F32).expect("f16→f32");
        for (name, id) in [("h", h), ("b", b), ("hb", hb), ("bh", bh), ("back", back)] {
            g.output(name, id).expect("out");
        }
        let want = run_on(&Device::cpu(), &g, &[("x", &x)], &[], &[]).expect("cpu");
        for device in gpus() {
            let mut s = Session::new(&device);
            s.set_fallback(FallbackPolicy::Deny);
            let p = s.compile(&g).expect("compile");
            for run in 0..4 {
                let out = s.run(&p, &[("x", x.view())], &[]).expect("run");
                for (k, ((name, got), w)) in out.iter().zip(&want).enumerate() {
                    if got.as_bytes() != w.as_bytes() {
                        let es = w.dtype().size_of();
                        let i = (0..w.numel())
                            .find(|&i| {
                                got.as_bytes()[i * es..(i + 1) * es]
                                    != w.as_bytes()[i * es..(i + 1) * es]
                            })
                            .unwrap_or(0);
                        panic!(
                            "{} run {run}: output {k} `{name}` {shape:?} differs at {i}: input {:#010x}, got {:?}, cpu {:?}",
                            device.info().name,
                            x.as_slice::<f32>().expect("f32")[i].to_bits(),
                            &got.as_bytes()[i * es..(i + 1) * es],
                            &w.as_bytes()[i * es..(i + 1) * es]
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn odd_row_lengths_never_lose_a_half_word() {
    // Correctly rounded f32 adds, stored in bf16/f16: the GPU must match the CPU bit for bit on
    // every run; a read-modify-write race on a shared word would corrupt a neighbour.
    let mut rng = Rng::new(31);
    for dtype in [DType::BF16, DType::F16] {
        for shape in [&[37usize, 783][..], &[5, 1], &[3, 17, 3]] {
            let n: usize = shape.iter().product();
            let a = Tensor::from_f32(shape, rng.vec(n, -4.0, 4.0), dtype).expect("a");
            let b = Tensor::from_f32(shape, rng.vec(n, -4.0, 4.0), dtype).expect("b");
            let mut g = Graph::new();
            let (ai, bi) = (g.input("a", shape, dtype), g.input("b", shape, dtype));
            let y = g.add(ai, bi).expect("add");
            g.output("y", y).expect("out");
            let want = run_on(&Device::cpu(), &g, &[("a", &a), ("b", &b)], &[], &[]).expect("cpu");
            for device in gpus() {
                for _ in 0..5 {
                    let got = run_on(&device, &g, &[("a", &a), ("b", &b)], &[], &[]).expect("gpu");
                    assert_eq!(
                        got[0],
                        want[0],
                        "{dtype} {shape:?} on {}",
                        device.info().name
                    );
                }
            }
        }
    }
}

#[test]
fn unsupported_ops_fall_back_under_allow_and_fail_under_deny() {
    // An int → float cast has no WGSL kernel (WGSL's conversion may round either way).
    let mut g = Graph::new();
    let i = g.input("i", [3, 5], DType::I32);
    let x = g.input("x", [3, 5], DType::F32);
    let f = g.cast(i, DType::F32).expect("cast");
    let y = g.add(f, x).expect("add");
    let y = g.cast(y, DType::BF16).expect("to bf16");
    g.output("y", y).expect("out");
    let it = Tensor::new(&[3, 5], (0..15).map(|v| v - 7).collect::<Vec<i32>>()).expect("i");
    let xt = Tensor::new(&[3, 5], vec![0.5f32; 15]).expect("x");
    let want = run_on(
        &Device::reference(),
        &g,
        &[("i", &it), ("x", &xt)],
        &[],
        &[],
    )
    .expect("reference");
    for device in gpus() {
        let mut s = Session::new(&device);
        let p = s.compile(&g).expect("Allow compiles with a fallback");
        let report = p.placement();
        assert_eq!(report.fallbacks, 1, "{report:?}");
        let cast = report
            .nodes
            .iter()
            .find(|(id, _, _)| *id == 2)
            .expect("cast placed");
        assert_eq!(cast.2, Device::cpu().info().name, "{report:?}");
        let add = report
            .nodes
            .iter()
            .find(|(_, op, _)| *op == "add")
            .expect("add placed");
        assert_eq!(add.2, device.info().name, "{report:?}");
        let out = s
            .run(&p, &[("i", it.view()), ("x", xt.view())], &[])
            .expect("run");
        assert_eq!(out.get("y").expect("y"), &want[0]);
        s.set_fallback(FallbackPolicy::Deny);
        let e = s.compile(&g).err().expect("Deny refuses");
        assert!(
            matches!(e, Error::Unsupported(_)) && e.to_string().contains("i32→f32"),
            "{e}"
        );
    }
}

#[test]
fn tensors_over_the_binding_limit_fall_back_or_fail_clearly() {
    let mut rng = Rng::new(32);
    let w = Tensor::new(&[64, 48], rng.vec(64 * 48, -1.0, 1.0)).expect("w");
    let x = Tensor::new(&[5, 64], rng.vec(5 * 64, -1.0, 1.0)).expect("x");
    let mut g = Graph::new();
    let xi = g.input("x", [5, 64], DType::F32);
    let wi = g.weight("w", [64, 48], DType::F32);
    let y = g.matmul(xi, wi).expect("matmul");
    let y = g.unary(polytensor::UnaryOp::Relu, y).expect("relu");
    g.output("y", y).expect("out");
    let want =
        run_on(&Device::reference(), &g, &[("x", &x)], &[("w", &w)], &[]).expect("reference");
    // A 4 KiB binding limit: the 12 KiB weight is over it, the 960-byte activations are not.
    let small = devices_with_binding_limit(4096);
    assert_eq!(small.len(), gpus().len());
    for device in small {
        let mut s = Session::new(&device);
        s.load_weight("w", w.view(), DType::F32).expect("weight");
        let p = s.compile(&g).expect("Allow");
        assert_eq!(p.placement().fallbacks, 1, "{:?}", p.placement());
        let out = s.run(&p, &[("x", x.view())], &[]).expect("run");
        crate::common::assert_close(
            "over-limit matmul",
            out.get("y").expect("y"),
            &want[0],
            1e-5,
            1e-5,
        );
        s.set_fallback(FallbackPolicy::Deny);
        let e = s.compile(&g).err().expect("Deny");
        assert!(e.to_string().contains("binding limit 4096"), "{e}");
    }
}

#[test]
fn an_unknown_device_query_is_a_clear_error() {
    let e = Device::select(&Device::list(), Some("no-such-gpu")).expect_err("unknown");
    assert!(
        e.to_string().contains("no-such-gpu") && e.to_string().contains("[0]"),
        "{e}"
    );
}

#[test]
fn a_transposed_weight_over_the_binding_limit_is_split_over_bindings() {
    // x @ wᵀ with w [N, K] over a 4 KiB binding limit: bound in row ranges, one launch each,
    // no fallback; f32 and bf16 (odd N: the last range ends on the pad column), 10 rows (the
    // tiled kernels) and ≤ 4 rows with even N (matvec.wgsl, writing its columns of each range).
    let mut rng = Rng::new(33);
    for (dtype, n, rows) in [
        (DType::F32, 48usize, 5usize),
        (DType::BF16, 77, 5),
        (DType::F32, 48, 1),
        (DType::BF16, 78, 2),
    ] {
        let k = 64;
        let w = Tensor::from_f32(&[n, k], rng.vec(n * k, -1.0, 1.0), dtype).expect("w");
        let x =
            Tensor::from_f32(&[2, rows, k], rng.vec(2 * rows * k, -1.0, 1.0), dtype).expect("x");
        let mut g = Graph::new();
        let xi = g.input("x", [2, rows, k], dtype);
        let wi = g.weight("w", [n, k], dtype);
        let y = g.matmul_t(xi, wi, false, true).expect("matmul");
        g.output("y", y).expect("out");
        let want =
            run_on(&Device::reference(), &g, &[("x", &x)], &[("w", &w)], &[]).expect("reference");
        for device in devices_with_binding_limit(4096) {
            let mut s = Session::new(&device);
            s.set_fallback(FallbackPolicy::Deny);
            s.load_weight("w", w.view(), dtype).expect("weight");
            let p = s.compile(&g).expect("split, not refused");
            assert_eq!(p.placement().fallbacks, 0);
            let out = s.run(&p, &[("x", x.view())], &[]).expect("run");
            let stats = s.last_run_stats();
            let kernels: Vec<&str> = stats.launches.iter().map(|l| &*l.kernel).collect();
            assert_eq!(
                kernels.iter().all(|k| k.starts_with("matvec/")),
                rows <= 2,
                "{dtype} {rows} rows: {kernels:?}"
            );
            let (atol, rtol) = match dtype {
                DType::F32 => (1e-4, 1e-5),
                _ => (1e-2, 2.0 * DType::BF16.epsilon()),
            };
            crate::common::assert_close(
                &format!("split {dtype} on {}", device.info().name),
                out.get("y").expect("y"),
                &want[0],
                atol,
                rtol,
            );
        }
    }
}

#[test]
fn a_graph_that_falls_back_entirely_still_runs_with_its_weights() {
    // Non-transposed weight over a 1 KiB limit: the only op falls back to the CPU, and the CPU
    // segment gets host copies of the weights; an output named twice comes back twice.
    let mut rng = Rng::new(34);
    let w = Tensor::new(&[64, 8], rng.vec(512, -1.0, 1.0)).expect("w");
    let x = Tensor::new(&[3, 64], rng.vec(192, -1.0, 1.0)).expect("x");
    let mut g = Graph::new();
    let xi = g.input("x", [3, 64], DType::F32);
    let wi = g.weight("w", [64, 8], DType::F32);
    let y = g.matmul(xi, wi).expect("matmul");
    g.output("y", y).expect("out");
    g.output("y_again", y).expect("out");
    let want =
        run_on(&Device::reference(), &g, &[("x", &x)], &[("w", &w)], &[]).expect("reference");
    for device in devices_with_binding_limit(1024) {
        let mut s = Session::new(&device);
        s.load_weight("w", w.view(), DType::F32).expect("weight");
        let p = s.compile(&g).expect("Allow");
        assert_eq!(p.placement().fallbacks, 1);
        let out = s.run(&p, &[("x", x.view())], &[]).expect("run");
        for name in ["y", "y_again"] {
            crate::common::assert_close(name, out.get(name).expect("out"), &want[0], 1e-5, 1e-5);
        }
    }
}

#[test]
fn widening_every_16_bit_pattern_matches_the_cpu() {
    // All 65 536 patterns as a [256, 256] tensor (the vectorised widen kernel), and an odd length
    // (the one-word cast kernel): bit-identical to the CPU, NaN payloads included.
    for dtype in [DType::F16, DType::BF16] {
        for n in [65536usize, 65533] {
            let bits: Vec<u16> = (0..n as u32).map(|b| b as u16).collect();
            let shape: Vec<usize> = if n == 65536 { vec![256, 256] } else { vec![n] };
            let t = match dtype {
                DType::F16 => Tensor::new(
                    &shape,
                    bits.iter()
                        .map(|&b| half::f16::from_bits(b))
                        .collect::<Vec<_>>(),
                ),
                _ => Tensor::new(
                    &shape,
                    bits.iter()
                        .map(|&b| half::bf16::from_bits(b))
                        .collect::<Vec<_>>(),
                ),
            }
            .expect("tensor");
            let mut g = Graph::new();
            let x = g.input("x", shape.clone(), dtype);
            let y = g.cast(x, DType::F32).expect("cast");
            g.output("y", y).expect("out");
            let want = run_on(&Device::cpu(), &g, &[("x", &t)], &[], &[]).expect("cpu");
            for device in gpus() {
                let got = run_on(&device, &g, &[("x", &t)], &[], &[]).expect("gpu");
                assert!(
                    got[0].as_bytes() == want[0].as_bytes(),
                    "{dtype} {shape:?} widened on {}",
                    device.info().name
                );
            }
        }
    }
}

#[test]
fn an_adapter_that_refuses_the_device_request_gives_a_clear_error() {
    // Every native feature at once: no adapter grants that, so opening the device fails. The
    // documented behaviour: listing still works; the first upload or compile returns
    // Error::Device naming the adapter and the refusal; the CPU is unaffected.
    let refusing = polytensor::backend::wgpu::devices_requiring(wgpu::Features::all_native_mask());
    assert_eq!(refusing.len(), gpus().len());
    let mut g = Graph::new();
    let x = g.input("x", [4], DType::F32);
    let y = g.unary(polytensor::UnaryOp::Neg, x).expect("neg");
    g.output("y", y).expect("out");
    for device in refusing {
        let name = device.info().name.clone();
        let mut s = Session::new(&device);
        let e = s.compile(&g).err().expect("the device cannot be opened");
        assert!(
            matches!(e, Error::Device { .. }) && e.to_string().contains(&name),
            "{e}"
        );
        assert!(e.to_string().contains("request_device failed"), "{e}");
        let w = Tensor::new(&[4], vec![1f32; 4]).expect("w");
        assert!(s.load_weight("w", w.view(), DType::F32).is_err());
    }
    let x = Tensor::new(&[4], vec![1f32, -2.0, 3.0, -4.0]).expect("x");
    let out = run_on(&Device::cpu(), &g, &[("x", &x)], &[], &[]).expect("the CPU still runs");
    assert_eq!(out[0].to_f32_vec(), vec![-1.0, 2.0, -3.0, 4.0]);
}

#[test]
fn gpu_timing_reports_device_time_where_the_adapter_has_timestamps() {
    // A 128³ matmul and an add: with timing on, an adapter with
    // timestamp queries reports a device time within the run's wall time; off, none.
    let mut rng = Rng::new(35);
    let a = Tensor::new(&[128, 128], rng.vec(128 * 128, -1.0, 1.0)).expect("a");
    let mut g = Graph::new();
    let ai = g.input("a", [128, 128], DType::F32);
    let y = g.matmul(ai, ai).expect("matmul");
    let z = g.add(y, y).expect("add");
    g.output("z", z).expect("out");
    for device in polytensor::Device::list()
        .into_iter()
        .filter(|d| d.info().backend == "wgpu")
    {
        let has = device
            .info()
            .details
            .iter()
            .any(|(k, v)| k == "timestamp queries" && v == "yes");
        let mut s = Session::new(&device);
        s.set_fallback(FallbackPolicy::Deny);
        let p = s.compile(&g).expect("compile");
        s.run(&p, &[("a", a.view())], &[]).expect("run");
        assert_eq!(s.last_run_stats().gpu_ns, None, "timing is off by default");
        s.set_gpu_timing(true);
        let t = std::time::Instant::now();
        let out = s.run(&p, &[("a", a.view())], &[]).expect("timed run");
        let wall = t.elapsed().as_nanos() as u64;
        let gpu = s.last_run_stats().gpu_ns;
        let name = &device.info().name;
        assert_eq!(gpu.is_some(), has, "{name}: {gpu:?}");
        if let Some(ns) = gpu {
            assert!(
                ns > 0 && ns <= wall,
                "{name}: device {ns} ns of {wall} ns wall"
            );
        }
        // Timing changes nothing in the results.
        s.set_gpu_timing(false);
        let again = s.run(&p, &[("a", a.view())], &[]).expect("run");
        assert_eq!(out.get("z").expect("z"), again.get("z").expect("z"));
    }
}
