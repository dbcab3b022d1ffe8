//! `polytensor bench`: the same problems on every device, each row with its time (median, min,
//! max over timed runs after a warm-up; the first run, with the pipeline build, apart), its
//! rate and % of the device's own measured roofline, and its numerical error against an f64
//! reference (NMSE and the largest |error| ÷ that op's test tolerance; a row above 1 is flagged).
//!
//! Suites: `roofline` (peak f32 FMA, copy and triad, measured natively on the CPU and by WGSL
//! kernels on a raw wgpu device for each adapter), `matmul`, `attention`, `transformer` (one
//! SmolLM2-shaped block and the whole random-weight model: prefill and decode tokens/s),
//! `memory` (host→device, device→host, device copy) and `overhead` (µs per run, per launch,
//! and raw wgpu's submit+wait floor).
//!
//! `--quick`: matmul n = 256 and 512 plus the transformer shapes at 64 rows; attention prefill
//! at 256 and decode against 512 keys; a 4-layer SmolLM2-width model (16-token prompt, 4 decode
//! steps) and one block at 32 tokens; 16 MiB memory rows; 3 timed runs; f32 unless `--dtype`
//! says otherwise. The full run: n up to 4096, prefill up to 4096, decode up to 4096 keys, the
//! 30-layer model (256-token prompt, 16 decode steps), 128 MiB, 5 timed runs, all dtypes,
//! within a time budget (default 600 s), shared equally by the suites still to run: each row's
//! time is predicted from the device's roofline (at a quarter of its rate) and rows that would not
//! fit their suite's share say "skipped: budget".
//!
//! Matmul and attention rows are timed by GPU timestamp queries where the adapter has them
//! (`Session::set_gpu_timing`: the device time of the run's compute passes; the row says
//! `timestamp` and keeps the wall-clock median beside it); everything else, and adapters without
//! timestamps, by the wall clock around a full sync (`Session::run` waits and reads back): `wall`. Everything but the roofline kernels and the raw-wgpu floor goes through the public
//! API (settled decision 14).

pub mod check;
pub mod problems;
pub mod report;
pub mod roofline;
mod rows;
mod suites;
pub mod svg;

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::{DType, Device, Error, Result};
use problems::Problem;
use roofline::Roofline;
use rows::Runner;
pub use suites::smollm2;
use suites::{memory_rows, overhead_rows, problem_row, transformer_rows};

/// The JSON report's schema version.
pub const SCHEMA_VERSION: u32 = 1;

/// The report's JSON Schema (draft 2020-12), `src/bench/schema.json`.
pub const SCHEMA: &str = include_str!("schema.json");

/// The suites, in running order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Suite {
    Roofline,
    Matmul,
    Attention,
    Transformer,
    Memory,
    Overhead,
}

impl Suite {
    pub const ALL: [Suite; 6] = [
        Suite::Roofline,
        Suite::Matmul,
        Suite::Attention,
        Suite::Transformer,
        Suite::Memory,
        Suite::Overhead,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Suite::Roofline => "roofline",
            Suite::Matmul => "matmul",
            Suite::Attention => "attention",
            Suite::Transformer => "transformer",
            Suite::Memory => "memory",
            Suite::Overhead => "overhead",
        }
    }

    /// Parses a comma-separated list (`all` for every suite).
    pub fn parse_list(s: &str) -> Result<Vec<Suite>> {
        if s.trim() == "all" {
            return Ok(Suite::ALL.to_vec());
        }
        s.split(',')
            .map(|w| {
                Suite::ALL
                    .into_iter()
                    .find(|x| x.name() == w.trim())
                    .ok_or_else(|| Error::InvalidArgument {
                        op: "bench",
                        msg: format!(
                            "unknown suite `{w}`: expected roofline, matmul, attention, \
                             transformer, memory or overhead"
                        ),
                    })
            })
            .collect()
    }
}

/// The devices `--device` names: `all` (every device of [`Device::list`]), or a comma-separated
/// list of indices and name fragments, each as [`Device::select`] reads it (an unknown one is an
/// `Err` listing the devices).
pub fn select_devices(spec: &str) -> Result<Vec<Device>> {
    let list = Device::list();
    if spec.trim() == "all" {
        return Ok(list);
    }
    spec.split(',')
        .map(|q| Device::select(&list, Some(q)))
        .collect()
}

/// Parses `--dtype`: a comma-separated list of f32, f16, bf16.
pub fn parse_dtypes(s: &str) -> Result<Vec<DType>> {
    s.split(',')
        .map(|w| {
            DType::FLOATS
                .into_iter()
                .find(|d| d.name() == w.trim())
                .ok_or_else(|| Error::InvalidArgument {
                    op: "bench",
                    msg: format!("unknown dtype `{w}`: expected f32, f16 or bf16"),
                })
        })
        .collect()
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    pub suites: Vec<Suite>,
    pub dtypes: Vec<DType>,
    pub quick: bool,
    /// Seconds the whole run may take (rows predicted past it are skipped).
    pub budget_s: f64,
    /// A progress bar on stderr (hidden when stderr is not a terminal).
    pub progress: bool,
}

impl Options {
    /// `--quick` or the full run, every suite, f32 only when quick.
    pub fn new(quick: bool) -> Options {
        Options {
            suites: Suite::ALL.to_vec(),
            dtypes: if quick {
                vec![DType::F32]
            } else {
                DType::FLOATS.to_vec()
            },
            quick,
            budget_s: 600.0,
            progress: true,
        }
    }

    fn runs(&self) -> usize {
        if self.quick { 3 } else { 5 }
    }

    fn has(&self, s: Suite) -> bool {
        self.suites.contains(&s)
    }
}

/// One measured row.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Row {
    pub suite: String,
    pub name: String,
    /// Storage dtype, where the row has one.
    pub dtype: Option<String>,
    /// `ok`, `skipped: budget`, `unsupported: …` or `error: …`.
    pub status: String,
    /// Unit of `value`: `GFLOP/s`, `GB/s`, `tok/s` or `µs`.
    pub unit: String,
    /// Rate (or µs for overhead rows) at the median time.
    pub value: Option<f64>,
    pub runs: usize,
    pub median_s: Option<f64>,
    pub min_s: Option<f64>,
    pub max_s: Option<f64>,
    /// The median by the host clock around each run's full sync (equal to `median_s` for
    /// `wall` rows).
    pub wall_median_s: Option<f64>,
    /// The first run, with compilation (pipeline builds), in seconds.
    pub first_s: Option<f64>,
    /// FLOPs and bytes of one run (0 where they do not apply).
    pub flops: f64,
    pub bytes: f64,
    /// % of the device's roofline at this row's arithmetic intensity (GB/s rows: of the
    /// measured bandwidth).
    pub pct_peak: Option<f64>,
    pub nmse: Option<f64>,
    /// Largest |error| ÷ tolerance over the checked sample; > 1 is flagged.
    pub err_ratio: Option<f64>,
    pub flagged: bool,
    /// `timestamp`: device time of the run's compute passes from GPU timestamp queries
    /// (matmul and attention rows, where the adapter has them); `wall`: host clock around a
    /// full sync.
    pub timing: String,
}

/// One device's roofline and rows.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct DeviceReport {
    pub name: String,
    pub backend: String,
    pub api: String,
    pub driver: Option<String>,
    pub device_type: String,
    pub software: bool,
    pub roofline: Option<Roofline>,
    pub rows: Vec<Row>,
}

/// The machine the run was made on.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Machine {
    pub os: String,
    pub arch: String,
    pub cpu: String,
    pub threads: usize,
}

/// A whole run: what `--json` writes (schema in `src/bench/schema.json`, [`SCHEMA`]).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub schema_version: u32,
    pub polytensor_version: String,
    pub git_hash: Option<String>,
    /// UTC, RFC 3339.
    pub date: String,
    pub machine: Machine,
    pub quick: bool,
    pub suites: Vec<String>,
    pub dtypes: Vec<String>,
    pub budget_s: f64,
    pub elapsed_s: f64,
    pub devices: Vec<DeviceReport>,
}

impl Report {
    /// Every flagged row as `device: suite name dtype (ratio)`.
    pub fn flagged(&self) -> Vec<String> {
        self.devices
            .iter()
            .flat_map(|d| {
                d.rows.iter().filter(|r| r.flagged).map(move |r| {
                    format!(
                        "{}: {} {} {} (error ratio {:.3})",
                        d.name,
                        r.suite,
                        r.name,
                        r.dtype.as_deref().unwrap_or(""),
                        r.err_ratio.unwrap_or(f64::NAN)
                    )
                })
            })
            .collect()
    }
}

/// One step of the plan, run on every device in turn.
type Step = dyn Fn(&Runner, &Device, &DeviceReport, Option<&roofline::RawGpu>) -> Vec<Row>;

/// Runs the selected suites on `devices`.
pub fn run(devices: &[Device], opts: &Options) -> Result<Report> {
    if devices.is_empty() {
        return Err(Error::InvalidArgument {
            op: "bench",
            msg: "no device to measure".into(),
        });
    }
    let runner = Runner {
        opts,
        start: Instant::now(),
        deadline: std::cell::Cell::new(opts.budget_s),
        bar: if opts.progress {
            indicatif::ProgressBar::new(0)
        } else {
            indicatif::ProgressBar::hidden()
        },
    };
    runner.bar.set_style(
        indicatif::ProgressStyle::with_template("{elapsed:>4} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut reports: Vec<DeviceReport> = devices.iter().map(device_report).collect();
    // Rooflines first: every later row reads as a % of them.
    let mut raws: Vec<Option<roofline::RawGpu>> = Vec::new();
    for (d, rep) in devices.iter().zip(&mut reports) {
        runner.progress(&rep.name, "roofline");
        let bytes = if opts.quick { 16 << 20 } else { 128 << 20 };
        let raw = if d.info().backend == "wgpu" {
            roofline::RawGpu::open(d).ok()
        } else {
            None
        };
        rep.roofline = match (d.info().backend.as_str(), &raw) {
            ("cpu", _) => Some(roofline::cpu(bytes)),
            (_, Some(r)) => r.roofline(bytes as u64).ok(),
            _ => None,
        };
        raws.push(raw);
    }
    let mut plan: Vec<(Suite, Box<Step>)> = Vec::new();
    // Within a suite, the cheapest problems first: the budget cuts the largest.
    let by_cost = |mut v: Vec<Problem>| {
        v.sort_by(|a, b| a.flops().total_cmp(&b.flops()));
        v
    };
    for (suite, problems) in [
        (Suite::Matmul, Problem::matmuls(opts.quick)),
        (Suite::Attention, Problem::attentions(opts.quick)),
    ] {
        if !opts.has(suite) {
            continue;
        }
        for p in by_cost(problems) {
            for &dt in &opts.dtypes {
                let p = p.clone();
                plan.push((
                    suite,
                    Box::new(move |r, d, rep, _| vec![problem_row(r, d, rep, suite, &p, dt)]),
                ));
            }
        }
    }
    if opts.has(Suite::Transformer) {
        for &dt in &opts.dtypes {
            plan.push((
                Suite::Transformer,
                Box::new(move |r, d, rep, _| transformer_rows(r, d, rep, dt)),
            ));
        }
    }
    if opts.has(Suite::Memory) {
        plan.push((
            Suite::Memory,
            Box::new(|r, d, rep, _| memory_rows(r, d, rep)),
        ));
    }
    if opts.has(Suite::Overhead) {
        plan.push((Suite::Overhead, Box::new(overhead_rows)));
    }
    runner.bar.set_length((plan.len() * devices.len()) as u64);
    let mut current = None;
    for (i, (suite, step)) in plan.iter().enumerate() {
        if current != Some(*suite) {
            current = Some(*suite);
            let mut left: Vec<Suite> = plan[i..].iter().map(|(s, _)| *s).collect();
            left.dedup();
            let now = runner.elapsed();
            let share = (opts.budget_s - now).max(0.0) / left.len() as f64;
            runner.deadline.set(now + share);
        }
        for ((d, rep), raw) in devices.iter().zip(reports.iter_mut()).zip(&raws) {
            let rows = step(&runner, d, rep, raw.as_ref());
            rep.rows.extend(rows);
            runner.bar.inc(1);
        }
    }
    runner.bar.finish_and_clear();
    Ok(Report {
        schema_version: SCHEMA_VERSION,
        polytensor_version: env!("CARGO_PKG_VERSION").to_string(),
        git_hash: report::git_hash(),
        date: report::utc_now(),
        machine: report::machine(),
        quick: opts.quick,
        suites: opts.suites.iter().map(|s| s.name().to_string()).collect(),
        dtypes: opts.dtypes.iter().map(|d| d.name().to_string()).collect(),
        budget_s: opts.budget_s,
        elapsed_s: runner.elapsed(),
        devices: reports,
    })
}

fn device_report(d: &Device) -> DeviceReport {
    let info = d.info();
    let driver = info
        .details
        .iter()
        .find(|(k, _)| k.contains("driver"))
        .map(|(_, v)| v.clone());
    DeviceReport {
        name: info.name.clone(),
        backend: info.backend.clone(),
        api: info.api.clone(),
        driver,
        device_type: format!("{:?}", info.device_type),
        software: info.software,
        roofline: None,
        rows: Vec::new(),
    }
}
