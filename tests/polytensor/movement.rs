//! Data movement (reshape, permute, slice, concat, gather) × every dtype × every device, bit for
//! bit: inputs are random bit patterns (NaNs with payloads, signalling NaNs, ±Inf, subnormals,
//! any integer), and every device and the f64 reference must store exactly the bits an
//! independent index computation in this file gives. Odd sizes (1, 3, 17, 783), odd innermost
//! dimensions for 16-bit, a concat split inside a 16-bit word, out-of-range gather indices and a
//! gather table over the binding limit.

use half::{bf16, f16};
use polytensor::backend::wgpu::devices_with_binding_limit;
use polytensor::{DType, Device, Dim, Graph, Session, Tensor};

use crate::common::{Rng, devices_under_test, run_on};

/// Random bit patterns of `dtype`, every 7th one a special (signalling and payload NaNs, ±Inf,
/// −0, the smallest subnormal).
fn bits(rng: &mut Rng, shape: &[usize], dtype: DType) -> Tensor {
    let n: usize = shape.iter().product();
    let s32 = [
        0x7f80_0001u32,
        0xffc0_1234,
        0x7f80_0000,
        0xff80_0000,
        0x8000_0000,
        1,
    ];
    let f16s = [0x7c01u16, 0xfe35, 0x7c00, 0xfc00, 0x8000, 1];
    let bf16s = [0x7f81u16, 0xffc3, 0x7f80, 0xff80, 0x8000, 1];
    let mut word = |i: usize| -> u32 {
        let r = rng.next_u64() as u32;
        if i.is_multiple_of(7) {
            let k = (r as usize) % 6;
            match dtype {
                DType::F16 => u32::from(f16s[k]),
                DType::BF16 => u32::from(bf16s[k]),
                _ => s32[k],
            }
        } else {
            r
        }
    };
    let t = match dtype {
        DType::F32 => Tensor::new(shape, (0..n).map(|i| f32::from_bits(word(i))).collect()),
        DType::F16 => Tensor::new(
            shape,
            (0..n).map(|i| f16::from_bits(word(i) as u16)).collect(),
        ),
        DType::BF16 => Tensor::new(
            shape,
            (0..n).map(|i| bf16::from_bits(word(i) as u16)).collect(),
        ),
        DType::U32 => Tensor::new(shape, (0..n).map(word).collect::<Vec<u32>>()),
        DType::I32 => Tensor::new(shape, (0..n).map(|i| word(i) as i32).collect::<Vec<i32>>()),
    };
    t.expect("shape and data agree")
}

fn unflatten(mut l: usize, dims: &[usize]) -> Vec<usize> {
    let mut o = vec![0; dims.len()];
    for d in (0..dims.len()).rev() {
        o[d] = l % dims[d];
        l /= dims[d];
    }
    o
}

fn flatten(o: &[usize], dims: &[usize]) -> usize {
    o.iter().zip(dims).fold(0, |a, (&i, &n)| a * n + i)
}

/// The expected result of a movement op, by bytes: output element at multi-index `o` is element
/// `src(o).1` (a multi-index) of operand `src(o).0`.
fn expect(xs: &[&Tensor], out: &[usize], src: impl Fn(&[usize]) -> (usize, Vec<usize>)) -> Tensor {
    let dtype = xs[0].dtype();
    let es = dtype.size_of();
    let n: usize = out.iter().product();
    let mut bytes = Vec::with_capacity(n * es);
    for l in 0..n {
        let (k, s) = src(&unflatten(l, out));
        let i = flatten(&s, xs[k].shape());
        bytes.extend_from_slice(&xs[k].as_bytes()[i * es..(i + 1) * es]);
    }
    let t = match dtype {
        DType::F32 => Tensor::new(out, bytemuck::pod_collect_to_vec::<u8, f32>(&bytes)),
        DType::F16 => Tensor::new(out, bytemuck::pod_collect_to_vec::<u8, f16>(&bytes)),
        DType::BF16 => Tensor::new(out, bytemuck::pod_collect_to_vec::<u8, bf16>(&bytes)),
        DType::U32 => Tensor::new(out, bytemuck::pod_collect_to_vec::<u8, u32>(&bytes)),
        DType::I32 => Tensor::new(out, bytemuck::pod_collect_to_vec::<u8, i32>(&bytes)),
    };
    t.expect("expected tensor")
}

/// Same shape, dtype and bytes; a failure names the first differing element.
fn assert_bits(what: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    assert_eq!(got.dtype(), want.dtype(), "{what}: dtype");
    let es = want.dtype().size_of();
    let (g, w) = (got.as_bytes(), want.as_bytes());
    if let Some(i) = (0..w.len() / es).find(|&i| g[i * es..(i + 1) * es] != w[i * es..(i + 1) * es])
    {
        panic!(
            "{what}: element {i} of {}: got bytes {:02x?}, expected {:02x?}",
            w.len() / es,
            &g[i * es..(i + 1) * es],
            &w[i * es..(i + 1) * es]
        );
    }
}

/// Runs `g` (one output) on the reference and on every device under test; each must store
/// exactly `want`.
fn check(
    what: &str,
    g: &Graph,
    inputs: &[(&str, &Tensor)],
    weights: &[(&str, &Tensor)],
    bindings: &[(&str, usize)],
    want: &Tensor,
) {
    let mut devices = vec![Device::reference()];
    devices.extend(devices_under_test());
    for device in devices {
        let name = &device.info().name;
        let got = run_on(&device, g, inputs, weights, bindings)
            .unwrap_or_else(|e| panic!("{what} on {name}: {e}"));
        assert_bits(&format!("{what} on {name}"), &got[0], want);
    }
}

#[test]
fn reshape_copies_bits_exactly() {
    let mut rng = Rng::new(160);
    let cases: [(&[usize], &[usize]); 7] = [
        (&[3, 17], &[17, 3]),  // odd innermost → another odd one (16-bit repacks)
        (&[3, 17], &[51]),     // odd → odd, one row
        (&[2, 3, 4], &[6, 4]), // innermost kept
        (&[783], &[27, 29]),   // one row → odd rows
        (&[4, 6], &[3, 8]),    // even → even
        (&[1, 3], &[3, 1]),    // innermost 1
        (&[0, 3], &[3, 0]),    // empty
    ];
    for dtype in DType::ALL {
        for (from, to) in cases {
            let x = bits(&mut rng, from, dtype);
            let mut g = Graph::new();
            let xi = g.input("x", from, dtype);
            let y = g.reshape(xi, to).expect("reshape builds");
            g.output("y", y).expect("output");
            let want = expect(&[&x], to, |o| (0, unflatten(flatten(o, to), from)));
            check(
                &format!("reshape {dtype} {from:?}→{to:?}"),
                &g,
                &[("x", &x)],
                &[],
                &[],
                &want,
            );
        }
    }
}

#[test]
fn permute_copies_bits_exactly() {
    let mut rng = Rng::new(161);
    let cases: [(&[usize], &[usize]); 6] = [
        (&[3, 17], &[1, 0]),
        (&[783, 3], &[1, 0]),
        (&[2, 3, 5], &[2, 0, 1]),
        (&[1, 3, 17, 2], &[1, 0, 2, 3]), // innermost kept: copied as runs on the CPU
        (&[3, 1, 17], &[0, 1, 2]),       // the identity
        (&[2, 1, 3, 1, 2, 1, 3, 3], &[7, 6, 5, 4, 3, 2, 1, 0]), // rank 8
    ];
    for dtype in DType::ALL {
        for (shape, perm) in cases {
            let x = bits(&mut rng, shape, dtype);
            let mut g = Graph::new();
            let xi = g.input("x", shape, dtype);
            let y = g.permute(xi, perm).expect("permute builds");
            g.output("y", y).expect("output");
            let out: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
            let want = expect(&[&x], &out, |o| {
                let mut s = vec![0; o.len()];
                for (d, &p) in perm.iter().enumerate() {
                    s[p] = o[d];
                }
                (0, s)
            });
            check(
                &format!("permute {dtype} {shape:?} by {perm:?}"),
                &g,
                &[("x", &x)],
                &[],
                &[],
                &want,
            );
        }
    }
}

#[test]
fn slice_copies_bits_exactly_with_fixed_and_run_time_lengths() {
    let mut rng = Rng::new(162);
    // (shape, axis, start, len, run-time length bound to `len` with this maximum)
    type Case = (&'static [usize], usize, usize, usize, Option<usize>);
    let cases: [Case; 7] = [
        (&[3, 17], 1, 5, 7, None), // odd start and length inside 16-bit rows
        (&[783], 0, 1, 781, None),
        (&[4, 5, 3], 1, 1, 1, None),
        (&[17, 4], 0, 16, 1, None),
        (&[3, 17], 1, 0, 0, None),    // empty
        (&[10, 3], 0, 2, 5, Some(8)), // a run-time length (5 of at most 8)
        (&[3, 783], 1, 3, 777, Some(780)),
    ];
    for dtype in DType::ALL {
        for (shape, axis, start, len, max) in cases {
            let x = bits(&mut rng, shape, dtype);
            let mut g = Graph::new();
            let xi = g.input("x", shape, dtype);
            let y = match max {
                None => g.slice(xi, axis, start, len),
                Some(m) => g.slice(xi, axis, start, Dim::sym("len", m)),
            }
            .expect("slice builds");
            g.output("y", y).expect("output");
            let mut out = shape.to_vec();
            out[axis] = len;
            let want = expect(&[&x], &out, |o| {
                let mut s = o.to_vec();
                s[axis] += start;
                (0, s)
            });
            let bindings: &[(&str, usize)] = if max.is_some() { &[("len", len)] } else { &[] };
            check(
                &format!("slice {dtype} {shape:?} axis {axis} {start}+{len} (max {max:?})"),
                &g,
                &[("x", &x)],
                &[],
                bindings,
                &want,
            );
        }
    }
}

#[test]
fn concat_copies_bits_exactly() {
    let mut rng = Rng::new(163);
    let cases: [(&[usize], &[usize], usize); 5] = [
        (&[3, 17], &[3, 4], 1), // a 16-bit word holds a's last and b's first element
        (&[1, 3], &[783, 3], 0),
        (&[2, 3, 5], &[2, 1, 5], 1),
        (&[3], &[0], 0),
        (&[1], &[1], 0),
    ];
    for dtype in DType::ALL {
        for (sa, sb, axis) in cases {
            let a = bits(&mut rng, sa, dtype);
            let b = bits(&mut rng, sb, dtype);
            let mut g = Graph::new();
            let (ai, bi) = (g.input("a", sa, dtype), g.input("b", sb, dtype));
            let y = g.concat(&[ai, bi], axis).expect("concat builds");
            g.output("y", y).expect("output");
            let mut out = sa.to_vec();
            out[axis] += sb[axis];
            let want = expect(&[&a, &b], &out, |o| {
                if o[axis] < sa[axis] {
                    (0, o.to_vec())
                } else {
                    let mut s = o.to_vec();
                    s[axis] -= sa[axis];
                    (1, s)
                }
            });
            check(
                &format!("concat {dtype} {sa:?}+{sb:?} axis {axis}"),
                &g,
                &[("a", &a), ("b", &b)],
                &[],
                &[],
                &want,
            );
        }
    }
    // Three operands chain into two concats.
    let parts: Vec<Tensor> = [5usize, 1, 3]
        .iter()
        .map(|&n| bits(&mut rng, &[2, n], DType::BF16))
        .collect();
    let mut g2 = Graph::new();
    let ids: Vec<_> = ["p0", "p1", "p2"]
        .iter()
        .zip(&parts)
        .map(|(n, t)| g2.input(n, t.shape(), DType::BF16))
        .collect();
    let y = g2.concat(&ids, 1).expect("concat of three");
    g2.output("y", y).expect("output");
    let want = expect(&[&parts[0], &parts[1], &parts[2]], &[2, 9], |o| {
        match o[1] {
            c if c < 5 => (0, vec![o[0], c]),
            5 => (1, vec![o[0], 0]),
            c => (2, vec![o[0], c - 6]),
        }
    });
    let inputs: Vec<(&str, &Tensor)> =
        vec![("p0", &parts[0]), ("p1", &parts[1]), ("p2", &parts[2])];
    check(
        "concat of three bf16 [2,5|1|3]",
        &g2,
        &inputs,
        &[],
        &[],
        &want,
    );
}

/// Index data of `dtype` (u32 or i32) with values `v`.
fn indices(shape: &[usize], v: &[i64], dtype: DType) -> Tensor {
    let t = match dtype {
        DType::U32 => Tensor::new(shape, v.iter().map(|&i| i as u32).collect::<Vec<_>>()),
        _ => Tensor::new(shape, v.iter().map(|&i| i as i32).collect::<Vec<_>>()),
    };
    t.expect("indices")
}

/// The expected gather: row `idx[r]` of `table` for each index.
fn gathered(table: &Tensor, idx: &[i64], idx_shape: &[usize]) -> Tensor {
    let mut out = idx_shape.to_vec();
    out.push(table.shape()[1]);
    let r = idx_shape.len();
    expect(&[table], &out, |o| {
        let row = idx[flatten(&o[..r], idx_shape)] as usize;
        (0, vec![row, o[r]])
    })
}

#[test]
fn gather_copies_rows_exactly_for_u32_and_i32_indices() {
    let mut rng = Rng::new(164);
    // (table [V, D], index shape): odd D (16-bit rows with a pad element), D = 1, 783 indices.
    let cases: [(&[usize], &[usize]); 4] = [
        (&[17, 5], &[3, 4]),
        (&[50, 1], &[783]),
        (&[1, 3], &[2, 1, 3]),
        (&[3, 783], &[5]),
    ];
    for dtype in DType::ALL {
        for (ts, is) in cases {
            for idx_dtype in [DType::U32, DType::I32] {
                let table = bits(&mut rng, ts, dtype);
                let n: usize = is.iter().product();
                let v: Vec<i64> = (0..n)
                    .map(|i| match i {
                        0 => ts[0] as i64 - 1,
                        1 => 0,
                        _ => (rng.next_u64() % ts[0] as u64) as i64,
                    })
                    .collect();
                let idx = indices(is, &v, idx_dtype);
                let want = gathered(&table, &v, is);
                // The table as an input and as a weight (bound like an embedding table).
                for as_weight in [false, true] {
                    let mut g = Graph::new();
                    let t = if as_weight {
                        g.weight("table", ts, dtype)
                    } else {
                        g.input("table", ts, dtype)
                    };
                    let ii = g.input("idx", is, idx_dtype);
                    let y = g.gather(t, ii).expect("gather builds");
                    g.output("y", y).expect("output");
                    let what =
                        format!("gather {dtype} {ts:?} by {idx_dtype}{is:?} weight {as_weight}");
                    if as_weight {
                        check(
                            &what,
                            &g,
                            &[("idx", &idx)],
                            &[("table", &table)],
                            &[],
                            &want,
                        );
                    } else {
                        check(
                            &what,
                            &g,
                            &[("table", &table), ("idx", &idx)],
                            &[],
                            &[],
                            &want,
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn gather_with_an_out_of_range_host_index_is_an_error() {
    let table = Tensor::new(&[17, 3], vec![1.0f32; 51]).expect("table");
    for (dtype, bad) in [(DType::U32, 17i64), (DType::I32, -1), (DType::I32, 1 << 20)] {
        let idx = indices(&[4], &[0, 16, bad, 2], dtype);
        let mut g = Graph::new();
        let t = g.weight("table", [17, 3], DType::F32);
        let ii = g.input("idx", [4], dtype);
        let y = g.gather(t, ii).expect("gather builds");
        g.output("y", y).expect("output");
        let mut devices = vec![Device::reference()];
        devices.extend(devices_under_test());
        for device in devices {
            let name = &device.info().name;
            let e = run_on(&device, &g, &[("idx", &idx)], &[("table", &table)], &[])
                .err()
                .unwrap_or_else(|| panic!("{name}: index {bad} into 17 rows must fail"));
            let msg = e.to_string();
            assert!(
                msg.contains("gather")
                    && msg.contains(&format!("index {bad}"))
                    && msg.contains("17 rows"),
                "{name}: {msg}"
            );
        }
    }
}

#[test]
fn gather_indices_computed_on_the_device_never_read_out_of_bounds() {
    // Indices that are not host inputs (here a weight) are not checked before the run: the CPU
    // returns an `Err` when it meets one, a GPU kernel writes that row as zeros.
    let mut rng = Rng::new(165);
    let table = bits(&mut rng, &[6, 3], DType::BF16);
    let idx = indices(&[4], &[5, 6, -1, 0], DType::I32);
    let mut g = Graph::new();
    let t = g.input("table", [6, 3], DType::BF16);
    let ii = g.weight("idx", [4], DType::I32);
    let y = g.gather(t, ii).expect("gather builds");
    g.output("y", y).expect("output");
    let rows = gathered(&table, &[5, 0, 0, 0], &[4]);
    let zero = bf16::from_bits(0);
    let want_vals: Vec<bf16> = rows
        .as_slice::<bf16>()
        .expect("bf16")
        .iter()
        .enumerate()
        .map(|(i, &v)| if (3..9).contains(&i) { zero } else { v })
        .collect();
    let want = Tensor::new(&[4, 3], want_vals).expect("want");
    for device in devices_under_test() {
        let name = device.info().name.clone();
        let got = run_on(&device, &g, &[("table", &table)], &[("idx", &idx)], &[]);
        if device.info().backend == "wgpu" {
            assert_bits(
                &format!("device-side bad indices on {name}"),
                &got.expect("run")[0],
                &want,
            );
        } else {
            let e = got.err().unwrap_or_else(|| panic!("{name}: must fail"));
            assert!(
                e.to_string().contains("outside the table's 6 rows"),
                "{name}: {e}"
            );
        }
    }
}

#[test]
fn gather_table_over_the_binding_limit_is_split_over_bindings() {
    // A 16 KiB binding limit: tables of 34 000 to 40 000 bytes are bound in row ranges, one
    // launch per range, each writing only the rows its range holds; no CPU fallback.
    let limit = 16 * 1024;
    let mut rng = Rng::new(166);
    for (dtype, v, d) in [
        (DType::F32, 625usize, 16usize),
        (DType::BF16, 500, 33),
        (DType::U32, 313, 32),
    ] {
        let table = bits(&mut rng, &[v, d], dtype);
        let n = 101;
        let vals: Vec<i64> = (0..n)
            .map(|i| match i {
                0 => v as i64 - 1,
                1 => 0,
                _ => (rng.next_u64() % v as u64) as i64,
            })
            .collect();
        let idx = indices(&[n], &vals, DType::U32);
        let want = gathered(&table, &vals, &[n]);
        let mut g = Graph::new();
        let t = g.weight("table", [v, d], dtype);
        let ii = g.input("idx", [n], DType::U32);
        let y = g.gather(t, ii).expect("gather builds");
        g.output("y", y).expect("output");
        let small = devices_with_binding_limit(limit);
        for device in small {
            let name = device.info().name.clone();
            let mut s = Session::new(&device);
            s.set_fallback(polytensor::FallbackPolicy::Deny);
            s.load_weight("table", table.view(), dtype).expect("weight");
            let p = s
                .compile(&g)
                .unwrap_or_else(|e| panic!("{name}: split, not refused: {e}"));
            assert_eq!(p.placement().fallbacks, 0, "{name}");
            let out = s.run(&p, &[("idx", idx.view())], &[]).expect("run");
            assert_bits(
                &format!("split gather {dtype} on {name}"),
                out.get("y").expect("y"),
                &want,
            );
            let launches = s.last_run_stats().launches;
            let gathers = launches
                .iter()
                .filter(|l| &*l.kernel == "movement/gather")
                .count();
            assert!(
                gathers >= 3,
                "{name}: {gathers} gather launches: {launches:?}"
            );
        }
    }
}

#[test]
fn movement_chains_share_or_copy_storage_correctly() {
    // reshape of a borrowed input, of a value read again later (copied) and of a value at its
    // last use (moved), with a permute, a slice and a concat between.
    let mut rng = Rng::new(167);
    for dtype in [DType::F16, DType::I32] {
        let x = bits(&mut rng, &[3, 17], dtype);
        let mut g = Graph::new();
        let xi = g.input("x", [3, 17], dtype);
        let r0 = g.reshape(xi, [17, 3]).expect("reshape");
        let p = g.permute(r0, &[1, 0]).expect("permute");
        let r1 = g.reshape(p, [51]).expect("reshape");
        let s = g.slice(p, 1, 2, 15).expect("slice");
        let r2 = g.reshape(s, [45]).expect("reshape");
        let c = g.concat(&[r1, r2], 0).expect("concat");
        g.output("y", c).expect("output");
        let r0v = expect(&[&x], &[17, 3], |o| {
            (0, unflatten(flatten(o, &[17, 3]), &[3, 17]))
        });
        let pv = expect(&[&r0v], &[3, 17], |o| (0, vec![o[1], o[0]]));
        let want = expect(&[&pv], &[96], |o| {
            if o[0] < 51 {
                (0, unflatten(o[0], &[3, 17]))
            } else {
                let k = o[0] - 51;
                (0, vec![k / 15, k % 15 + 2])
            }
        });
        check(&format!("chain {dtype}"), &g, &[("x", &x)], &[], &[], &want);
    }
}

#[test]
fn movement_builders_reject_bad_shapes_naming_op_and_shapes() {
    let mut g = Graph::new();
    let x = g.input("x", [3, 17], DType::F32);
    let s = g.input("s", [Dim::sym("seq", 8), Dim::Fixed(4)], DType::F32);
    let y = g.input("y", [4, 17], DType::F16);
    let t = g.input("t", [10], DType::F32);
    let i = g.input("i", [2], DType::F32);
    let iu = g.input("iu", [2], DType::U32);
    let cases = [
        (g.reshape(x, [50]).err(), "element counts 51 and 50"),
        (
            g.reshape(s, [Dim::Fixed(4), Dim::sym("seq", 8)]).err(),
            "equal products",
        ),
        (
            g.reshape(s, [Dim::sym("other", 8), Dim::Fixed(4)]).err(),
            "same symbolic",
        ),
        (g.permute(x, &[0, 0]).err(), "not a permutation"),
        (g.permute(x, &[0]).err(), "not a permutation"),
        (g.slice(x, 1, 10, 8).err(), "exceed its size 17"),
        (g.slice(x, 2, 0, 1).err(), "axis 2 out of range"),
        (g.slice(s, 0, 0, 1).err(), "symbolic"),
        (g.concat(&[x, y], 0).err(), "dtype mismatch"),
        (g.concat(&[x], 0).err(), "at least two"),
        (g.gather(t, x).err(), "indices must be u32 or i32"),
        (g.gather(t, i).err(), "indices must be u32 or i32"),
        (g.gather(t, iu).err(), "the table must be [V, D]"),
    ];
    for (e, want) in cases {
        let e = e.unwrap_or_else(|| panic!("`{want}`: built"));
        assert!(e.to_string().contains(want), "got `{e}`, want `{want}`");
    }
    // A symbol passes through where the layout is provably the same for every binding.
    let ok = g.reshape(s, [Dim::sym("seq", 8), Dim::Fixed(2), Dim::Fixed(2)]);
    assert!(ok.is_ok(), "{ok:?}");
    let idx = g.input("idx", [5], DType::U32);
    let e = g.gather(x, idx).expect("gather [3,17] by [5]");
    assert_eq!(g.nodes()[e.0].shape.to_string(), "[5,17]");
    let e = g
        .reshape(x, [Dim::sym("seq", 8)])
        .expect_err("fixed → symbolic");
    assert!(
        e.to_string().contains("reshape") && e.to_string().contains("[3,17]"),
        "{e}"
    );
}
