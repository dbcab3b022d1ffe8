//! Stochastic-rounding cast throughput against round-to-nearest-even, on every device, in the
//! same run: f32 → bf16 and f32 → f16 over 16 Mi elements, GB/s counted as bytes read + written.
//! Goal: SR ≥ 0.8× RNE.
//!
//! Run: `cargo bench --bench sr` (`POLYTENSOR_BENCH_SECS` per point, default 2).

use std::time::{Duration, Instant};

use polytensor::{DType, Device, FallbackPolicy, Graph, Rounding, Session, Tensor};

fn main() {
    let secs: f64 = std::env::var("POLYTENSOR_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2.0);
    let n = 1 << 24;
    let x = Tensor::new(
        &[n],
        (0..n)
            .map(|i| (i as f32).sin() * 1000.0)
            .collect::<Vec<f32>>(),
    )
    .expect("x");
    println!("| device | cast | RNE GB/s | SR GB/s | SR ÷ RNE |");
    println!("|---|---|---|---|---|");
    for device in Device::list() {
        for to in [DType::BF16, DType::F16] {
            let mut gbs = Vec::new();
            for rounding in [Rounding::NearestEven, Rounding::Stochastic { stream: 1 }] {
                let mut g = Graph::new();
                let xi = g.input("x", [n], DType::F32);
                let y = g.cast_with(xi, to, rounding).expect("cast");
                g.output("y", y).expect("out");
                let mut s = Session::new(&device);
                s.set_fallback(FallbackPolicy::Deny);
                let p = s.compile(&g).expect("compile");
                s.run(&p, &[("x", x.view())], &[]).expect("warm-up");
                let mut times = Vec::new();
                let start = Instant::now();
                while times.len() < 3
                    || (start.elapsed() < Duration::from_secs_f64(secs) && times.len() < 100)
                {
                    let t = Instant::now();
                    s.run(&p, &[("x", x.view())], &[]).expect("run");
                    times.push(t.elapsed().as_secs_f64());
                }
                times.sort_by(f64::total_cmp);
                gbs.push((n * 6) as f64 / times[times.len() / 2] / 1e9);
            }
            println!(
                "| {} | f32→{to} | {:.2} | {:.2} | {:.2} |",
                device.info().name,
                gbs[0],
                gbs[1],
                gbs[1] / gbs[0]
            );
        }
    }
}
