//! `--svg`: one SVG with a roofline per device (log-log: arithmetic intensity against GFLOP/s,
//! the device's measured peak and bandwidth as the roof, its rows as points) and, per suite, bars
//! of every row across devices.

use std::path::Path;

use plotters::prelude::*;

use super::{Report, Row};
use crate::{Error, Result};

fn err(e: impl std::fmt::Display) -> Error {
    Error::InvalidArgument {
        op: "bench",
        msg: format!("drawing the SVG: {e}"),
    }
}

/// GFLOP/s of a row that computes (also tok/s rows: their FLOPs over the median time).
fn gflops(r: &Row) -> Option<f64> {
    let secs = r.median_s.filter(|_| r.status == "ok" && r.flops > 0.0)?;
    Some(r.flops / secs / 1e9)
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Draws the charts of `rep` into `path`.
pub fn write(rep: &Report, path: &Path) -> Result<()> {
    let suites: Vec<String> = {
        let mut v: Vec<String> = Vec::new();
        for d in &rep.devices {
            for r in &d.rows {
                if !v.contains(&r.suite) && r.value.is_some() {
                    v.push(r.suite.clone());
                }
            }
        }
        v
    };
    let width = 420 * rep.devices.len().max(2) as u32;
    let height = 420 + 380 * suites.len() as u32;
    let root = SVGBackend::new(path, (width, height)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (top, bottom) = root.split_vertically(420);
    let panels = top.split_evenly((1, rep.devices.len().max(1)));
    for ((d, area), color) in rep.devices.iter().zip(&panels).zip(COLORS.iter().cycle()) {
        let Some(roof) = &d.roofline else { continue };
        let points: Vec<(f64, f64)> = d
            .rows
            .iter()
            .filter_map(|r| Some((r.flops / r.bytes.max(1.0), gflops(r)?)))
            .collect();
        let ymax = roof
            .peak_gflops
            .max(points.iter().map(|p| p.1).fold(1.0, f64::max))
            * 2.0;
        let ymin = (ymax / 1e5).max(1e-3);
        let mut chart = ChartBuilder::on(area)
            .caption(shorten(&d.name), ("sans-serif", 14))
            .margin(8)
            .x_label_area_size(36)
            .y_label_area_size(52)
            .build_cartesian_2d((0.01f64..1000.0).log_scale(), (ymin..ymax).log_scale())
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("FLOP / byte")
            .y_desc("GFLOP/s")
            .draw()
            .map_err(err)?;
        let roofline: Vec<(f64, f64)> = (0..=100)
            .map(|i| {
                let x = 10f64.powf(-2.0 + 5.0 * f64::from(i) / 100.0);
                (x, roof.attainable(x).max(ymin))
            })
            .collect();
        chart
            .draw_series(LineSeries::new(roofline, BLACK.stroke_width(2)))
            .map_err(err)?;
        chart
            .draw_series(
                points
                    .iter()
                    .map(|&(x, y)| Circle::new((x.clamp(0.01, 1000.0), y), 4, color.filled())),
            )
            .map_err(err)?;
    }
    let areas = bottom.split_evenly((suites.len().max(1), 1));
    for (suite, area) in suites.iter().zip(&areas) {
        // Every row name of this suite (name + dtype), in first-seen order.
        let mut names: Vec<String> = Vec::new();
        let mut unit = String::new();
        for d in &rep.devices {
            for r in d
                .rows
                .iter()
                .filter(|r| &r.suite == suite && r.value.is_some())
            {
                let n = format!("{} {}", r.name, r.dtype.as_deref().unwrap_or(""));
                if !names.contains(&n) {
                    names.push(n);
                }
                unit.clone_from(&r.unit);
            }
        }
        let ymax = rep
            .devices
            .iter()
            .flat_map(|d| d.rows.iter().filter(|r| &r.suite == suite))
            .filter_map(|r| r.value)
            .fold(1e-9, f64::max)
            * 1.15;
        let nd = rep.devices.len().max(1);
        let mut chart = ChartBuilder::on(area)
            .caption(format!("{suite} ({unit})"), ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..names.len() as f64, 0f64..ymax)
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(names.len().max(1))
            .x_label_formatter(&|x| {
                let i = x.floor() as usize;
                names.get(i).map_or(String::new(), |n| shorten(n))
            })
            .y_desc(unit.as_str())
            .draw()
            .map_err(err)?;
        for (di, (d, color)) in rep.devices.iter().zip(COLORS.iter().cycle()).enumerate() {
            let bars: Vec<Rectangle<(f64, f64)>> = d
                .rows
                .iter()
                .filter(|r| &r.suite == suite)
                .filter_map(|r| {
                    let n = format!("{} {}", r.name, r.dtype.as_deref().unwrap_or(""));
                    let i = names.iter().position(|x| *x == n)? as f64;
                    let w = 0.8 / nd as f64;
                    let x0 = i + 0.1 + w * di as f64;
                    Some(Rectangle::new(
                        [(x0, 0.0), (x0 + w, r.value?)],
                        color.filled(),
                    ))
                })
                .collect();
            chart
                .draw_series(bars)
                .map_err(err)?
                .label(shorten(&d.name))
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled())
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)
}

fn shorten(s: &str) -> String {
    if s.chars().count() <= 34 {
        s.to_string()
    } else {
        s.chars().take(33).chain(std::iter::once('…')).collect()
    }
}
