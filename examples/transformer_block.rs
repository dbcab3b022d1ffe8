//! One pre-norm transformer block (Llama style) built from polytensor's ops: RMSNorm, Q/K/V
//! projections, rotary embeddings, grouped-query attention over a device-resident KV cache, a
//! SwiGLU MLP and the residuals. It prefills 17 tokens, then decodes 8 one at a time, on every
//! device, and prints each device's largest difference from the f64 CPU reference, where every
//! op ran, and what a decode step cost (run statistics).
//!
//! Run: `cargo run --release --example transformer_block`

use polytensor::{DType, Device, FallbackPolicy, Graph, Offset, Session, Tensor, UnaryOp};

const HIDDEN: usize = 64;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = 16;
const FFN: usize = 128;
const MAX_LEN: usize = 32;
const PREFILL: usize = 17;
const DECODE: usize = 8;

/// The block over `seq` new tokens at run-time position `pos`; K and V of every token so far
/// live in the session states `k` and `v` ([1, KV_HEADS, MAX_LEN, HEAD_DIM]).
fn block(seq: usize) -> polytensor::Result<Graph> {
    let pos = || Offset::Sym("pos".into());
    let mut g = Graph::new();
    let x = g.input("x", [1, seq, HIDDEN], DType::F32);
    let w = |g: &mut Graph, name: &str, shape: &[usize]| g.weight(name, shape, DType::F32);
    let (n1, n2) = (w(&mut g, "norm1", &[HIDDEN]), w(&mut g, "norm2", &[HIDDEN]));
    let wq = w(&mut g, "wq", &[HIDDEN, HEADS * HEAD_DIM]);
    let wk = w(&mut g, "wk", &[HIDDEN, KV_HEADS * HEAD_DIM]);
    let wv = w(&mut g, "wv", &[HIDDEN, KV_HEADS * HEAD_DIM]);
    let wo = w(&mut g, "wo", &[HEADS * HEAD_DIM, HIDDEN]);
    let (wg, wu) = (
        w(&mut g, "wg", &[HIDDEN, FFN]),
        w(&mut g, "wu", &[HIDDEN, FFN]),
    );
    let wd = w(&mut g, "wd", &[FFN, HIDDEN]);
    let cache = [1, KV_HEADS, MAX_LEN, HEAD_DIM];
    g.state("k", cache, DType::F32);
    g.state("v", cache, DType::F32);

    // Attention: [1, seq, heads·D] → [1, heads, seq, D], rotated at positions pos..pos+seq.
    let h = g.rms_norm(x, n1, 1e-6)?;
    let heads = |g: &mut Graph, t, n: usize| -> polytensor::Result<_> {
        let t = g.reshape(t, [1, seq, n, HEAD_DIM])?;
        g.permute(t, &[0, 2, 1, 3])
    };
    let q = g.matmul(h, wq)?;
    let q = heads(&mut g, q, HEADS)?;
    let q = g.rope(q, 10_000.0, HEAD_DIM, false, pos())?;
    let k = g.matmul(h, wk)?;
    let k = heads(&mut g, k, KV_HEADS)?;
    let k = g.rope(k, 10_000.0, HEAD_DIM, false, pos())?;
    let v = g.matmul(h, wv)?;
    let v = heads(&mut g, v, KV_HEADS)?;
    // Append to the cache in place, then attend over its first pos + seq rows (causal).
    let k = g.write_state("k", k, 2, pos())?;
    let v = g.write_state("v", v, 2, pos())?;
    let scale = 1.0 / (HEAD_DIM as f64).sqrt();
    let a = g.attention(q, k, v, None, scale, true, Some(pos()))?;
    let a = g.permute(a, &[0, 2, 1, 3])?;
    let a = g.reshape(a, [1, seq, HEADS * HEAD_DIM])?;
    let o = g.matmul(a, wo)?;
    let x = g.add(x, o)?;

    // SwiGLU MLP.
    let h = g.rms_norm(x, n2, 1e-6)?;
    let gate = g.matmul(h, wg)?;
    let gate = g.unary(UnaryOp::Silu, gate)?;
    let up = g.matmul(h, wu)?;
    let act = g.mul(gate, up)?;
    let down = g.matmul(act, wd)?;
    let y = g.add(x, down)?;
    g.output("y", y)?;
    Ok(g)
}

/// Deterministic values in [−scale, scale).
fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// Prefill then decode on `device`: every step's output, the placement and the last decode
/// step's statistics.
fn run(
    device: &Device,
    tokens: &[Tensor],
) -> polytensor::Result<(Vec<Vec<f64>>, String, polytensor::RunStats)> {
    let mut s = Session::new(device);
    s.set_fallback(FallbackPolicy::Allow);
    let weights: [(&str, &[usize]); 9] = [
        ("norm1", &[HIDDEN]),
        ("norm2", &[HIDDEN]),
        ("wq", &[HIDDEN, HEADS * HEAD_DIM]),
        ("wk", &[HIDDEN, KV_HEADS * HEAD_DIM]),
        ("wv", &[HIDDEN, KV_HEADS * HEAD_DIM]),
        ("wo", &[HEADS * HEAD_DIM, HIDDEN]),
        ("wg", &[HIDDEN, FFN]),
        ("wu", &[HIDDEN, FFN]),
        ("wd", &[FFN, HIDDEN]),
    ];
    for (i, (name, shape)) in weights.iter().enumerate() {
        let n = shape.iter().product();
        let v = if name.starts_with("norm") {
            values(n, 100 + i as u64, 0.1)
                .iter()
                .map(|x| 1.0 + x)
                .collect()
        } else {
            values(n, 100 + i as u64, 0.2)
        };
        s.load_weight(name, Tensor::new(shape, v)?.view(), DType::F32)?;
    }
    let cache = [1, KV_HEADS, MAX_LEN, HEAD_DIM];
    s.create_state("k", &cache, DType::F32)?;
    s.create_state("v", &cache, DType::F32)?;
    let prefill = s.compile(&block(PREFILL)?)?;
    let decode = s.compile(&block(1)?)?;
    let placement = format!(
        "{} fallback segment(s); ops not on the device: {:?}",
        decode.placement().fallbacks,
        decode
            .placement()
            .nodes
            .iter()
            .filter(|(_, op, d)| {
                *d != device.info().name && !matches!(*op, "input" | "weight" | "state")
            })
            .map(|(_, op, _)| *op)
            .collect::<Vec<_>>()
    );
    let mut outs = Vec::new();
    let mut pos = 0;
    for (step, x) in tokens.iter().enumerate() {
        let p = if step == 0 { &prefill } else { &decode };
        let y = s.run(p, &[("x", x.view())], &[("pos", pos)])?;
        outs.push(y.get("y")?.to_f64_vec());
        pos += x.shape()[1];
    }
    Ok((outs, placement, s.last_run_stats()))
}

fn main() -> polytensor::Result<()> {
    let mut tokens = vec![Tensor::new(
        &[1, PREFILL, HIDDEN],
        values(PREFILL * HIDDEN, 1, 1.0),
    )?];
    for t in 0..DECODE {
        tokens.push(Tensor::new(
            &[1, 1, HIDDEN],
            values(HIDDEN, 2 + t as u64, 1.0),
        )?);
    }
    let (want, _, _) = run(&Device::reference(), &tokens)?;
    println!(
        "pre-norm block: hidden {HIDDEN}, {HEADS} query heads over {KV_HEADS} KV heads of {HEAD_DIM}, \
         SwiGLU {FFN}; prefill {PREFILL} tokens, then decode {DECODE}"
    );
    for device in Device::list() {
        let name = device.info().name.clone();
        match run(&device, &tokens) {
            Ok((got, placement, stats)) => {
                let err = got
                    .iter()
                    .flatten()
                    .zip(want.iter().flatten())
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f64::max);
                println!("{name}: max |device − reference| = {err:.2e}; {placement}");
                println!(
                    "    last decode step: {} launches in {} pass(es), {} pipelines built, {} bytes copied on the device, {} elements written to the cache, {} bytes read back",
                    stats.launch_count,
                    stats.passes,
                    stats.pipelines_built,
                    stats.bytes_copied,
                    stats.state_elements_written,
                    stats.bytes_read_back
                );
            }
            Err(e) => println!("{name}: {e}"),
        }
    }
    Ok(())
}
