//! The run's clock, budget and progress bar, timing a graph (GPU timestamps where the adapter
//! has them, the wall clock otherwise), and the bookkeeping of a row.

use std::time::Instant;

use super::check::ErrorScore;
use super::roofline::Roofline;
use super::{Options, Row, Suite, report};
use crate::{DType, Device, Error, FallbackPolicy, Graph, Result, Session, Tensor};

/// Median, min and max of `times`.
pub(super) fn stats(times: &[f64]) -> (f64, f64, f64) {
    let mut t = times.to_vec();
    t.sort_by(f64::total_cmp);
    let med = if t.is_empty() {
        f64::NAN
    } else if t.len() % 2 == 1 {
        t[t.len() / 2]
    } else {
        (t[t.len() / 2 - 1] + t[t.len() / 2]) / 2.0
    };
    (
        med,
        t.first().copied().unwrap_or(f64::NAN),
        t.last().copied().unwrap_or(f64::NAN),
    )
}

/// The run in progress: options, clock, progress bar, rooflines.
pub(super) struct Runner<'a> {
    pub(super) opts: &'a Options,
    pub(super) start: Instant,
    /// Elapsed seconds by which the current suite must end: an equal share of what is left of
    /// the budget for each suite still to run, so a slow device or a large size cannot starve
    /// the later suites.
    pub(super) deadline: std::cell::Cell<f64>,
    pub(super) bar: indicatif::ProgressBar,
}

impl Runner<'_> {
    pub(super) fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Whether a row predicted to take `secs` ends before the current suite's deadline.
    pub(super) fn fits(&self, secs: f64) -> bool {
        self.elapsed() + secs <= self.deadline.get()
    }

    /// Predicted seconds of a row: first run plus warm-up plus the timed runs, each at a
    /// quarter of the roofline's rate for its FLOPs and bytes (rows measure 5–80 % of it
    /// here), plus 1 ms of launch cost.
    pub(super) fn predict(&self, roof: Option<&Roofline>, flops: f64, bytes: f64) -> f64 {
        let Some(r) = roof else { return 0.0 };
        let one = 4.0 * (flops / (r.peak_gflops * 1e9)).max(bytes / (r.bandwidth() * 1e9)) + 1e-3;
        (self.opts.runs() + 2) as f64 * one
    }

    pub(super) fn progress(&self, device: &str, what: &str) {
        self.bar.set_message(format!("{device}: {what}"));
    }

    pub(super) fn finish(&self, device: &str, row: &Row) {
        self.bar.println(report::row_line(device, row));
    }
}

/// A row that did not run.
pub(super) fn not_run(
    suite: Suite,
    name: String,
    dtype: Option<DType>,
    status: String,
    unit: &str,
) -> Row {
    Row {
        suite: suite.name().to_string(),
        name,
        dtype: dtype.map(|d| d.name().to_string()),
        status,
        unit: unit.to_string(),
        timing: "wall".to_string(),
        ..Row::default()
    }
}

/// Fills a row's times, rate and % of peak from the measured seconds.
#[allow(clippy::too_many_arguments)]
pub(super) fn timed_row(
    suite: Suite,
    name: String,
    dtype: Option<DType>,
    first: f64,
    times: &[f64],
    flops: f64,
    bytes: f64,
    roof: Option<&Roofline>,
) -> Row {
    let med = stats(times).0;
    let (unit, value, pct) = if flops > 0.0 {
        let gf = flops / med / 1e9;
        let pct = roof.map(|r| 100.0 * gf / r.attainable(flops / bytes.max(1.0)));
        ("GFLOP/s", gf, pct)
    } else {
        let gb = bytes / med / 1e9;
        ("GB/s", gb, roof.map(|r| 100.0 * gb / r.bandwidth()))
    };
    Row {
        value: Some(value),
        flops,
        bytes,
        pct_peak: pct,
        ..measured(suite, name, dtype, unit, first, times)
    }
}

/// A measured row's identity and times (median, min, max, first run; wall clock), its value and
/// rates left for the caller.
pub(super) fn measured(
    suite: Suite,
    name: String,
    dtype: Option<DType>,
    unit: &str,
    first: f64,
    times: &[f64],
) -> Row {
    let (med, min, max) = stats(times);
    Row {
        suite: suite.name().to_string(),
        name,
        dtype: dtype.map(|d| d.name().to_string()),
        status: "ok".to_string(),
        unit: unit.to_string(),
        runs: times.len(),
        median_s: Some(med),
        min_s: Some(min),
        max_s: Some(max),
        wall_median_s: Some(med),
        first_s: Some(first),
        timing: "wall".to_string(),
        ..Row::default()
    }
}

pub(super) fn with_error(mut row: Row, e: ErrorScore) -> Row {
    row.nmse = Some(e.nmse);
    row.err_ratio = Some(e.ratio);
    row.flagged = e.ratio.is_nan() || e.ratio > 1.0;
    row
}

pub(super) fn session(device: &Device) -> Session {
    let mut s = Session::new(device);
    s.set_fallback(FallbackPolicy::Deny);
    s
}

/// A graph's measured runs: the first (with compilation), the timed ones, the last outputs.
pub(super) struct Timed {
    pub first: f64,
    pub times: Vec<f64>,
    /// Device times of the same runs from GPU timestamps, where the device has them.
    pub gpu: Option<Vec<f64>>,
    pub out: Vec<(String, Tensor)>,
}

/// Compiles `g` and runs it once (timed together), then a warm-up and `runs` timed runs, with
/// GPU timestamps when `gpu_timing` (they cost a query resolve and a small readback per run, so
/// the memory and overhead rows leave them off).
pub(super) fn time_graph(
    s: &mut Session,
    g: &Graph,
    inputs: &[(&str, crate::TensorView<'_>)],
    runs: usize,
    gpu_timing: bool,
) -> Result<Timed> {
    let t0 = Instant::now();
    let p = s.compile(g)?;
    s.run(&p, inputs, &[])?;
    let first = t0.elapsed().as_secs_f64();
    s.set_gpu_timing(gpu_timing);
    let mut out = s.run(&p, inputs, &[])?;
    let mut times = Vec::with_capacity(runs);
    let mut gpu = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        out = s.run(&p, inputs, &[])?;
        times.push(t.elapsed().as_secs_f64());
        gpu.extend(s.last_run_stats().gpu_ns.map(|ns| ns as f64 * 1e-9));
    }
    s.set_gpu_timing(false);
    Ok(Timed {
        first,
        gpu: (gpu.len() == times.len() && !gpu.is_empty()).then_some(gpu),
        times,
        out: out.into_vec(),
    })
}

/// A status for an error: `unsupported: …` for a device that cannot run the graph, else
/// `error: …`.
pub(super) fn failed(e: &Error) -> String {
    match e {
        Error::Unsupported(_) | Error::UnsupportedDType { .. } => format!("unsupported: {e}"),
        _ => format!("error: {e}"),
    }
}
