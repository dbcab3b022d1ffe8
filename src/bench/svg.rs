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
    // Bar rows per suite: every (row, dtype) name in first-seen order, one bar per device.
    let names_of = |suite: &str| {
        let mut names: Vec<String> = Vec::new();
        for d in &rep.devices {
            for r in d
                .rows
                .iter()
                .filter(|r| r.suite == suite && r.value.is_some())
            {
                let n = format!("{} {}", r.name, r.dtype.as_deref().unwrap_or(""));
                if !names.contains(&n) {
                    names.push(n);
                }
            }
        }
        names
    };
    let nd = rep.devices.len().max(1);
    let suite_height = |suite: &str| 70 + (names_of(suite).len() * (nd * 12 + 10)) as u32;
    let width = (440 * nd as u32).max(1200);
    let height = 420 + suites.iter().map(|s| suite_height(s)).sum::<u32>();
    let root = SVGBackend::new(path, (width, height)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (top, mut bottom) = root.split_vertically(420);
    let panels = top.split_evenly((1, nd));
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
            .caption(
                format!("{}: roofline", super::report::short_name(&d.name)),
                ("sans-serif", 15),
            )
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
    for suite in &suites {
        let (area, rest) = bottom.split_vertically(suite_height(suite));
        bottom = rest;
        let names = names_of(suite);
        let unit = rep
            .devices
            .iter()
            .flat_map(|d| d.rows.iter().filter(|r| &r.suite == suite))
            .map(|r| r.unit.clone())
            .next()
            .unwrap_or_default();
        let xmax = rep
            .devices
            .iter()
            .flat_map(|d| d.rows.iter().filter(|r| &r.suite == suite))
            .filter_map(|r| r.value)
            .fold(1e-9, f64::max)
            * 1.45;
        let n = names.len() as f64;
        let mut chart = ChartBuilder::on(&area)
            .caption(format!("{suite} ({unit})"), ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(330)
            .build_cartesian_2d(0f64..xmax, 0f64..n)
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(names.len().max(1) * 2 + 1)
            .y_label_formatter(&|y| {
                // Labels at the middle of each row's band (row 0 at the top).
                let f = y.fract();
                let i = n - 1.0 - y.floor();
                if (f - 0.5).abs() < 1e-6 && i >= 0.0 {
                    names.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .x_desc(unit.as_str())
            .draw()
            .map_err(err)?;
        for (di, (d, color)) in rep.devices.iter().zip(COLORS.iter().cycle()).enumerate() {
            let bars: Vec<Rectangle<(f64, f64)>> = d
                .rows
                .iter()
                .filter(|r| &r.suite == suite)
                .filter_map(|r| {
                    let name = format!("{} {}", r.name, r.dtype.as_deref().unwrap_or(""));
                    let i = names.iter().position(|x| *x == name)? as f64;
                    let band = n - 1.0 - i;
                    let h = 0.8 / nd as f64;
                    let y0 = band + 0.9 - h * (di as f64 + 1.0);
                    Some(Rectangle::new(
                        [(0.0, y0), (r.value?, y0 + h)],
                        color.filled(),
                    ))
                })
                .collect();
            chart
                .draw_series(bars)
                .map_err(err)?
                .label(super::report::short_name(&d.name))
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled())
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)
}
