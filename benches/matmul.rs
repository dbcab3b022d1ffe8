//! CPU matmul through `Session::run` (f32, f16, bf16) against the `gemm` crate called directly in
//! the same run, at n = 256, 512, 1024, 2048. Prints a ratio table at the end:
//! our f32 / gemm (goal ≥ 0.97), f16 and bf16 / our f32 (goal ≥ 0.85), and % of the machine's f32
//! peak (`POLYTENSOR_PEAK_GFLOPS`, default 204.6 — PEERS.md's 2-core figure).
//!
//! Run: `cargo bench --bench matmul` (or `-- 1024` for one size). The sizes, inputs and the
//! graph are `polytensor bench`'s matmul problems (`polytensor::bench::problems`); the summary
//! finds criterion's results wherever the target directory is (`CARGO_TARGET_DIR`,
//! `CRITERION_HOME`, or beside this executable).

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use polytensor::bench::problems::{CRITERION_SQUARE as SIZES, Problem};
use polytensor::bench::report::criterion_median_ns;
use polytensor::{DType, Device, Session};

fn bench(c: &mut Criterion) {
    let threads = polytensor::backend::cpu::default_threads();
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    for n in SIZES {
        let mut group = c.benchmark_group(format!("matmul_{n}"));
        group.throughput(Throughput::Elements(2 * (n as u64).pow(3)));
        group.sample_size(if n >= 1024 { 10 } else { 30 });
        group.warm_up_time(Duration::from_millis(500));
        group.measurement_time(Duration::from_secs(if n >= 2048 { 6 } else { 3 }));
        let problem = Problem::MatMul {
            m: n,
            k: n,
            n,
            tb: false,
        };
        let f32_inputs = problem.inputs(DType::F32).expect("inputs");
        let (a32, b32) = (f32_inputs[0].1.to_f32_vec(), f32_inputs[1].1.to_f32_vec());
        let mut dst = vec![0f32; n * n];
        group.bench_function(BenchmarkId::new("gemm_direct", "f32"), |bch| {
            bch.iter(|| {
                // SAFETY: three n×n row-major buffers of n·n elements each.
                unsafe {
                    gemm::gemm(
                        n,
                        n,
                        n,
                        dst.as_mut_ptr(),
                        1,
                        n as isize,
                        false,
                        a32.as_ptr(),
                        1,
                        n as isize,
                        b32.as_ptr(),
                        1,
                        n as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        par,
                    );
                }
            })
        });
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let g = problem.graph(dtype).expect("graph");
            let tensors = problem.inputs(dtype).expect("inputs");
            let mut s = Session::new(&Device::cpu());
            let p = s.compile(&g).expect("compile");
            let inputs: Vec<_> = tensors.iter().map(|(k, t)| (*k, t.view())).collect();
            group.bench_function(BenchmarkId::new("polytensor", dtype.name()), |bch| {
                bch.iter(|| s.run(&p, &inputs, &[]).expect("run"))
            });
        }
        group.finish();
    }
}

/// The median time in ns of one benchmark, from criterion's saved estimates.
fn median_ns(group: &str, id: &str) -> Option<f64> {
    criterion_median_ns(&format!("{group}/{id}"))
}

fn summary() {
    let peak: f64 = std::env::var("POLYTENSOR_PEAK_GFLOPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(204.6);
    println!("\nmedian GFLOP/s (ratio) — % of {peak} GFLOP/s f32 peak");
    println!(
        "| n | gemm direct f32 | polytensor f32 (÷gemm) | f16 (÷our f32) | bf16 (÷our f32) | our f32 % peak |"
    );
    println!("|---|---|---|---|---|---|");
    for n in SIZES {
        let group = format!("matmul_{n}");
        let gf = |ns: f64| 2.0 * (n as f64).powi(3) / ns;
        let (Some(g), Some(f32t)) = (
            median_ns(&group, "gemm_direct/f32"),
            median_ns(&group, "polytensor/f32"),
        ) else {
            continue;
        };
        let h = median_ns(&group, "polytensor/f16").unwrap_or(f64::NAN);
        let b = median_ns(&group, "polytensor/bf16").unwrap_or(f64::NAN);
        println!(
            "| {n} | {:.1} | {:.1} ({:.3}) | {:.1} ({:.3}) | {:.1} ({:.3}) | {:.1} % |",
            gf(g),
            gf(f32t),
            g / f32t,
            gf(h),
            f32t / h,
            gf(b),
            f32t / b,
            100.0 * gf(f32t) / peak
        );
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
    summary();
}
