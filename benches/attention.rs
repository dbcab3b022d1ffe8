//! CPU attention through `Session::run` next to its peers in the same run:
//!
//! - causal 1×8×512×64: our fused kernel in f32 and in bf16 (q, K, V and output stored bf16),
//!   two direct `gemm` calls per head on the full QKᵀ [512×64]×[64×512] and PV [512×512]×[512×64]
//!   products (8 heads over the threads), and our composed graph (matmul, scale, additive causal
//!   mask from a constant, softmax, matmul). Goals (issue 16): fused f32 ≤ 0.75× the two gemm
//!   calls; bf16 ≤ 1.3× our f32. GFLOP/s are effective, over the unmasked half (269 MFLOP).
//! - decode: 1 query row against a 2048-token cache, 9 query heads over 3 KV heads, D = 64,
//!   cycling over 30 distinct caches (≈ 94 MB f32, so they cannot sit in L3), each K and V byte
//!   counted once; next to a plain multi-threaded copy of the same bytes. Goal: ≥ 50 % of the
//!   copy's bandwidth.
//! - KV append: one token ([1, 8, 1, 64] into K and into V, f32) written at a run-time position
//!   that advances every step, into a cache of 2 × 64 MiB (32768 positions) and into one of
//!   2 × 32 KiB (16 positions), on the CPU and on every wgpu adapter, through `Session::run`.
//!   Goal (issue 16): the two cost the same within noise, and the run statistics' elements
//!   written to states are the same (1024) for both.
//!
//! Run: `cargo bench --bench attention` (prints a summary table at the end; the % of peak uses
//! `POLYTENSOR_PEAK_GFLOPS`, default 204.6 — PEERS.md's 2-core figure); `-- kv_append` for the
//! KV append rows only.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use polytensor::bench::problems::{Problem, data};
use polytensor::{DType, Device, FallbackPolicy, Graph, Offset, Session, Tensor};
use rayon::prelude::*;

const H: usize = 8;
const S: usize = 512;
const D: usize = 64;
/// Decode: query heads, KV heads, cache length, caches cycled over.
const DEC_HQ: usize = 9;
const DEC_HKV: usize = 3;
const DEC_LEN: usize = 2048;
const DEC_CACHES: usize = 30;
/// KV append: key/value heads and head dim of the appended token; positions of the big cache
/// (2 × 64 MiB in f32) and of the small one (2 × 32 KiB).
const KV_HKV: usize = 8;
const KV_D: usize = 64;
const KV_BIG: usize = 32768;
const KV_SMALL: usize = 16;
const KV_GROUP: &str = "kv_append_1token_8x64";

/// The causal prefill problem `polytensor bench` measures: 1×8×512×64.
const CAUSAL: Problem = Problem::Attention {
    heads: H,
    kv_heads: H,
    q_len: S,
    kv_len: S,
    d: D,
};

/// Effective FLOPs of causal attention over the unmasked half: 2 products × 2 FLOP per
/// multiply-add × D × Σ_i (i + 1) visible keys × heads.
fn causal_flops() -> f64 {
    CAUSAL.flops()
}

fn fused_graph(dtype: DType) -> Graph {
    CAUSAL.graph(dtype).expect("attention")
}

fn composed_graph() -> Graph {
    let mut g = Graph::new();
    let q = g.input("q", [1, H, S, D], DType::F32);
    let k = g.input("k", [1, H, S, D], DType::F32);
    let v = g.input("v", [1, H, S, D], DType::F32);
    let s = g.matmul_t(q, k, false, true).expect("qk");
    let scale = g
        .constant(&[1.0 / (D as f64).sqrt()], [1], DType::F32)
        .expect("scale");
    let s = g.mul(s, scale).expect("scale");
    let mask: Vec<f64> = (0..S * S)
        .map(|x| if x % S > x / S { -1e30 } else { 0.0 })
        .collect();
    let m = g.constant(&mask, [S, S], DType::F32).expect("mask");
    let s = g.add(s, m).expect("mask");
    let p = g.softmax(s).expect("softmax");
    let o = g.matmul(p, v).expect("pv");
    g.output("out", o).expect("output");
    g
}

/// `dst (m×n) = a (m×k, row stride rs_a, col stride cs_a) · b (k×n, strides rs_b, cs_b)`,
/// one thread.
#[allow(clippy::too_many_arguments)]
fn gemm1(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    a: &[f32],
    (rs_a, cs_a): (isize, isize),
    b: &[f32],
    (rs_b, cs_b): (isize, isize),
) {
    assert!(dst.len() >= m * n && a.len() >= m * k && b.len() >= k * n);
    // SAFETY: the buffers hold the m×k, k×n and m×n (row-major) matrices the strides describe.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            cs_a,
            rs_a,
            b.as_ptr(),
            cs_b,
            rs_b,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

fn bench_causal(c: &mut Criterion) {
    let mut group = c.benchmark_group("attention_causal_1x8x512x64");
    group.throughput(Throughput::Elements(causal_flops() as u64));
    group.sample_size(20);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(3));
    let n = H * S * D;
    let (q, k, v) = (data(n, 1), data(n, 2), data(n, 3));
    // Two gemm calls per head on the full products, the heads spread over the threads.
    let mut scores = vec![0f32; H * S * S];
    let mut out = vec![0f32; n];
    group.bench_function(BenchmarkId::new("gemm_direct", "qk+pv"), |bch| {
        bch.iter(|| {
            scores
                .par_chunks_mut(S * S)
                .zip(out.par_chunks_mut(S * D))
                .enumerate()
                .for_each(|(h, (sc, o))| {
                    let (qh, kh, vh) = (
                        &q[h * S * D..(h + 1) * S * D],
                        &k[h * S * D..(h + 1) * S * D],
                        &v[h * S * D..(h + 1) * S * D],
                    );
                    // S = Q·Kᵀ: Kᵀ is K read with swapped strides.
                    gemm1(S, S, D, sc, qh, (D as isize, 1), kh, (1, D as isize));
                    gemm1(S, D, S, o, sc, (S as isize, 1), vh, (D as isize, 1));
                })
        })
    });
    for (label, dtype) in [("f32", DType::F32), ("bf16", DType::BF16)] {
        let t = |x: &[f32]| Tensor::from_f32(&[1, H, S, D], x.to_vec(), dtype).expect("tensor");
        let (qt, kt, vt) = (t(&q), t(&k), t(&v));
        let mut s = Session::new(&Device::cpu());
        let p = s.compile(&fused_graph(dtype)).expect("compile");
        let inputs = [("q", qt.view()), ("k", kt.view()), ("v", vt.view())];
        group.bench_function(BenchmarkId::new("polytensor_fused", label), |bch| {
            bch.iter(|| s.run(&p, &inputs, &[]).expect("run"))
        });
    }
    {
        let t = |x: &[f32]| Tensor::new(&[1, H, S, D], x.to_vec()).expect("tensor");
        let (qt, kt, vt) = (t(&q), t(&k), t(&v));
        let mut s = Session::new(&Device::cpu());
        let p = s.compile(&composed_graph()).expect("compile");
        let inputs = [("q", qt.view()), ("k", kt.view()), ("v", vt.view())];
        group.bench_function(BenchmarkId::new("polytensor_composed", "f32"), |bch| {
            bch.iter(|| s.run(&p, &inputs, &[]).expect("run"))
        });
    }
    group.finish();
}

/// K and V bytes one decode step reads.
fn decode_bytes() -> usize {
    2 * DEC_HKV * DEC_LEN * D * 4
}

fn bench_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("attention_decode_9x3x2048x64");
    group.throughput(Throughput::Bytes(decode_bytes() as u64));
    group.sample_size(30);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(3));
    let kv = DEC_HKV * DEC_LEN * D;
    let caches: Vec<(Tensor, Tensor)> = (0..DEC_CACHES)
        .map(|i| {
            let t = |seed| Tensor::new(&[1, DEC_HKV, DEC_LEN, D], data(kv, seed)).expect("cache");
            (t(10 + 2 * i as u32), t(11 + 2 * i as u32))
        })
        .collect();
    let q = Tensor::new(&[1, DEC_HQ, 1, D], data(DEC_HQ * D, 5)).expect("q");
    let mut g = Graph::new();
    let qi = g.input("q", [1, DEC_HQ, 1, D], DType::F32);
    let ki = g.input("k", [1, DEC_HKV, DEC_LEN, D], DType::F32);
    let vi = g.input("v", [1, DEC_HKV, DEC_LEN, D], DType::F32);
    let a = g
        .attention(qi, ki, vi, None, 1.0 / (D as f64).sqrt(), false, None)
        .expect("attention");
    g.output("out", a).expect("output");
    let mut s = Session::new(&Device::cpu());
    let p = s.compile(&g).expect("compile");
    let mut i = 0;
    group.bench_function(BenchmarkId::new("polytensor_fused", "f32"), |bch| {
        bch.iter(|| {
            i = (i + 1) % DEC_CACHES;
            let (k, v) = &caches[i];
            s.run(
                &p,
                &[("q", q.view()), ("k", k.view()), ("v", v.view())],
                &[],
            )
            .expect("run")
        })
    });
    // The same step on one cache over and over (cache-resident: compute and overheads only).
    group.bench_function(
        BenchmarkId::new("polytensor_fused", "f32_one_cache"),
        |bch| {
            let (k, v) = &caches[0];
            bch.iter(|| {
                s.run(
                    &p,
                    &[("q", q.view()), ("k", k.view()), ("v", v.view())],
                    &[],
                )
                .expect("run")
            })
        },
    );
    // A plain copy of the same K and V bytes (over the threads) into one destination.
    let mut dst = vec![0f32; 2 * kv];
    let mut j = 0;
    group.bench_function(BenchmarkId::new("plain_copy", "f32"), |bch| {
        bch.iter(|| {
            j = (j + 1) % DEC_CACHES;
            let (k, v) = &caches[j];
            let (ks, vs) = (
                k.as_slice::<f32>().expect("f32"),
                v.as_slice::<f32>().expect("f32"),
            );
            let (dk, dv) = dst.split_at_mut(kv);
            const CH: usize = 1 << 15;
            dk.par_chunks_mut(CH)
                .zip(ks.par_chunks(CH))
                .chain(dv.par_chunks_mut(CH).zip(vs.par_chunks(CH)))
                .for_each(|(d, s)| d.copy_from_slice(s));
        })
    });
    group.finish();
}

/// One device's KV append rows: its label in the criterion ids, its name, and the elements
/// written to states by one step into the big and the small cache (`None`: it could not run).
struct KvRow {
    label: String,
    name: String,
    written: [Option<u64>; 2],
}

/// A 1-token append into K and V states of `len` positions at the run-time position `pos`.
fn kv_append_graph(len: usize) -> Graph {
    let mut g = Graph::new();
    for (state, input) in [("k", "xk"), ("v", "xv")] {
        g.state(state, [1, KV_HKV, len, KV_D], DType::F32);
        let x = g.input(input, [1, KV_HKV, 1, KV_D], DType::F32);
        g.write_state(state, x, 2, Offset::Sym("pos".into()))
            .expect("write");
    }
    g
}

/// A session on `device` with K and V caches of `len` positions and the append compiled.
fn kv_append_session(
    device: &Device,
    len: usize,
) -> polytensor::Result<(Session, polytensor::Compiled)> {
    let mut s = Session::new(device);
    s.set_fallback(FallbackPolicy::Deny);
    for name in ["k", "v"] {
        s.create_state(name, &[1, KV_HKV, len, KV_D], DType::F32)?;
    }
    let p = s.compile(&kv_append_graph(len))?;
    Ok((s, p))
}

fn bench_kv_append(c: &mut Criterion) -> Vec<KvRow> {
    let mut group = c.benchmark_group(KV_GROUP);
    group.sample_size(30);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    let xk = Tensor::new(&[1, KV_HKV, 1, KV_D], data(KV_HKV * KV_D, 20)).expect("xk");
    let xv = Tensor::new(&[1, KV_HKV, 1, KV_D], data(KV_HKV * KV_D, 21)).expect("xv");
    let mut rows = Vec::new();
    for (i, device) in Device::list().into_iter().enumerate() {
        let info = device.info();
        let label = if info.backend == "wgpu" {
            format!("wgpu{i}_{}", info.api.to_lowercase())
        } else {
            info.backend.clone()
        };
        let mut row = KvRow {
            label: label.clone(),
            name: info.name.clone(),
            written: [None, None],
        };
        for (k, (size, len)) in [("big", KV_BIG), ("small", KV_SMALL)]
            .into_iter()
            .enumerate()
        {
            let (mut s, p) = match kv_append_session(&device, len) {
                Ok(sp) => sp,
                Err(e) => {
                    eprintln!("kv append {size} on {}: {e}", info.name);
                    continue;
                }
            };
            // The position advances one row per step and wraps: a decode walking the cache.
            let mut pos = 0;
            let mut step = |s: &mut Session| {
                pos = (pos + 1) % len;
                s.run(&p, &[("xk", xk.view()), ("xv", xv.view())], &[("pos", pos)])
                    .expect("append")
            };
            group.bench_function(BenchmarkId::new(&label, size), |bch| {
                bch.iter(|| step(&mut s))
            });
            step(&mut s);
            row.written[k] = Some(s.last_run_stats().state_elements_written);
        }
        rows.push(row);
    }
    group.finish();
    rows
}

/// The median time in ns of one benchmark, from criterion's saved estimates.
fn median_ns(group: &str, id: &str) -> Option<f64> {
    polytensor::bench::report::criterion_median_ns(&format!("{group}/{id}"))
}

fn summary(kv: &[KvRow]) {
    let peak: f64 = std::env::var("POLYTENSOR_PEAK_GFLOPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(204.6);
    let grp = "attention_causal_1x8x512x64";
    let get = |id: &str| median_ns(grp, id).unwrap_or(f64::NAN);
    let (gemm, f32t, bf16t, comp) = (
        get("gemm_direct/qk+pv"),
        get("polytensor_fused/f32"),
        get("polytensor_fused/bf16"),
        get("polytensor_composed/f32"),
    );
    let gf = |ns: f64| causal_flops() / ns;
    println!(
        "\ncausal attention 1×8×512×64, median; GFLOP/s effective over the unmasked half (269 MFLOP), % of {peak} GFLOP/s peak"
    );
    println!("| what | ms | GFLOP/s | % peak | ratio |");
    println!("|---|---|---|---|---|");
    let row = |name: &str, ns: f64, ratio: String| {
        println!(
            "| {name} | {:.3} | {:.1} | {:.1} % | {ratio} |",
            ns / 1e6,
            gf(ns),
            100.0 * gf(ns) / peak
        );
    };
    row("two direct gemm calls (full QKᵀ, PV)", gemm, "—".into());
    row(
        "polytensor fused f32",
        f32t,
        format!("{:.3}× gemm (goal ≤ 0.75)", f32t / gemm),
    );
    row(
        "polytensor fused bf16",
        bf16t,
        format!("{:.3}× our f32 (goal ≤ 1.3)", bf16t / f32t),
    );
    row(
        "polytensor composed f32 (matmul, mask, softmax, matmul)",
        comp,
        format!("{:.2}× our fused f32", comp / f32t),
    );
    let dg = "attention_decode_9x3x2048x64";
    let (ours, copy) = (
        median_ns(dg, "polytensor_fused/f32").unwrap_or(f64::NAN),
        median_ns(dg, "plain_copy/f32").unwrap_or(f64::NAN),
    );
    let gbs = |ns: f64| decode_bytes() as f64 / ns;
    println!(
        "\ndecode: 1 row, 9 q heads / 3 KV heads, 2048 keys, D = 64, 30 caches cycled (K and V bytes counted once)"
    );
    println!("| what | µs | GB/s | ratio |");
    println!("|---|---|---|---|");
    println!("| plain copy | {:.1} | {:.1} | — |", copy / 1e3, gbs(copy));
    println!(
        "| polytensor fused f32 | {:.1} | {:.1} | {:.2}× the copy's bandwidth (goal ≥ 0.5) |",
        ours / 1e3,
        gbs(ours),
        copy / ours
    );
    let hot = median_ns(dg, "polytensor_fused/f32_one_cache").unwrap_or(f64::NAN);
    println!(
        "| polytensor fused f32, one cache reused (cache-resident) | {:.1} | {:.1} | — |",
        hot / 1e3,
        gbs(hot)
    );
    println!(
        "\nKV append: 1 token ([1, {KV_HKV}, 1, {KV_D}] into K and V, f32) at a run-time position, \
         big cache 2 × {} MiB ({KV_BIG} positions), small 2 × {} KiB ({KV_SMALL}), median",
        (KV_BIG * KV_HKV * KV_D * 4) >> 20,
        (KV_SMALL * KV_HKV * KV_D * 4) >> 10
    );
    println!(
        "| device | big µs | small µs | big / small (goal ≈ 1) | elements written big / small |"
    );
    println!("|---|---|---|---|---|");
    let elems = |w: Option<u64>| w.map_or("—".to_string(), |n| n.to_string());
    for r in kv {
        let big = median_ns(KV_GROUP, &format!("{}/big", r.label)).unwrap_or(f64::NAN);
        let small = median_ns(KV_GROUP, &format!("{}/small", r.label)).unwrap_or(f64::NAN);
        println!(
            "| {} ({}) | {:.1} | {:.1} | {:.2} | {} / {} |",
            r.name,
            r.label,
            big / 1e3,
            small / 1e3,
            big / small,
            elems(r.written[0]),
            elems(r.written[1])
        );
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench_causal(&mut c);
    bench_decode(&mut c);
    let kv = bench_kv_append(&mut c);
    c.final_summary();
    summary(&kv);
}
