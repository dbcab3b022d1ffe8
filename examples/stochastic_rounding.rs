//! Stochastic rounding beats stagnation: 1024 accumulators (a state tensor) start at 0 and add
//! 0.01 four thousand times, in f16 and bf16, with round-to-nearest-even and with stochastic
//! rounding, on every device. RNE stalls once 0.01 falls below half an ulp of the sum; SR tracks
//! the exact sum on average, and every device draws the same bits, so their results agree.
//!
//! Prints a table and writes `stochastic_rounding.svg` (running sums, CPU).
//! Run: `cargo run --release --example stochastic_rounding`

use plotters::prelude::*;
use polytensor::{DType, Device, Graph, Offset, Rounding, Session};

const ACCUMULATORS: usize = 1024;
const STEPS: usize = 4000;
const INCREMENT: f64 = 0.01;
const EVERY: usize = 50;

/// Runs the accumulation; returns the mean after every `EVERY` steps and the final values.
fn run(
    device: &Device,
    dtype: DType,
    rounding: Rounding,
) -> polytensor::Result<(Vec<f64>, Vec<f64>)> {
    let mut g = Graph::new();
    let acc = g.state("acc", [ACCUMULATORS], dtype);
    let inc = g.constant(&[INCREMENT], [1], DType::F32)?;
    let acc32 = g.cast(acc, DType::F32)?;
    let sum = g.add(acc32, inc)?;
    let next = g.cast_with(sum, dtype, rounding)?;
    g.write_state("acc", next, 0, Offset::Fixed(0))?;
    let mut s = Session::new(device);
    s.create_state("acc", &[ACCUMULATORS], dtype)?;
    s.set_seed(2026, 0);
    let p = s.compile(&g)?;
    let mut means = vec![0.0];
    for step in 1..=STEPS {
        s.run(&p, &[], &[])?;
        if step % EVERY == 0 {
            let v = s.read_state("acc")?.to_f64_vec();
            means.push(v.iter().sum::<f64>() / v.len() as f64);
        }
    }
    Ok((means, s.read_state("acc")?.to_f64_vec()))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let exact = INCREMENT as f32 as f64 * STEPS as f64;
    println!("{ACCUMULATORS} accumulators, +{INCREMENT} × {STEPS} (exact: {exact:.2})\n");
    println!("| device | dtype | rounding | mean | spread (σ) | max − min |");
    println!("|---|---|---|---|---|---|");
    let mut curves: Vec<(String, Vec<f64>)> = Vec::new();
    let mut finals: Vec<(String, DType, Vec<f64>)> = Vec::new();
    for device in Device::list() {
        let name = device.info().name.clone();
        for dtype in [DType::F16, DType::BF16] {
            for (label, rounding) in [
                ("RNE", Rounding::NearestEven),
                ("SR", Rounding::Stochastic { stream: 1 }),
            ] {
                let (means, last) = run(&device, dtype, rounding)?;
                let mean = last.iter().sum::<f64>() / last.len() as f64;
                let sd = (last.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / last.len() as f64)
                    .sqrt();
                let (lo, hi) = last
                    .iter()
                    .fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
                println!(
                    "| {name} | {dtype} | {label} | {mean:.3} | {sd:.3} | {:.3} |",
                    hi - lo
                );
                if device.info().backend == "cpu" {
                    curves.push((format!("{dtype} {label}"), means));
                }
                if label == "SR" {
                    finals.push((name.clone(), dtype, last));
                }
            }
        }
    }
    for dtype in [DType::F16, DType::BF16] {
        let runs: Vec<&(String, DType, Vec<f64>)> =
            finals.iter().filter(|f| f.1 == dtype).collect();
        let same = runs.windows(2).all(|w| w[0].2 == w[1].2);
        println!(
            "\n{dtype} SR results identical on all {} devices: {same}",
            runs.len()
        );
    }
    let path =
        std::env::var("POLYTENSOR_SVG").unwrap_or_else(|_| "stochastic_rounding.svg".to_string());
    let path = path.as_str();
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{ACCUMULATORS} accumulators, +{INCREMENT} per step: mean running sum"),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0..STEPS, 0.0..exact * 1.1)?;
    chart.configure_mesh().x_desc("step").y_desc("sum").draw()?;
    let steps = |n: usize| (0..n).map(|i| i * EVERY);
    chart
        .draw_series(LineSeries::new(
            steps(STEPS / EVERY + 1).map(|s| (s, s as f64 * INCREMENT)),
            BLACK.stroke_width(2),
        ))?
        .label("exact")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK));
    let colors = [RED, BLUE, MAGENTA, GREEN];
    for (k, (label, means)) in curves.iter().enumerate() {
        let c = colors[k % colors.len()];
        chart
            .draw_series(LineSeries::new(
                steps(means.len()).zip(means.iter().copied()),
                c.stroke_width(2),
            ))?
            .label(label.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    println!("wrote {path}");
    Ok(())
}
