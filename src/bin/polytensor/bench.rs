//! `polytensor bench`: the command line over `polytensor::bench` (run the suites, or compare
//! saved reports).

use polytensor::Result;
use polytensor::bench::{self, Options, Suite, report};

/// `polytensor bench`'s arguments.
#[derive(clap::Args)]
pub(crate) struct BenchArgs {
    /// `all`, or comma-separated device indices / name fragments (see `devices`).
    #[arg(long, default_value = "all")]
    device: String,
    /// Comma-separated: roofline, matmul, attention, transformer, memory, overhead (or all).
    #[arg(long, default_value = "all")]
    suite: String,
    /// Comma-separated storage dtypes; default f32 with --quick, all three otherwise.
    #[arg(long)]
    dtype: Option<String>,
    /// Small sizes, 3 timed runs: under a minute with every device here.
    #[arg(long)]
    quick: bool,
    /// Time budget in seconds: rows predicted past it print "skipped: budget".
    #[arg(long, default_value_t = 600.0)]
    budget: f64,
    /// Write the report as JSON (schema: src/bench/schema.json).
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Write the charts (roofline per device, bars per suite) as one SVG.
    #[arg(long)]
    svg: Option<std::path::PathBuf>,
    /// Compare earlier JSON reports (no run): ratio tables across machines and vendors.
    #[arg(long, num_args = 1..)]
    compare: Vec<std::path::PathBuf>,
}

/// `polytensor bench`: runs the suites (or compares saved reports); false when a row is flagged.
pub(crate) fn run(a: BenchArgs) -> Result<bool> {
    if !a.compare.is_empty() {
        let reports = a
            .compare
            .iter()
            .map(|p| {
                let label = p.file_stem().map_or_else(
                    || p.display().to_string(),
                    |s| s.to_string_lossy().into_owned(),
                );
                Ok((label, report::read_json(p)?))
            })
            .collect::<Result<Vec<_>>>()?;
        print!("{}", report::comparison_table(&report::compare(&reports)));
        return Ok(true);
    }
    let devices = bench::select_devices(&a.device)?;
    let mut opts = Options::new(a.quick);
    opts.suites = Suite::parse_list(&a.suite)?;
    if let Some(d) = &a.dtype {
        opts.dtypes = bench::parse_dtypes(d)?;
    }
    opts.budget_s = a.budget;
    eprintln!(
        "polytensor bench{}: {} device(s), suites {}, dtypes {}, budget {} s",
        if a.quick { " --quick" } else { "" },
        devices.len(),
        opts.suites
            .iter()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(","),
        opts.dtypes
            .iter()
            .map(|d| d.name())
            .collect::<Vec<_>>()
            .join(","),
        opts.budget_s
    );
    let rep = bench::run(&devices, &opts)?;
    print!("{}", report::table(&rep));
    println!(
        "\n{} rows in {:.1} s. median: by GPU timestamps (gpu) or the wall clock around a full \
         sync (wall); first run: with compilation; % peak: of the device's own roofline at the \
         row's FLOP/byte (GB/s rows: of its bandwidth); err/tol: the largest |error| ÷ the op's \
         tolerance on a sample (> 1 is FLAGGED)",
        rep.devices.iter().map(|d| d.rows.len()).sum::<usize>(),
        rep.elapsed_s
    );
    if let Some(p) = &a.json {
        report::write_json(&rep, p)?;
        println!("wrote {}", p.display());
    }
    if let Some(p) = &a.svg {
        polytensor::bench::svg::write(&rep, p)?;
        println!("wrote {}", p.display());
    }
    Ok(rep.flagged().is_empty())
}
