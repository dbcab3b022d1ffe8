//! Persistent state and symbolic dimensions: accumulate across runs, share state between two
//! programs, KV-cache style writes at a run-time offset, and one compiled program run at several
//! bound lengths; a KV-cache append costs what it writes (statistics), and state values alias the
//! state unless a later write of it follows.

use polytensor::{DType, Device, Dim, Error, Graph, Offset, ReduceOp, RunStats, Session, Tensor};

use crate::common::{Rng, assert_close, devices_under_test, random, run_on};

fn all_devices() -> Vec<Device> {
    let mut v = devices_under_test();
    v.push(Device::reference());
    v
}

fn accumulate_graph() -> Graph {
    let mut g = Graph::new();
    let s = g.state("acc", [3, 5], DType::F32);
    let x = g.input("x", [3, 5], DType::F32);
    let y = g.add(s, x).expect("add");
    g.write_state("acc", y, 0, Offset::Fixed(0)).expect("write");
    g
}

#[test]
fn state_accumulates_across_runs_and_is_shared_by_programs() {
    for device in all_devices() {
        let mut s = Session::new(&device);
        s.create_state("acc", &[3, 5], DType::F32).expect("state");
        let add = s.compile(&accumulate_graph()).expect("compile add");
        let mut rng = Rng::new(20);
        let mut sum = vec![0f32; 15];
        for _ in 0..3 {
            let x = rng.vec(15, -1.0, 1.0);
            for (a, b) in sum.iter_mut().zip(&x) {
                *a += b;
            }
            let x = Tensor::new(&[3, 5], x).expect("x");
            s.run(&add, &[("x", x.view())], &[]).expect("run");
        }
        assert_eq!(
            s.read_state("acc").expect("read").to_f32_vec(),
            sum,
            "{:?}",
            device
        );
        // A second program in the same session reads (and doubles) the same state.
        let mut g = Graph::new();
        let st = g.state("acc", [3, 5], DType::F32);
        let two = g.constant(&[2.0], [1], DType::F32).expect("const");
        let d = g.mul(st, two).expect("mul");
        g.write_state("acc", d, 0, Offset::Fixed(0)).expect("write");
        g.output("before", st).expect("out");
        let double = s.compile(&g).expect("compile double");
        let out = s.run(&double, &[], &[]).expect("run double");
        assert_eq!(out.get("before").expect("out").to_f32_vec(), sum);
        let doubled: Vec<f32> = sum.iter().map(|v| v * 2.0).collect();
        assert_eq!(s.read_state("acc").expect("read").to_f32_vec(), doubled);
        // And the first program keeps accumulating on top.
        let ones = Tensor::new(&[3, 5], vec![1f32; 15]).expect("ones");
        s.run(&add, &[("x", ones.view())], &[]).expect("run");
        let want: Vec<f32> = doubled.iter().map(|v| v + 1.0).collect();
        assert_eq!(s.read_state("acc").expect("read").to_f32_vec(), want);
    }
}

#[test]
fn kv_cache_style_writes_at_a_run_time_offset() {
    // cache [heads=2, max_seq=8, dim=3]; each run appends `len` rows at position `pos`.
    let mut g = Graph::new();
    let _cache = g.state("kv", [2, 8, 3], DType::BF16);
    let x = g.input(
        "x",
        [Dim::Fixed(2), Dim::sym("len", 8), Dim::Fixed(3)],
        DType::BF16,
    );
    let w = g
        .write_state("kv", x, 1, Offset::Sym("pos".into()))
        .expect("write");
    g.output("cache", w).expect("out");
    for device in all_devices() {
        let mut s = Session::new(&device);
        s.create_state("kv", &[2, 8, 3], DType::BF16)
            .expect("state");
        let p = s.compile(&g).expect("compile");
        let mut want = vec![0f32; 48];
        let mut pos = 0;
        for (len, base) in [(3usize, 1.0f32), (1, 10.0), (4, 20.0)] {
            let data: Vec<f32> = (0..2 * len * 3).map(|i| base + i as f32).collect();
            for h in 0..2 {
                for r in 0..len {
                    for c in 0..3 {
                        want[(h * 8 + pos + r) * 3 + c] = data[(h * len + r) * 3 + c];
                    }
                }
            }
            let x = Tensor::from_f32(&[2, len, 3], data, DType::BF16).expect("x");
            let out = s.run(&p, &[("x", x.view())], &[("pos", pos)]).expect("run");
            assert_eq!(out.get("cache").expect("cache").to_f32_vec(), want);
            pos += len;
        }
        // One more row at position 8 would overflow the cache: a clear Err, state untouched.
        let x = Tensor::from_f32(&[2, 1, 3], vec![0.0; 6], DType::BF16).expect("x");
        let err = s
            .run(&p, &[("x", x.view())], &[("pos", 8)])
            .expect_err("overflow");
        assert!(
            matches!(
                err,
                Error::StateWriteOutOfRange {
                    offset: 8,
                    len: 1,
                    size: 8,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(s.read_state("kv").expect("read").to_f32_vec(), want);
    }
}

#[test]
fn one_program_runs_at_several_bound_lengths() {
    let mut g = Graph::new();
    let x = g.input("x", [Dim::sym("seq", 64), Dim::Fixed(16)], DType::F32);
    let w = g.weight("w", [16, 8], DType::F32);
    let b = g.input("b", [1, 8], DType::F32);
    let y = g.matmul(x, w).expect("matmul");
    let y = g.add(y, b).expect("add");
    g.output("y", y).expect("out");
    let mut rng = Rng::new(21);
    let wt = random(&mut rng, &[16, 8], DType::F32, -1.0, 1.0);
    let bt = random(&mut rng, &[1, 8], DType::F32, -1.0, 1.0);
    for device in devices_under_test() {
        let name = device.info().name.clone();
        let mut s = Session::new(&device);
        s.set_fallback(polytensor::FallbackPolicy::Deny);
        s.load_weight("w", wt.view(), DType::F32).expect("weight");
        let p = s.compile(&g).expect("compile once");
        for seq in [1usize, 3, 17, 64] {
            let xt = random(&mut rng, &[seq, 16], DType::F32, -1.0, 1.0);
            let out = s
                .run(&p, &[("x", xt.view()), ("b", bt.view())], &[])
                .expect("run");
            let want = run_on(
                &Device::reference(),
                &g,
                &[("x", &xt), ("b", &bt)],
                &[("w", &wt)],
                &[],
            )
            .expect("reference");
            assert_eq!(out.get("y").expect("y").shape(), &[seq, 8]);
            assert_close(
                &format!("seq={seq} on {name}"),
                out.get("y").expect("y"),
                &want[0],
                1e-5,
                1e-5,
            );
        }
        let xt = random(&mut rng, &[65, 16], DType::F32, -1.0, 1.0);
        let err = s
            .run(&p, &[("x", xt.view()), ("b", bt.view())], &[])
            .expect_err("over max");
        assert!(
            matches!(
                err,
                Error::DimOverMax {
                    value: 65,
                    max: 64,
                    ..
                }
            ),
            "{err}"
        );
    }
}

/// Runs three KV-cache appends of [1, 4, 8] into a [1, 1024, 8] f32 state on `device`; returns
/// each run's outputs and statistics, and the final state.
fn kv_appends(
    device: &Device,
    g: &Graph,
    xs: &[Tensor],
) -> (Vec<Vec<Tensor>>, Vec<RunStats>, Tensor) {
    let mut s = Session::new(device);
    s.create_state("kv", &[1, 1024, 8], DType::F32)
        .expect("state");
    let p = s.compile(g).expect("compile");
    let (mut outs, mut stats) = (Vec::new(), Vec::new());
    for (k, x) in xs.iter().enumerate() {
        let out = s
            .run(&p, &[("x", x.view())], &[("pos", 4 * k)])
            .expect("append");
        outs.push(out.into_vec().into_iter().map(|(_, t)| t).collect());
        stats.push(s.last_run_stats());
    }
    (outs, stats, s.read_state("kv").expect("read"))
}

#[test]
fn kv_append_costs_what_it_writes_and_aliases_the_cache() {
    // Small integers: every sum is exact, so the fast path must equal the reference exactly.
    let mut rng = Rng::new(22);
    let xs: Vec<Tensor> = (0..3)
        .map(|_| {
            let v = (0..32)
                .map(|_| (rng.next_u64() % 17) as f32 - 8.0)
                .collect();
            Tensor::new(&[1, 4, 8], v).expect("x")
        })
        .collect();
    for reads in [false, true] {
        let mut g = Graph::new();
        g.state("kv", [1, 1024, 8], DType::F32);
        let x = g.input("x", [1, 4, 8], DType::F32);
        let w = g
            .write_state("kv", x, 1, Offset::Sym("pos".into()))
            .expect("write");
        if reads {
            // The value after the write, read by a sum over the cache rows.
            let sum = g.reduce(ReduceOp::Sum, w, 1).expect("sum");
            g.output("sum", sum).expect("out");
        }
        let (want, ref_stats, want_state) = kv_appends(&Device::reference(), &g, &xs);
        let (got, stats, state) = kv_appends(&Device::cpu(), &g, &xs);
        assert_eq!(state, want_state, "reads={reads}: the cache");
        assert_eq!(got, want, "reads={reads}: the outputs");
        for (k, (st, rs)) in stats.iter().zip(&ref_stats).enumerate() {
            assert_eq!(
                st.state_elements_written, 32,
                "reads={reads} run {k}: O(written) {st:?}"
            );
            assert_eq!(
                st.bytes_copied, 0,
                "reads={reads} run {k}: no copy of the cache {st:?}"
            );
            assert_eq!(rs.state_elements_written, 32, "reference run {k}");
        }
        // The cache holds the three appends at rows 0..12, zeros after.
        let cache = state.to_f32_vec();
        for (k, x) in xs.iter().enumerate() {
            assert_eq!(&cache[32 * k..32 * (k + 1)], x.to_f32_vec().as_slice());
        }
        assert!(cache[96..].iter().all(|&v| v == 0.0));
    }
}

#[test]
fn state_reads_before_a_later_write_are_snapshots_after_it_aliases() {
    // read → write → read → write → read of one state in one run: the first two reads see the
    // state as it was at their position (snapshots), the last aliases the cache; no read lock
    // of the run may block its own writes.
    let mut g = Graph::new();
    let r0 = g.state("kv", [2, 8], DType::F32);
    let x = g.input("x", [2, 2], DType::F32);
    let w1 = g.write_state("kv", x, 1, Offset::Fixed(0)).expect("w1");
    let r1 = g.state("kv", [2, 8], DType::F32);
    let two = g.constant(&[2.0], [1], DType::F32).expect("2");
    let x2 = g.mul(x, two).expect("2x");
    let w2 = g.write_state("kv", x2, 1, Offset::Fixed(2)).expect("w2");
    let r2 = g.state("kv", [2, 8], DType::F32);
    for (name, id) in [("r0", r0), ("w1", w1), ("r1", r1), ("w2", w2), ("r2", r2)] {
        g.output(name, id).expect("out");
    }
    let xt = Tensor::new(&[2, 2], vec![1f32, 2.0, 3.0, 4.0]).expect("x");
    let start = Tensor::new(&[2, 8], (0..16).map(|v| -(v as f32)).collect()).expect("start");
    let mut outs = Vec::new();
    for device in [Device::cpu(), Device::reference()] {
        let mut s = Session::new(&device);
        s.set_state("kv", start.view()).expect("state");
        let p = s.compile(&g).expect("compile");
        let out = s.run(&p, &[("x", xt.view())], &[]).expect("run");
        let stats = s.last_run_stats();
        assert_eq!(stats.state_elements_written, 8, "{stats:?}");
        if device.info().name == Device::cpu().info().name {
            // r0 and r1 (and w1, which w2 follows) are snapshots; w2 and r2 alias.
            assert_eq!(stats.bytes_copied, 3 * 16 * 4, "{stats:?}");
        }
        outs.push(out.into_vec());
    }
    let mut after1 = start.to_f32_vec();
    for (r, c) in [(0usize, 0usize), (0, 1), (1, 0), (1, 1)] {
        after1[r * 8 + c] = xt.to_f32_vec()[r * 2 + c];
    }
    let mut after2 = after1.clone();
    for (r, c) in [(0usize, 0usize), (0, 1), (1, 0), (1, 1)] {
        after2[r * 8 + 2 + c] = 2.0 * xt.to_f32_vec()[r * 2 + c];
    }
    let want = [
        start.to_f32_vec(),
        after1.clone(),
        after1,
        after2.clone(),
        after2,
    ];
    for out in &outs {
        for ((name, t), w) in out.iter().zip(&want) {
            assert_eq!(&t.to_f32_vec(), w, "{name}");
        }
    }
}
