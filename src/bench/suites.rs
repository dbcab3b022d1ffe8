//! The suites' rows on one device: matmul and attention (timed, checked against an f64
//! reference on a sample), the SmolLM2-shaped transformer, memory copies and launch overheads.

use std::time::Instant;

use super::check::{self, ErrorScore};
use super::problems::{self, Problem};
use super::roofline::{self, Roofline};
use super::rows::{
    Runner, Timed, failed, measured, not_run, session, stats, time_graph, timed_row, with_error,
};
use super::{DeviceReport, Row, Suite};
use crate::model::llama::{Llama, LlamaConfig};
use crate::{DType, Device, Graph, Result, Tensor};

/// A matmul or attention problem on one device: timed, rated, and checked on a sample.
pub(super) fn problem_row(
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
    } = time_graph(&mut s, &g, &views, r.opts.runs(), true)?;
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
pub(super) fn transformer_rows(
    r: &Runner,
    d: &Device,
    rep: &DeviceReport,
    dtype: DType,
) -> Vec<Row> {
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
pub(super) fn memory_rows(r: &Runner, d: &Device, rep: &DeviceReport) -> Vec<Row> {
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
                    let t = time_graph(&mut s, &g, &[("x", x.view())], runs, false)?;
                    (t, x.to_f32_vec()[n - 1..].to_vec())
                }
                "device→host" => {
                    s.load_weight("w", x.view(), DType::F32)?;
                    let wi = g.weight("w", [n], DType::F32);
                    g.output("w", wi)?;
                    (time_graph(&mut s, &g, &[], runs, false)?, x.to_f32_vec())
                }
                _ => {
                    // Weight → state, nothing read back.
                    s.load_weight("w", x.view(), DType::F32)?;
                    s.create_state("s", &[n], DType::F32)?;
                    g.state("s", [n], DType::F32);
                    let wi = g.weight("w", [n], DType::F32);
                    g.write_state("s", wi, 0, crate::Offset::Fixed(0))?;
                    let mut t = time_graph(&mut s, &g, &[], runs, false)?;
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
            Ok((row, exact)) => with_error(row, ErrorScore::exact(exact)),
            Err(e) => not_run(Suite::Memory, name.to_string(), None, failed(&e), "GB/s"),
        };
        r.finish(&rep.name, &row);
        rows.push(row);
    }
    rows
}

/// Launch and synchronisation costs in µs (median over many runs).
pub(super) fn overhead_rows(
    r: &Runner,
    d: &Device,
    rep: &DeviceReport,
    raw: Option<&roofline::RawGpu>,
) -> Vec<Row> {
    let runs = if r.opts.quick { 20 } else { 100 };
    let mut rows = Vec::new();
    let us_row = |name: &str, first: f64, times: &[f64], value: Option<f64>| {
        let mut row = measured(Suite::Overhead, name.to_string(), None, "µs", first, times);
        row.value = value.or(row.median_s.map(|m| m * 1e6));
        row
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
        let t = time_graph(&mut s, &g, &[], runs, false)?;
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
        } = time_graph(&mut s, &g, &[("x", x.view())], runs, false)?;
        let got = o.first().map(|(_, t)| t.to_f32_vec()).unwrap_or_default();
        let ok = got == [2.0, -4.0, 1.0, 6.0];
        out.push(with_error(
            us_row("Session::run, 1 op + readback", f, &t, None),
            ErrorScore::exact(ok),
        ));
        // 2. One tiny kernel, no readback.
        let (f1, t1, l1, s1) = chain(1)?;
        // The state went through 2 + runs runs of +1.
        let ok1 = s1.iter().all(|&v| v == (runs + 2) as f32);
        out.push(with_error(
            us_row("one tiny kernel (no readback)", f1, &t1, None),
            ErrorScore::exact(ok1),
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
