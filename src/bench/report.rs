//! The bench's outputs: the terminal table, JSON in and out, `--compare`'s ratio tables, the
//! run's provenance (git hash, date, machine), and where criterion keeps its results.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::{Report, Row};
use crate::{Error, Result};

fn fmt_time(s: Option<f64>) -> String {
    match s {
        Some(s) if s >= 1.0 => format!("{s:.2} s"),
        Some(s) if s >= 1e-3 => format!("{:.2} ms", s * 1e3),
        Some(s) => format!("{:.1} µs", s * 1e6),
        None => "-".into(),
    }
}

fn fmt_value(v: Option<f64>) -> String {
    match v {
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) if v >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
        None => "-".into(),
    }
}

/// One row as a table line (also printed as each row finishes).
pub fn row_line(device: &str, r: &Row) -> String {
    let err = match (r.err_ratio, r.flagged) {
        (Some(x), true) => format!("{x:.3e} FLAGGED"),
        (Some(x), false) => format!("{x:.3}"),
        (None, _) => "-".into(),
    };
    let nmse = r.nmse.map_or("-".into(), |x| format!("{x:.1e}"));
    let pct = r.pct_peak.map_or("-".into(), |x| format!("{x:.0} %"));
    let status = if r.status == "ok" { "" } else { &r.status };
    let timing = if r.timing == "timestamp" {
        "gpu"
    } else {
        "wall"
    };
    format!(
        "{:<18} {:<11} {:<40} {:<5} {:>10} {:>4} {:>10} {:>10} {:>8} {:>6} {:>8} {:>8} {status}",
        short_name(device),
        r.suite,
        r.name,
        r.dtype.as_deref().unwrap_or(""),
        fmt_time(r.median_s),
        if r.median_s.is_some() { timing } else { "" },
        fmt_time(r.first_s),
        fmt_value(r.value),
        r.unit,
        pct,
        nmse,
        err,
    )
}

/// A device name without its parenthesised details: `llvmpipe [Vulkan]`.
pub fn short_name(s: &str) -> String {
    let mut out = String::new();
    let mut depth = 0;
    for c in s.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The header matching [`row_line`].
pub fn header() -> String {
    format!(
        "{:<18} {:<11} {:<40} {:<5} {:>10} {:>4} {:>10} {:>10} {:>8} {:>6} {:>8} {:>8}",
        "device",
        "suite",
        "row",
        "dtype",
        "median",
        "by",
        "first run",
        "rate",
        "unit",
        "%peak",
        "NMSE",
        "err/tol"
    )
}

/// The whole report as a terminal table: each device's roofline, then its rows.
pub fn table(rep: &Report) -> String {
    let mut s = String::new();
    for d in &rep.devices {
        let _ = writeln!(s, "\n{} ({} / {})", d.name, d.backend, d.api);
        if let Some(r) = &d.roofline {
            let _ = writeln!(
                s,
                "  roofline: {:.1} GFLOP/s f32 FMA peak, copy {:.1} GB/s, triad {:.1} GB/s ({})",
                r.peak_gflops, r.copy_gbps, r.triad_gbps, r.timing
            );
        }
        let _ = writeln!(s, "{}", header());
        for r in &d.rows {
            let _ = writeln!(s, "{}", row_line(&d.name, r));
        }
    }
    let flagged = rep.flagged();
    if !flagged.is_empty() {
        let _ = writeln!(s, "\nFLAGGED (error above the op's tolerance):");
        for f in flagged {
            let _ = writeln!(s, "  {f}");
        }
    }
    s
}

/// Writes the report as pretty JSON.
pub fn write_json(rep: &Report, path: &Path) -> Result<()> {
    let text = serde_json::to_string_pretty(rep).map_err(|e| Error::InvalidArgument {
        op: "bench",
        msg: format!("serialising the report: {e}"),
    })?;
    std::fs::write(path, text).map_err(|e| Error::InvalidArgument {
        op: "bench",
        msg: format!("writing {}: {e}", path.display()),
    })
}

/// Reads a report written by `--json` (any machine), checking its schema version.
pub fn read_json(path: &Path) -> Result<Report> {
    let bad = |msg: String| Error::InvalidArgument { op: "bench", msg };
    let text = std::fs::read_to_string(path)
        .map_err(|e| bad(format!("reading {}: {e}", path.display())))?;
    let rep: Report = serde_json::from_str(&text)
        .map_err(|e| bad(format!("{} is not a bench report: {e}", path.display())))?;
    if rep.schema_version != super::SCHEMA_VERSION {
        return Err(bad(format!(
            "{} has schema version {}, this polytensor reads {}",
            path.display(),
            rep.schema_version,
            super::SCHEMA_VERSION
        )));
    }
    Ok(rep)
}

/// `--compare`: one column per (report, device), one line per row (suite, name, dtype), each
/// cell the row's value and its speed relative to the first column that has the row
/// (rates: value ÷ baseline; µs rows: baseline ÷ value, so > 1 is faster everywhere).
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    pub columns: Vec<String>,
    pub rows: Vec<CompareRow>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct CompareRow {
    pub suite: String,
    pub name: String,
    pub dtype: Option<String>,
    pub unit: String,
    pub values: Vec<Option<f64>>,
    pub ratios: Vec<Option<f64>>,
}

/// Compares reports labelled by their file names.
pub fn compare(reports: &[(String, Report)]) -> Comparison {
    let mut columns = Vec::new();
    let mut cols: Vec<&super::DeviceReport> = Vec::new();
    for (label, rep) in reports {
        for d in &rep.devices {
            columns.push(format!("{label}: {}", short_name(&d.name)));
            cols.push(d);
        }
    }
    let mut rows: Vec<CompareRow> = Vec::new();
    for (ci, d) in cols.iter().enumerate() {
        for r in &d.rows {
            let pos = rows
                .iter()
                .position(|x| x.suite == r.suite && x.name == r.name && x.dtype == r.dtype);
            let i = pos.unwrap_or_else(|| {
                rows.push(CompareRow {
                    suite: r.suite.clone(),
                    name: r.name.clone(),
                    dtype: r.dtype.clone(),
                    unit: r.unit.clone(),
                    values: vec![None; cols.len()],
                    ratios: vec![None; cols.len()],
                });
                rows.len() - 1
            });
            rows[i].values[ci] = r.value.filter(|_| r.status.starts_with("ok"));
        }
    }
    for row in &mut rows {
        let base = row.values.iter().flatten().next().copied();
        let lower_is_better = row.unit == "µs";
        for (ratio, v) in row.ratios.iter_mut().zip(&row.values) {
            *ratio = match (base, v) {
                (Some(b), Some(v)) if lower_is_better => Some(b / v),
                (Some(b), Some(v)) => Some(v / b),
                _ => None,
            };
        }
    }
    Comparison { columns, rows }
}

/// The comparison as a Markdown table.
pub fn comparison_table(c: &Comparison) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| suite | row | dtype | unit | {} |",
        c.columns.join(" | ")
    );
    let _ = writeln!(s, "|---|---|---|---|{}", "---|".repeat(c.columns.len()));
    for r in &c.rows {
        let cells: Vec<String> = r
            .values
            .iter()
            .zip(&r.ratios)
            .map(|(v, q)| match (v, q) {
                (Some(v), Some(q)) => format!("{} (×{q:.2})", fmt_value(Some(*v))),
                _ => "-".into(),
            })
            .collect();
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            r.suite,
            r.name,
            r.dtype.as_deref().unwrap_or(""),
            r.unit,
            cells.join(" | ")
        );
    }
    s
}

/// The source tree's commit, when it is a git checkout and git is installed.
pub fn git_hash() -> Option<String> {
    let out = std::process::Command::new("git")
        .args([
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "rev-parse",
            "--short=12",
            "HEAD",
        ])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|h| !h.is_empty())
}

/// Now, UTC, as RFC 3339 (`2026-12-02T04:30:00Z`).
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's days → civil date.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// This machine: OS, architecture, CPU model and threads.
pub fn machine() -> super::Machine {
    super::Machine {
        os: std::env::consts::OS.to_string(),
        arch: std::env::consts::ARCH.to_string(),
        cpu: crate::Device::cpu().info().name.clone(),
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
    }
}

/// Where criterion keeps its results: `CRITERION_HOME`, else `CARGO_TARGET_DIR/criterion`,
/// else the target directory the running bench executable sits in (`<target>/<profile>/deps/`,
/// or `<target>/<triple>/<profile>/deps/`), else `target/criterion`.
pub fn criterion_dir() -> PathBuf {
    if let Some(h) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(h);
    }
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(t).join("criterion");
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            let deps = exe.parent()?;
            let target = (deps.file_name()? == "deps").then(|| deps.parent()?.parent())??;
            // `--target <triple>` builds sit one level deeper: <target>/<triple>/<profile>/deps.
            match target.parent() {
                Some(up) if !target.join("criterion").exists() && up.join("criterion").exists() => {
                    Some(up.to_path_buf())
                }
                _ => Some(target.to_path_buf()),
            }
        })
        .map_or_else(
            || PathBuf::from("target/criterion"),
            |t| t.join("criterion"),
        )
}

/// The median ns of one criterion benchmark (`group/function/parameter`), from its saved
/// estimates under [`criterion_dir`].
pub fn criterion_median_ns(id: &str) -> Option<f64> {
    let path = criterion_dir().join(id).join("new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["median"]["point_estimate"].as_f64()
}
