//! The `polytensor` command line: `devices` lists every device, `demo` runs a matmul on each one
//! and checks it against the CPU reference, then the toy transformer on each one.

use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use polytensor::{DType, Device, Graph, Result, Session, Tensor};

#[derive(Parser)]
#[command(
    name = "polytensor",
    version,
    about = "Hardware-agnostic tensor runtime: devices, demo"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List every device with its backend, type, dtypes and limits; mark the one `auto` picks.
    Devices,
    /// Run an n×n×n matmul in f32, f16 and bf16 on every device, checked against the CPU
    /// reference (time, GFLOP/s, error); then the toy transformer (a small random-weight
    /// Llama-style model) generating on every device, teacher-forced on the CPU's tokens.
    Demo {
        /// Matrix size.
        #[arg(long, default_value_t = 512)]
        n: usize,
        /// Timed runs per device and dtype (the best is reported).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Only devices whose name contains this (case-insensitive), e.g. `vulkan`.
        #[arg(long)]
        device: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Devices => devices(),
        Command::Demo { n, runs, device } => demo(n, runs.max(1), device.as_deref()),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn fmt_bytes(b: u64) -> String {
    if b >= 1 << 40 {
        "unlimited".to_string()
    } else if b >= 1 << 20 {
        format!("{} MiB", b >> 20)
    } else {
        format!("{b} B")
    }
}

fn devices() -> Result<bool> {
    let list = Device::list();
    let auto = Device::auto()?;
    for (i, d) in list.iter().enumerate() {
        let info = d.info();
        let mark = if info.name == auto.info().name {
            "*"
        } else {
            " "
        };
        println!("{mark}[{i}] {}", info.name);
        let soft = if info.software { " (software)" } else { "" };
        println!(
            "      backend {} / {}, {}{soft}",
            info.backend, info.api, info.device_type
        );
        let dtypes: Vec<&str> = info.dtypes.iter().map(|d| d.name()).collect();
        println!("      dtypes {}", dtypes.join(" "));
        println!(
            "      max buffer {}, max binding {}",
            fmt_bytes(info.limits.max_buffer_bytes),
            fmt_bytes(info.limits.max_binding_bytes)
        );
        for (k, v) in &info.details {
            println!("      {k}: {v}");
        }
    }
    println!("* = Device::auto() (override with POLYTENSOR_DEVICE=cpu|<index>|<name substring>)");
    Ok(true)
}

/// Deterministic values in [-1, 1).
fn data(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect()
}

fn matmul_graph(n: usize, dtype: DType) -> Result<Graph> {
    let mut g = Graph::new();
    let a = g.input("a", [n, n], dtype);
    let b = g.input("b", [n, n], dtype);
    let c = g.matmul(a, b)?;
    g.output("c", c)?;
    Ok(g)
}

fn demo(n: usize, runs: usize, filter: Option<&str>) -> Result<bool> {
    let mut list = Device::list();
    if let Some(f) = filter {
        let f = f.to_lowercase();
        list.retain(|d| d.info().name.to_lowercase().contains(&f));
    }
    let auto = Device::auto()?;
    let gpus = list.iter().filter(|d| d.info().backend != "cpu").count();
    println!(
        "polytensor demo: {n}×{n}×{n} matmul on every device (* = the one Device::auto() picks)"
    );
    if gpus == 0 {
        println!("no GPU adapter found: running on the CPU backend only");
    }
    println!(
        "  {:<44} {:<8} {:<5} {:>10} {:>10} {:>9} {:>10} {:>10}  check",
        "device", "api", "dtype", "first ms", "best ms", "GFLOP/s", "max |err|", "bound"
    );
    let flops = 2.0 * (n as f64).powi(3);
    let mut all_ok = true;
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let a = Tensor::from_f32(&[n, n], data(n * n, 1), dtype)?;
        let b = Tensor::from_f32(&[n, n], data(n * n, 2), dtype)?;
        let graph = matmul_graph(n, dtype)?;
        let inputs = [("a", a.view()), ("b", b.view())];
        let mut reference = Session::new(&Device::reference());
        let rp = reference.compile(&graph)?;
        let want = reference.run(&rp, &inputs, &[])?.get("c")?.to_f64_vec();
        for device in &list {
            let info = device.info();
            if !info.dtypes.contains(&dtype) {
                continue;
            }
            let mut s = Session::new(device);
            let t0 = Instant::now();
            let p = s.compile(&graph)?;
            let got = s.run(&p, &inputs, &[])?;
            let first = t0.elapsed().as_secs_f64();
            let mut best = f64::INFINITY;
            for _ in 0..runs {
                let t = Instant::now();
                s.run(&p, &inputs, &[])?;
                best = best.min(t.elapsed().as_secs_f64());
            }
            let got = got.get("c")?.to_f64_vec();
            let err = got
                .iter()
                .zip(&want)
                .map(|(g, w)| (g - w).abs())
                .fold(0.0, f64::max);
            let wmax = want.iter().fold(0.0f64, |m, w| m.max(w.abs()));
            // f32 accumulation over n terms of magnitude ≤ 1, plus one rounding to the dtype.
            let bound =
                2.0 * n as f64 * DType::F32.epsilon() * n as f64 + 2.0 * dtype.epsilon() * wmax;
            let ok = err <= bound;
            all_ok &= ok;
            let mark = if info.name == auto.info().name {
                "*"
            } else {
                " "
            };
            let name: String = info.name.chars().take(43).collect();
            println!(
                "{mark} {name:<44} {:<8} {:<5} {:>10.2} {:>10.3} {:>9.1} {:>10.2e} {:>10.2e}  {}",
                info.api,
                dtype.name(),
                first * 1e3,
                best * 1e3,
                flops / best / 1e9,
                err,
                bound,
                if ok { "ok" } else { "FAIL" }
            );
        }
    }
    println!();
    let reports = polytensor::model::toy::run_everywhere(&list)?;
    print!("{}", polytensor::model::toy::table(&reports));
    for r in &reports {
        if r.mismatches > 0 {
            println!(
                "FAIL: {} chose another token at {} compared step(s)",
                r.device, r.mismatches
            );
            all_ok = false;
        }
    }
    Ok(all_ok)
}
