//! The `polytensor` command line: `devices` lists every device, `demo` runs a matmul on each one
//! and checks it against the CPU reference, then the toy transformer on each one; `generate`
//! runs a Llama-family checkpoint directory.

use std::process::ExitCode;
use std::time::Instant;

#[path = "polytensor/bench.rs"]
mod bench;

use clap::{Parser, Subcommand};
use polytensor::model::llama::Llama;
use polytensor::model::text::{ChatTemplate, Sampler, Sampling, Tokenizer};
use polytensor::{DType, Device, Error, Graph, Result, Session, Tensor};

#[derive(Parser)]
#[command(
    name = "polytensor",
    version,
    about = "Hardware-agnostic tensor runtime: devices, demo, bench, generate, embed"
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
    /// Generate text with a Llama-family checkpoint directory (config.json, model.safetensors
    /// or a sharded set, tokenizer.json), streaming tokens to stdout.
    Generate {
        /// The checkpoint directory.
        #[arg(long)]
        model: std::path::PathBuf,
        #[arg(long)]
        prompt: String,
        /// A device index or a name fragment (see `devices`); default: the best device.
        #[arg(long)]
        device: Option<String>,
        /// Weight and activation storage: f32, f16 or bf16 (computed in f32).
        #[arg(long, default_value = "f32")]
        dtype: String,
        #[arg(long, default_value_t = 64)]
        max_tokens: usize,
        /// 0: greedy.
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        /// 0: off.
        #[arg(long, default_value_t = 0)]
        top_k: usize,
        #[arg(long, default_value_t = 1.0)]
        top_p: f32,
        #[arg(long, default_value_t = 0.0)]
        min_p: f32,
        #[arg(long, default_value_t = 1.0)]
        repeat_penalty: f32,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Wrap the prompt as a user message in the model's chat template (chat_template.jinja
        /// or tokenizer_config.json) and generate the assistant's reply.
        #[arg(long)]
        chat: bool,
    },
    /// Measure every device: roofline (peak FMA, copy, triad), matmul, attention, transformer,
    /// memory and overhead suites, each row with its rate, % of the device's measured peak and
    /// its error against an f64 reference (flagged above the op's tolerance).
    Bench(bench::BenchArgs),
    /// Sentence embeddings with a BERT-family checkpoint directory (config.json,
    /// model.safetensors, tokenizer.json), and their cosine similarity matrix.
    Embed {
        #[arg(long)]
        model: std::path::PathBuf,
        /// The sentences.
        #[arg(required = true)]
        sentences: Vec<String>,
        #[arg(long)]
        device: Option<String>,
        /// f32, f16 or bf16 storage.
        #[arg(long, default_value = "f32")]
        dtype: String,
        /// mean (over the real tokens) or cls.
        #[arg(long, default_value = "mean")]
        pooling: String,
        /// Print JSON: {"embeddings": [...], "similarity": [...]}.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Devices => devices(),
        Command::Demo { n, runs, device } => demo(n, runs.max(1), device.as_deref()),
        Command::Generate {
            model,
            prompt,
            device,
            dtype,
            max_tokens,
            temperature,
            top_k,
            top_p,
            min_p,
            repeat_penalty,
            seed,
            chat,
        } => generate(
            &model,
            &prompt,
            chat,
            device.as_deref(),
            &dtype,
            max_tokens,
            Sampling {
                temperature,
                top_k,
                top_p,
                min_p,
                repetition_penalty: repeat_penalty,
                seed,
            },
        ),
        Command::Bench(args) => bench::run(args),
        Command::Embed {
            model,
            sentences,
            device,
            dtype,
            pooling,
            json,
        } => embed(
            &model,
            &sentences,
            device.as_deref(),
            &dtype,
            &pooling,
            json,
        ),
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
        let a = Tensor::from_f32(&[n, n], polytensor::bench::problems::data(n * n, 1), dtype)?;
        let b = Tensor::from_f32(&[n, n], polytensor::bench::problems::data(n * n, 2), dtype)?;
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

/// Peak resident memory of this process (Linux), for the summary line.
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn generate(
    dir: &std::path::Path,
    prompt: &str,
    chat: bool,
    device: Option<&str>,
    dtype: &str,
    max_tokens: usize,
    sampling: Sampling,
) -> Result<bool> {
    use std::io::Write;
    let (device, dtype) = device_and_dtype(device, dtype)?;
    let mut sampler = Sampler::new(sampling)?;
    let tokenizer = Tokenizer::load(dir)?;
    let ids = if chat {
        let template = ChatTemplate::load(dir)?.ok_or_else(|| Error::InvalidArgument {
            op: "generate",
            msg: format!(
                "--chat: {} has no chat template (chat_template.jinja or `chat_template` in \
                 tokenizer_config.json)",
                dir.display()
            ),
        })?;
        // The template writes the special tokens itself.
        tokenizer.encode(&template.render(&[("user", prompt)], true)?, false)?
    } else {
        tokenizer.encode(prompt, true)?
    };
    // The cache holds the prompt and the new tokens (at most the model's own limit).
    let limit = polytensor::model::load::llama_config(dir, None)?.max_len;
    let max_len = (ids.len() + max_tokens).min(limit.max(ids.len() + 1));
    let t0 = Instant::now();
    let mut model = Llama::load(dir, Session::new(&device), dtype, Some(max_len))?;
    eprintln!(
        "loaded {} on {} ({dtype}) in {:.2} s; prompt: {} tokens",
        dir.display(),
        device.info().name,
        t0.elapsed().as_secs_f64(),
        ids.len()
    );
    let mut out = std::io::stdout().lock();
    if !chat {
        let _ = write!(out, "{prompt}");
    }
    let _ = out.flush();
    let mut stream = tokenizer.stream();
    let mut seen = ids.clone();
    let t1 = Instant::now();
    let mut step = model.forward(&ids)?;
    let prefill = t1.elapsed().as_secs_f64();
    let t2 = Instant::now();
    let mut produced = 0usize;
    loop {
        let next = sampler.next(&step.logits, &seen);
        produced += 1;
        if tokenizer.eos.contains(&next) {
            break;
        }
        seen.push(next);
        if let Some(piece) = stream.push(next)? {
            let _ = write!(out, "{piece}");
            let _ = out.flush();
        }
        if produced >= max_tokens || model.position() >= max_len {
            break;
        }
        step = model.forward(&[next])?;
    }
    if let Some(piece) = stream.finish()? {
        let _ = write!(out, "{piece}");
    }
    let _ = writeln!(out);
    let decode = t2.elapsed().as_secs_f64();
    eprintln!(
        "prefill: {} tokens, {:.1} tok/s; decode: {} tokens, {:.1} tok/s; peak memory {}",
        ids.len(),
        ids.len() as f64 / prefill,
        produced.saturating_sub(1),
        produced.saturating_sub(1) as f64 / decode.max(1e-9),
        peak_rss().map_or("unknown".to_string(), fmt_bytes)
    );
    Ok(true)
}

/// `--device` (default: the best) and `--dtype` (f32, f16 or bf16).
fn device_and_dtype(device: Option<&str>, dtype: &str) -> Result<(Device, DType)> {
    let dtype = match dtype {
        "f32" => DType::F32,
        "f16" => DType::F16,
        "bf16" => DType::BF16,
        other => {
            return Err(Error::InvalidArgument {
                op: "cli",
                msg: format!("--dtype {other}: f32, f16 or bf16 expected"),
            });
        }
    };
    let device = match device {
        Some(q) => Device::select(&Device::list(), Some(q))?,
        None => Device::auto()?,
    };
    Ok((device, dtype))
}

fn embed(
    dir: &std::path::Path,
    sentences: &[String],
    device: Option<&str>,
    dtype: &str,
    pooling: &str,
    json: bool,
) -> Result<bool> {
    use polytensor::model::bert::{Bert, Pooling, cosine_matrix};
    let (device, dtype) = device_and_dtype(device, dtype)?;
    let pooling = match pooling {
        "mean" => Pooling::Mean,
        "cls" => Pooling::Cls,
        other => {
            return Err(Error::InvalidArgument {
                op: "embed",
                msg: format!("--pooling {other}: mean or cls expected"),
            });
        }
    };
    let tokenizer = Tokenizer::load(dir)?;
    let batch = sentences
        .iter()
        .map(|s| tokenizer.encode(s, true))
        .collect::<Result<Vec<_>>>()?;
    let mut model = Bert::load(dir, Session::new(&device), dtype, batch.len())?;
    let t0 = Instant::now();
    let out = model.encode(&batch, pooling)?;
    let took = t0.elapsed().as_secs_f64();
    let sim = cosine_matrix(&out.embeddings);
    if json {
        let v = serde_json::json!({"embeddings": out.embeddings, "similarity": sim});
        println!("{v}");
    } else {
        for (s, e) in sentences.iter().zip(&out.embeddings) {
            let head: Vec<String> = e.iter().take(6).map(|x| format!("{x:+.4}")).collect();
            println!("{s:?}: [{}, …] ({} dims)", head.join(", "), e.len());
        }
        println!("cosine similarity:");
        for (i, row) in sim.iter().enumerate() {
            let cells: Vec<String> = row.iter().map(|x| format!("{x:6.3}")).collect();
            println!("  [{i}] {}", cells.join(" "));
        }
    }
    eprintln!(
        "{} sentences on {} ({dtype}) in {:.1} ms ({:.0} sentences/s)",
        sentences.len(),
        device.info().name,
        took * 1e3,
        sentences.len() as f64 / took
    );
    Ok(true)
}
