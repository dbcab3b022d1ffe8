//! Launch plans and what a run costs, asserted with run statistics (counts, never timings):
//! bind groups built once and reused, params uploaded once per run, one compute pass, state
//! writes that cost what they write, kernel classes per adapter and under
//! `POLYTENSOR_KERNELS=gpu`, unsupported graphs refused without a panic, and validation errors
//! kept to the run that caused them.

use polytensor::{
    BinaryOp, DType, Device, Dim, Error, FallbackPolicy, Graph, Offset, ReduceOp, Session, Tensor,
    UnaryOp,
};

use crate::common::{Rng, assert_close, devices_under_test, run_on};

fn gpus() -> Vec<Device> {
    devices_under_test()
        .into_iter()
        .filter(|d| d.info().backend == "wgpu")
        .collect()
}

fn forced_gpu_kernels() -> bool {
    std::env::var("POLYTENSOR_KERNELS").is_ok_and(|v| v == "gpu")
}

#[test]
fn bind_groups_are_built_once_params_uploaded_once_one_pass() {
    let mut rng = Rng::new(50);
    let x = Tensor::new(&[3, 17], rng.vec(51, -1.0, 1.0)).expect("x");
    let w1 = Tensor::new(&[17, 5], rng.vec(85, -1.0, 1.0)).expect("w");
    let w2 = Tensor::new(&[17, 5], rng.vec(85, -1.0, 1.0)).expect("w");
    let mut g = Graph::new();
    let xi = g.input("x", [3, 17], DType::F32);
    let wi = g.weight("w", [17, 5], DType::F32);
    let y = g.matmul(xi, wi).expect("matmul");
    let y = g.unary(UnaryOp::Relu, y).expect("relu");
    let y = g.binary(BinaryOp::Mul, y, y).expect("mul");
    g.output("y", y).expect("out");
    for device in gpus() {
        let name = device.info().name.clone();
        let mut s = Session::new(&device);
        s.set_fallback(FallbackPolicy::Deny);
        // Compiled before its weight is loaded: bind groups come at the first run.
        let p = s.compile(&g).expect("compile");
        s.load_weight("w", w1.view(), DType::F32).expect("w");
        let views = [("x", x.view())];
        let out1 = s.run(&p, &views, &[]).expect("run 1");
        let first = s.last_run_stats();
        assert_eq!(first.launches.len(), 3, "{name}: {first:?}");
        assert_eq!(first.bind_groups_created, 3, "{name}: {first:?}");
        assert_eq!(first.passes, 1, "{name}: one compute pass: {first:?}");
        assert_eq!(first.bytes_read_back, 3 * 5 * 4, "{name}: {first:?}");
        // The input, then every launch's params in one upload (at most 256 bytes each).
        let input_bytes = 3 * 17 * 4;
        assert!(
            first.bytes_uploaded > input_bytes && first.bytes_uploaded <= input_bytes + 3 * 256,
            "{name}: {first:?}"
        );
        for _ in 0..3 {
            s.run(&p, &views, &[]).expect("run");
            let again = s.last_run_stats();
            assert_eq!(again.bind_groups_created, 0, "{name}: reused: {again:?}");
            assert_eq!(again.pipelines_built, 0, "{name}: {again:?}");
            assert_eq!(again.bytes_uploaded, first.bytes_uploaded, "{name}");
            assert_eq!(again.launches, first.launches, "{name}");
        }
        // A replaced weight rebuilds only the bind group that binds it, and is used.
        s.load_weight("w", w2.view(), DType::F32).expect("w2");
        let out2 = s.run(&p, &views, &[]).expect("run w2");
        assert_eq!(s.last_run_stats().bind_groups_created, 1, "{name}");
        for (w, out) in [(&w1, &out1), (&w2, &out2)] {
            let want = run_on(&Device::reference(), &g, &[("x", &x)], &[("w", w)], &[])
                .expect("reference");
            assert_close(&name, out.get("y").expect("y"), &want[0], 1e-5, 1e-5);
        }
        let total = s.total_stats();
        assert_eq!(total.launch_count, 5 * 3, "{name}");
        assert!(total.launches.is_empty(), "{name}: totals keep counts only");
    }
}

#[test]
fn a_kv_cache_append_costs_what_it_writes() {
    // state [2, 1100, 3] (16-bit: odd rows, two elements a word), value [2, 5, 3] at a run-time
    // offset: only 30 elements are written, the state is aliased (no copy), and every other
    // element keeps its value.
    let mut rng = Rng::new(51);
    for dtype in [DType::F32, DType::BF16, DType::F16, DType::U32] {
        let init: Vec<f32> = (0..2 * 1100 * 3).map(|i| i as f32).collect();
        let init = match dtype {
            DType::U32 => {
                Tensor::new(&[2, 1100, 3], init.iter().map(|&v| v as u32).collect()).expect("state")
            }
            _ => Tensor::from_f32(&[2, 1100, 3], init, dtype).expect("state"),
        };
        let value = match dtype {
            DType::U32 => Tensor::new(
                &[2, 5, 3],
                (0..30).map(|i| 16_777_217 + 1000 * i as u32).collect(),
            )
            .expect("v"),
            _ => Tensor::from_f32(&[2, 5, 3], rng.vec(30, -8.0, 8.0), dtype).expect("v"),
        };
        let mut g = Graph::new();
        g.state("kv", [2, 1100, 3], dtype);
        let v = g.input("v", [2, 5, 3], dtype);
        let w = g
            .write_state("kv", v, 1, Offset::Sym("pos".into()))
            .expect("write");
        g.output("kv", w).expect("out");
        for device in devices_under_test() {
            let name = device.info().name.clone();
            let mut s = Session::new(&device);
            s.set_fallback(FallbackPolicy::Deny);
            s.set_state("kv", init.view()).expect("state");
            let p = s.compile(&g).expect("compile");
            let es = dtype.size_of();
            // The expected state, written element by element by the test.
            let mut want = init.as_bytes().to_vec();
            let val = value.as_bytes();
            for pos in [7usize, 0, 1095, 9] {
                let out = s
                    .run(&p, &[("v", value.view())], &[("pos", pos)])
                    .expect("run");
                let st = s.last_run_stats();
                assert_eq!(st.state_elements_written, 30, "{name} {dtype}: {st:?}");
                assert_eq!(st.bytes_copied, 0, "{name} {dtype}: aliased: {st:?}");
                if device.info().backend == "wgpu" {
                    // One workgroup covers the written words, not the 6600-element state.
                    assert_eq!(st.launches.len(), 1, "{name}: {st:?}");
                    assert_eq!(st.launches[0].grid, [1, 1, 1], "{name}: {st:?}");
                }
                for o in 0..2 {
                    for k in pos..pos + 5 {
                        for i in 0..3 {
                            let (e, ve) = ((o * 1100 + k) * 3 + i, (o * 5 + k - pos) * 3 + i);
                            want[e * es..(e + 1) * es]
                                .copy_from_slice(&val[ve * es..(ve + 1) * es]);
                        }
                    }
                }
                let got = out.get("kv").expect("kv").as_bytes();
                for e in 0..2 * 1100 * 3 {
                    assert_eq!(
                        &got[e * es..(e + 1) * es],
                        &want[e * es..(e + 1) * es],
                        "{name} {dtype} pos {pos}: element {e}"
                    );
                }
            }
            // set_state and create_state of the same shape and dtype write in place: the
            // programs' bind groups stay valid (none is rebuilt) and see the new contents.
            s.set_state("kv", init.view()).expect("set again");
            let out = s
                .run(&p, &[("v", value.view())], &[("pos", 0)])
                .expect("run after set_state");
            assert_eq!(s.last_run_stats().bind_groups_created, 0, "{name} {dtype}");
            let got = out.get("kv").expect("kv").as_bytes();
            let row = 3 * es;
            assert_eq!(
                &got[5 * row..6 * row],
                &init.as_bytes()[5 * row..6 * row],
                "{name}"
            );
            s.create_state("kv", &[2, 1100, 3], dtype).expect("reset");
            let out = s
                .run(&p, &[("v", value.view())], &[("pos", 0)])
                .expect("run after create_state");
            assert_eq!(s.last_run_stats().bind_groups_created, 0, "{name} {dtype}");
            let got = out.get("kv").expect("kv").as_bytes();
            assert!(
                got[5 * row..1100 * row].iter().all(|&b| b == 0),
                "{name} {dtype}: zeros"
            );
        }
    }
}

#[test]
fn kernel_classes_follow_the_adapter_and_the_override() {
    let mut rng = Rng::new(52);
    let x = Tensor::new(&[4, 783], rng.vec(4 * 783, 1.0, 2.0)).expect("x");
    let a = Tensor::new(&[64, 64], rng.vec(64 * 64, -1.0, 1.0)).expect("a");
    let mut g = Graph::new();
    let xi = g.input("x", [4, 783], DType::F32);
    let ai = g.input("a", [64, 64], DType::F32);
    let r = g.reduce(ReduceOp::Mean, xi, 1).expect("mean");
    let m = g.matmul(ai, ai).expect("matmul");
    g.output("r", r).expect("r");
    g.output("m", m).expect("m");
    let want =
        run_on(&Device::reference(), &g, &[("x", &x), ("a", &a)], &[], &[]).expect("reference");
    for device in gpus() {
        let name = device.info().name.clone();
        let software = device.info().software;
        let subgroups8 = device
            .info()
            .details
            .iter()
            .any(|(k, v)| k == "subgroups" && v == "yes, size 8..8");
        let mut s = Session::new(&device);
        s.set_fallback(FallbackPolicy::Deny);
        let p = s.compile(&g).expect("compile");
        let out = s
            .run(&p, &[("x", x.view()), ("a", a.view())], &[])
            .expect("run");
        assert_close(&name, out.get("r").expect("r"), &want[0], 1e-5, 1e-5);
        assert_close(&name, out.get("m").expect("m"), &want[1], 1e-4, 1e-5);
        let kernels: Vec<String> = s
            .last_run_stats()
            .launches
            .iter()
            .map(|l| l.kernel.to_string())
            .collect();
        let gpu_class = !software || forced_gpu_kernels();
        let (reduce, matmul) = if gpu_class {
            ("reduce/reduce_tree", "matmul/matmul+aligned")
        } else if subgroups8 {
            ("reduce/reduce", "matmul_sg/matmul_sg4")
        } else {
            ("reduce/reduce", "matmul/matmul_direct")
        };
        assert_eq!(kernels, [reduce, matmul], "{name}");
    }
}

#[test]
fn unsupported_graphs_are_errors_or_fall_back_never_panics() {
    // Rank 9 elementwise, a matmul with 5 batch dimensions: the wgpu backend refuses them at
    // compile (called directly too), the session falls back under Allow and runs them right.
    let shape9 = [1usize, 2, 1, 2, 1, 2, 1, 2, 3];
    let n: usize = shape9.iter().product();
    let x = Tensor::new(&shape9, (0..n).map(|i| i as f32).collect()).expect("x");
    let mut g9 = Graph::new();
    let xi = g9.input("x", shape9, DType::F32);
    let y = g9.unary(UnaryOp::Neg, xi).expect("neg");
    g9.output("y", y).expect("y");
    let a5 = Tensor::new(&[1, 2, 1, 1, 2, 3, 4], vec![0.5f32; 48]).expect("a");
    let b5 = Tensor::new(&[4, 2], vec![0.25f32; 8]).expect("b");
    let mut g5 = Graph::new();
    let ai = g5.input("a", [1, 2, 1, 1, 2, 3, 4], DType::F32);
    let bi = g5.input("b", [4, 2], DType::F32);
    let m = g5.matmul(ai, bi).expect("matmul");
    g5.output("m", m).expect("m");
    // An int → float cast (WGSL's conversion may round either way): never reinterpreted bits.
    let ints = Tensor::new(&[3], vec![16_777_217i32, -5, 7]).expect("ints");
    let mut gc = Graph::new();
    let ii = gc.input("i", [3], DType::I32);
    let f = gc.cast(ii, DType::F32).expect("cast");
    gc.output("f", f).expect("f");
    type Case<'a> = (&'a Graph, Vec<(&'a str, &'a Tensor)>, &'a str);
    let cases: [Case<'_>; 3] = [
        (&g9, vec![("x", &x)], "rank 9"),
        (&g5, vec![("a", &a5), ("b", &b5)], "batch dimensions"),
        (&gc, vec![("i", &ints)], "i32→f32"),
    ];
    for (g, inputs, why) in cases {
        let want = run_on(&Device::reference(), g, &inputs, &[], &[]).expect("reference");
        for device in gpus() {
            let name = device.info().name.clone();
            let e = device
                .backend()
                .compile(g)
                .err()
                .unwrap_or_else(|| panic!("{name}: {why} compiled"));
            assert!(
                matches!(e, Error::Unsupported(_)) && e.to_string().contains(why),
                "{name}: {e}"
            );
            let mut s = Session::new(&device);
            s.set_fallback(FallbackPolicy::Deny);
            assert!(s.compile(g).is_err(), "{name}: Deny refuses {why}");
            s.set_fallback(FallbackPolicy::Allow);
            let p = s.compile(g).expect("falls back");
            assert!(p.placement().fallbacks > 0, "{name}");
            let views: Vec<(&str, polytensor::TensorView<'_>)> =
                inputs.iter().map(|(n, t)| (*n, t.view())).collect();
            let out = s.run(&p, &views, &[]).expect("run");
            assert_eq!(out.into_vec()[0].1, want[0], "{name}: {why}");
        }
    }
}

#[test]
fn a_validation_error_reaches_only_the_run_that_caused_it() {
    let x = Tensor::new(&[5], vec![1f32, 2.0, 3.0, 4.0, 5.0]).expect("x");
    let mut g = Graph::new();
    let xi = g.input("x", [Dim::sym("n", 8)], DType::F32);
    let y = g.unary(UnaryOp::Neg, xi).expect("neg");
    g.output("y", y).expect("y");
    for device in gpus() {
        let name = device.info().name.clone();
        let mut other = Session::new(&device);
        let p = other.compile(&g).expect("compile");
        let e = polytensor::backend::wgpu::validation_error_in_a_run(&device)
            .err()
            .unwrap_or_else(|| panic!("{name}: the invalid run reported nothing"));
        assert!(matches!(e, Error::Device { .. }), "{name}: {e}");
        // Another session on the same device never sees it.
        let out = other.run(&p, &[("x", x.view())], &[]).expect("unaffected");
        assert_eq!(
            out.get("y").expect("y").to_f32_vec(),
            vec![-1.0, -2.0, -3.0, -4.0, -5.0]
        );
    }
}

#[test]
fn lavapipe_subgroup_width_follows_the_environment() {
    // CI's third pass runs lavapipe at LP_NATIVE_VECTOR_WIDTH=128: its subgroups are then 4
    // wide (8 by default), so the kernels run at a width they were not tuned for.
    let want = match std::env::var("LP_NATIVE_VECTOR_WIDTH").as_deref() {
        Ok("128") => "yes, size 4..4",
        Ok(_) => return,
        Err(_) => "yes, size 8..8",
    };
    for device in gpus() {
        let info = device.info();
        if info.api != "Vulkan" || !info.name.contains("llvmpipe") {
            continue;
        }
        let sub = info.details.iter().find(|(k, _)| k == "subgroups");
        assert_eq!(sub.map(|(_, v)| v.as_str()), Some(want), "{}", info.name);
    }
}

#[test]
fn a_failed_readback_unmaps_every_staging_buffer() {
    for device in gpus() {
        let got = polytensor::backend::wgpu::readback_after_a_failed_map(&device)
            .unwrap_or_else(|e| panic!("{}: {e}", device.info().name));
        assert_eq!(got, vec![0u8; 16], "{}", device.info().name);
    }
}
