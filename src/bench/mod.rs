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
pub mod svg;

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::model::llama::{Llama, LlamaConfig};
use crate::{DType, Device, Error, FallbackPolicy, Graph, Result, Session, Tensor};
use check::ErrorScore;
use problems::Problem;
use roofline::Roofline;

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

/// Median, min and max of `times`.
fn stats(times: &[f64]) -> (f64, f64, f64) {
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
struct Runner<'a> {
    opts: &'a Options,
    start: Instant,
    /// Elapsed seconds by which the current suite must end: an equal share of what is left of
    /// the budget for each suite still to run, so a slow device or a large size cannot starve
    /// the later suites.
    deadline: std::cell::Cell<f64>,
    bar: indicatif::ProgressBar,
}

impl Runner<'_> {
    fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Whether a row predicted to take `secs` still fits the budget.
    /// Whether a row predicted to take `secs` ends before the current suite's deadline.
    fn fits(&self, secs: f64) -> bool {
        self.elapsed() + secs <= self.deadline.get()
    }

    /// Predicted seconds of a row: first run plus warm-up plus the timed runs, each at a
    /// quarter of the roofline's rate for its FLOPs and bytes (rows measure 5–80 % of it
    /// here), plus 1 ms of launch cost.
    fn predict(&self, roof: Option<&Roofline>, flops: f64, bytes: f64) -> f64 {
        let Some(r) = roof else { return 0.0 };
        let one = 4.0 * (flops / (r.peak_gflops * 1e9)).max(bytes / (r.bandwidth() * 1e9)) + 1e-3;
        (self.opts.runs() + 2) as f64 * one
    }

    fn progress(&self, device: &str, what: &str) {
        self.bar.set_message(format!("{device}: {what}"));
    }

    fn finish(&self, device: &str, row: &Row) {
        self.bar.inc(1);
        self.bar.println(report::row_line(device, row));
    }
}

/// A row that did not run.
fn not_run(suite: Suite, name: String, dtype: Option<DType>, status: String, unit: &str) -> Row {
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
fn timed_row(
    suite: Suite,
    name: String,
    dtype: Option<DType>,
    first: f64,
    times: &[f64],
    flops: f64,
    bytes: f64,
    roof: Option<&Roofline>,
) -> Row {
    let (med, min, max) = stats(times);
    let (unit, value, pct) = if flops > 0.0 {
        let gf = flops / med / 1e9;
        let pct = roof.map(|r| 100.0 * gf / r.attainable(flops / bytes.max(1.0)));
        ("GFLOP/s", gf, pct)
    } else {
        let gb = bytes / med / 1e9;
        ("GB/s", gb, roof.map(|r| 100.0 * gb / r.bandwidth()))
    };
    Row {
        suite: suite.name().to_string(),
        name,
        dtype: dtype.map(|d| d.name().to_string()),
        status: "ok".to_string(),
        unit: unit.to_string(),
        value: Some(value),
        runs: times.len(),
        median_s: Some(med),
        min_s: Some(min),
        max_s: Some(max),
        wall_median_s: Some(med),
        first_s: Some(first),
        flops,
        bytes,
        pct_peak: pct,
        timing: "wall".to_string(),
        ..Row::default()
    }
}

fn with_error(mut row: Row, e: ErrorScore) -> Row {
    row.nmse = Some(e.nmse);
    row.err_ratio = Some(e.ratio);
    row.flagged = e.ratio.is_nan() || e.ratio > 1.0;
    row
}

fn session(device: &Device) -> Session {
    let mut s = Session::new(device);
    s.set_fallback(FallbackPolicy::Deny);
    s
}

/// A graph's measured runs: the first (with compilation), the timed ones, the last outputs.
struct Timed {
    first: f64,
    times: Vec<f64>,
    /// Device times of the same runs from GPU timestamps, where the device has them.
    gpu: Option<Vec<f64>>,
    out: Vec<(String, Tensor)>,
}

/// Compiles `g` and runs it once (timed together), then a warm-up and `runs` timed runs.
fn time_graph(
    s: &mut Session,
    g: &Graph,
    inputs: &[(&str, crate::TensorView<'_>)],
    runs: usize,
) -> Result<Timed> {
    let t0 = Instant::now();
    let p = s.compile(g)?;
    s.run(&p, inputs, &[])?;
    let first = t0.elapsed().as_secs_f64();
    s.set_gpu_timing(true);
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
fn failed(e: &Error) -> String {
    match e {
        Error::Unsupported(_) | Error::UnsupportedDType { .. } => format!("unsupported: {e}"),
        _ => format!("error: {e}"),
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

/// A matmul or attention problem on one device: timed, rated, and checked on a sample.
fn problem_row(
    r: &Runner,
    d: &Device,
    rep: &DeviceReport,
    suite: Suite,
    p: &Problem,
    dtype: DType,
) -> Row {
    let name = p.name();
    r.progress(&rep.name, &format!("{name} {dtype}"));
    let roof = rep.roofline.as_ref();
    let row = if !d.info().dtypes.contains(&dtype) {
        not_run(
            suite,
            name,
            Some(dtype),
            format!("unsupported: {dtype}"),
            "GFLOP/s",
        )
    } else if !r.fits(r.predict(roof, p.flops(), p.bytes(dtype))) {
        not_run(
            suite,
            name,
            Some(dtype),
            "skipped: budget".into(),
            "GFLOP/s",
        )
    } else {
        match measure_problem(r, d, p, dtype, roof) {
            Ok(row) => row,
            Err(e) => not_run(suite, name, Some(dtype), failed(&e), "GFLOP/s"),
        }
    };
    let row = Row {
        suite: suite.name().to_string(),
        ..row
    };
    r.finish(&rep.name, &row);
    row
}

fn measure_problem(
    r: &Runner,
    d: &Device,
    p: &Problem,
    dtype: DType,
    roof: Option<&Roofline>,
) -> Result<Row> {
    let g = p.graph(dtype)?;
    let inputs = p.inputs(dtype)?;
    let mut s = session(d);
    for (n, t) in inputs.iter().filter(|(n, _)| p.is_weight(n)) {
        s.load_weight(n, t.view(), dtype)?;
    }
    let views: Vec<(&str, crate::TensorView<'_>)> = inputs
        .iter()
        .filter(|(n, _)| !p.is_weight(n))
        .map(|(n, t)| (*n, t.view()))
        .collect();
    let Timed {
        first,
        times,
        gpu,
        out,
    } = time_graph(&mut s, &g, &views, r.opts.runs())?;
    let got = out.first().map(|(_, t)| t.to_f64_vec()).unwrap_or_default();
    let stored: Vec<Vec<f32>> = inputs.iter().map(|(_, t)| t.to_f32_vec()).collect();
    let e = check::score(p, dtype, &stored, &got);
    // Device time from GPU timestamps where the adapter has them; the wall median beside it.
    let mut row = timed_row(
        Suite::Matmul,
        p.name(),
        Some(dtype),
        first,
        gpu.as_deref().unwrap_or(&times),
        p.flops(),
        p.bytes(dtype),
        roof,
    );
    row.wall_median_s = Some(stats(&times).0);
    if gpu.is_some() {
        row.timing = "timestamp".into();
    }
    Ok(with_error(row, e))
}

/// SmolLM2's shapes with `layers` layers and its vocabulary.
pub fn smollm2(layers: usize, max_len: usize) -> LlamaConfig {
    LlamaConfig {
        vocab: problems::SMOL_VOCAB,
        hidden: problems::SMOL_HIDDEN,
        layers,
        heads: 9,
        kv_heads: 3,
        head_dim: 64,
        ffn: problems::SMOL_FFN,
        rope_theta: 100_000.0,
        rms_eps: 1e-5,
        tie_embeddings: true,
        qkv_bias: false,
        max_len,
    }
}

/// Prefill and decode rows of the random-weight SmolLM2-shaped model, and one block's prefill;
/// logits checked against the CPU's f32 run of the same model.
fn transformer_rows(r: &Runner, d: &Device, rep: &DeviceReport, dtype: DType) -> Vec<Row> {
    let quick = r.opts.quick;
    let (layers, prompt_len, decode) = if quick { (4, 16, 4) } else { (30, 256, 16) };
    let block_tokens = if quick { 32 } else { 256 };
    let mut rows = Vec::new();
    let roof = rep.roofline.as_ref();
    for (name, c, t, steps) in [
        (
            "SmolLM2 block".to_string(),
            smollm2(1, block_tokens + 1),
            block_tokens,
            0,
        ),
        (
            format!("SmolLM2-shaped {layers} layers"),
            smollm2(layers, prompt_len + decode + 1),
            prompt_len,
            decode,
        ),
    ] {
        r.progress(&rep.name, &format!("transformer {name} {dtype}"));
        let tf = t as f64;
        let prefill_flops = c.prefill_flops(t);
        let weight_bytes = (c.parameters() * dtype.size_of()) as f64;
        // 3 runs of prefill + `steps` decode steps, the CPU's f32 reference, and the first run.
        let predicted = (r.predict(roof, prefill_flops, weight_bytes)
            + steps as f64 * r.predict(roof, 0.0, weight_bytes))
            * 5.0
            / (r.opts.runs() + 2) as f64;
        if !d.info().dtypes.contains(&dtype) || !r.fits(predicted) {
            let status = if d.info().dtypes.contains(&dtype) {
                "skipped: budget".to_string()
            } else {
                format!("unsupported: {dtype}")
            };
            let row = not_run(
                Suite::Transformer,
                name.clone(),
                Some(dtype),
                status,
                "tok/s",
            );
            r.finish(&rep.name, &row);
            rows.push(row);
            continue;
        }
        let prompt: Vec<u32> = (0..t as u32).map(|i| (i * 7919) % c.vocab as u32).collect();
        let result = (|| -> Result<Vec<Row>> {
            let want = Llama::new(
                session(&Device::cpu()),
                c.clone(),
                DType::F32,
                crate::model::toy::weight,
            )?
            .forward(&prompt)?
            .logits;
            let t0 = Instant::now();
            let mut m = Llama::new(session(d), c.clone(), dtype, crate::model::toy::weight)?;
            let step = m.forward(&prompt)?;
            let first = t0.elapsed().as_secs_f64();
            let e = check::score_logits(dtype, &step.logits, &want);
            let mut prefill = Vec::new();
            let mut dec = Vec::new();
            // A whole model per run: 3 runs (each with `steps` decode steps) are enough.
            for _ in 0..r.opts.runs().min(3) {
                m.reset();
                let t1 = Instant::now();
                let mut step = m.forward(&prompt)?;
                prefill.push(t1.elapsed().as_secs_f64());
                for _ in 0..steps {
                    let t2 = Instant::now();
                    step = m.forward(&[step.next])?;
                    dec.push(t2.elapsed().as_secs_f64());
                }
            }
            let mut out = Vec::new();
            let mut row = timed_row(
                Suite::Transformer,
                format!("{name}: prefill {t}"),
                Some(dtype),
                first,
                &prefill,
                prefill_flops,
                weight_bytes,
                roof,
            );
            row.unit = "tok/s".into();
            row.value = row.median_s.map(|s| tf / s);
            out.push(with_error(row, e));
            if steps > 0 {
                let mut row = timed_row(
                    Suite::Transformer,
                    format!("{name}: decode at {t}+"),
                    Some(dtype),
                    first,
                    &dec,
                    0.0,
                    weight_bytes,
                    roof,
                );
                row.unit = "tok/s".into();
                row.value = row.median_s.map(|s| 1.0 / s);
                out.push(row);
            }
            Ok(out)
        })();
        match result {
            Ok(v) => {
                for row in &v {
                    r.finish(&rep.name, row);
                }
                rows.extend(v);
            }
            Err(e) => {
                let row = not_run(Suite::Transformer, name, Some(dtype), failed(&e), "tok/s");
                r.finish(&rep.name, &row);
                rows.push(row);
            }
        }
    }
    rows
}

/// Host→device, device→host and device-to-device copy through the public API, in GB/s.
fn memory_rows(r: &Runner, d: &Device, rep: &DeviceReport) -> Vec<Row> {
    let limit = d.info().limits.max_binding_bytes;
    let bytes = (if r.opts.quick { 16u64 << 20 } else { 128 << 20 }).min(limit / 2);
    let n = (bytes / 4) as usize;
    let roof = rep.roofline.as_ref();
    let runs = r.opts.runs();
    let mut rows = Vec::new();
    type Case = (&'static str, f64);
    let cases: [Case; 3] = [
        ("host→device", n as f64 * 4.0),
        ("device→host", n as f64 * 4.0),
        ("device copy", 2.0 * n as f64 * 4.0),
    ];
    for (name, moved) in cases {
        r.progress(&rep.name, &format!("memory {name}"));
        if d.info().backend == "cpu" && name != "device copy" {
            // The CPU backend computes in host memory: nothing crosses a bus.
            let row = not_run(
                Suite::Memory,
                name.to_string(),
                None,
                "n/a: the CPU backend's memory is host memory".into(),
                "GB/s",
            );
            r.finish(&rep.name, &row);
            rows.push(row);
            continue;
        }
        let result = (|| -> Result<(Row, bool)> {
            let x = Tensor::new(&[n], problems::data(n, 9))?;
            let mut s = session(d);
            let mut g = Graph::new();
            let (timed, want): (Timed, Vec<f32>) = match name {
                "host→device" => {
                    // The upload, then one element back: a 4-byte readback.
                    let xi = g.input("x", [n], DType::F32);
                    let y = g.slice(xi, 0, n - 1, 1)?;
                    g.output("y", y)?;
                    let t = time_graph(&mut s, &g, &[("x", x.view())], runs)?;
                    (t, x.to_f32_vec()[n - 1..].to_vec())
                }
                "device→host" => {
                    s.load_weight("w", x.view(), DType::F32)?;
                    let wi = g.weight("w", [n], DType::F32);
                    g.output("w", wi)?;
                    (time_graph(&mut s, &g, &[], runs)?, x.to_f32_vec())
                }
                _ => {
                    // Weight → state, nothing read back.
                    s.load_weight("w", x.view(), DType::F32)?;
                    s.create_state("s", &[n], DType::F32)?;
                    g.state("s", [n], DType::F32);
                    let wi = g.weight("w", [n], DType::F32);
                    g.write_state("s", wi, 0, crate::Offset::Fixed(0))?;
                    let mut t = time_graph(&mut s, &g, &[], runs)?;
                    t.out = vec![("s".into(), s.read_state("s")?)];
                    (t, x.to_f32_vec())
                }
            };
            let got = timed
                .out
                .first()
                .map(|(_, t)| t.to_f32_vec())
                .unwrap_or_default();
            let exact = got.len() == want.len()
                && got
                    .iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
            let row = timed_row(
                Suite::Memory,
                format!("{name} {} MiB", bytes >> 20),
                None,
                timed.first,
                &timed.times,
                0.0,
                moved,
                roof,
            );
            Ok((row, exact))
        })();
        let row = match result {
            Ok((row, exact)) => with_error(
                row,
                ErrorScore {
                    nmse: if exact { 0.0 } else { 1.0 },
                    ratio: if exact { 0.0 } else { f64::INFINITY },
                },
            ),
            Err(e) => not_run(Suite::Memory, name.to_string(), None, failed(&e), "GB/s"),
        };
        r.finish(&rep.name, &row);
        rows.push(row);
    }
    rows
}

/// Launch and synchronisation costs in µs (median over many runs).
fn overhead_rows(
    r: &Runner,
    d: &Device,
    rep: &DeviceReport,
    raw: Option<&roofline::RawGpu>,
) -> Vec<Row> {
    let runs = if r.opts.quick { 20 } else { 100 };
    let mut rows = Vec::new();
    let us_row = |name: &str, first: f64, times: &[f64], value: Option<f64>| {
        let (med, min, max) = stats(times);
        Row {
            suite: Suite::Overhead.name().to_string(),
            name: name.to_string(),
            status: "ok".to_string(),
            unit: "µs".to_string(),
            value: value.or(Some(med * 1e6)),
            runs: times.len(),
            median_s: Some(med),
            min_s: Some(min),
            max_s: Some(max),
            wall_median_s: Some(med),
            first_s: Some(first),
            timing: "wall".to_string(),
            ..Row::default()
        }
    };
    r.progress(&rep.name, "overhead");
    // A chain of `len` adds on a 4-element state, written back; no readback.
    let chain = |len: usize| -> Result<(f64, Vec<f64>, u64, Vec<f32>)> {
        let mut s = session(d);
        s.create_state("s", &[4], DType::F32)?;
        let mut g = Graph::new();
        let mut x = g.state("s", [4], DType::F32);
        let one = g.constant(&[1.0], [1], DType::F32)?;
        for _ in 0..len {
            x = g.add(x, one)?;
        }
        g.write_state("s", x, 0, crate::Offset::Fixed(0))?;
        let t = time_graph(&mut s, &g, &[], runs)?;
        let launches = s.last_run_stats().launch_count;
        Ok((t.first, t.times, launches, s.read_state("s")?.to_f32_vec()))
    };
    let result = (|| -> Result<Vec<Row>> {
        let mut out = Vec::new();
        // 1. Session::run with a readback of 4 elements.
        let mut s = session(d);
        let mut g = Graph::new();
        let xi = g.input("x", [4], DType::F32);
        let y = g.add(xi, xi)?;
        g.output("y", y)?;
        let x = Tensor::new(&[4], vec![1.0, -2.0, 0.5, 3.0])?;
        let Timed {
            first: f,
            times: t,
            out: o,
            ..
        } = time_graph(&mut s, &g, &[("x", x.view())], runs)?;
        let got = o.first().map(|(_, t)| t.to_f32_vec()).unwrap_or_default();
        let ok = got == [2.0, -4.0, 1.0, 6.0];
        out.push(with_error(
            us_row("Session::run, 1 op + readback", f, &t, None),
            ErrorScore {
                nmse: if ok { 0.0 } else { 1.0 },
                ratio: if ok { 0.0 } else { f64::INFINITY },
            },
        ));
        // 2. One tiny kernel, no readback.
        let (f1, t1, l1, s1) = chain(1)?;
        // The state went through 2 + runs runs of +1.
        let ok1 = s1.iter().all(|&v| v == (runs + 2) as f32);
        out.push(with_error(
            us_row("one tiny kernel (no readback)", f1, &t1, None),
            ErrorScore {
                nmse: if ok1 { 0.0 } else { 1.0 },
                ratio: if ok1 { 0.0 } else { f64::INFINITY },
            },
        ));
        // 3. Per launch inside one submission: 64 chained kernels against 1 (per op where the
        // backend does not count launches: the CPU).
        let (f64_, t64, l64, _) = chain(64)?;
        let extra = if l64 > l1 { l64 - l1 } else { 63 };
        let per = (stats(&t64).0 - stats(&t1).0) / extra as f64 * 1e6;
        out.push(us_row(
            "per kernel in one run (64-op chain)",
            f64_,
            &t64,
            Some(per),
        ));
        Ok(out)
    })();
    match result {
        Ok(v) => rows.extend(v),
        Err(e) => rows.push(not_run(
            Suite::Overhead,
            "overhead".into(),
            None,
            failed(&e),
            "µs",
        )),
    }
    // 4. Raw wgpu's submit + wait of one tiny dispatch: the floor on this adapter.
    if let Some(raw) = raw
        && let Ok(t) = raw.submit_wait_floor(runs)
    {
        let mut row = us_row("raw wgpu submit+wait (floor)", 0.0, &t, None);
        row.first_s = None;
        rows.push(row);
    }
    for row in &rows {
        r.finish(&rep.name, row);
    }
    rows
}
