//! The toy transformer: a small Llama-style GPT defined in code with seeded random weights (no
//! files), which prefills a prompt and generates greedily on every device. The CPU's sequence is
//! the reference: every other device is teacher-forced on it and must pick the same token at every
//! step whose top-1/top-2 logit margin is clear of the f32 tolerance (settled decision 8).
//! `examples/toy_transformer.rs` and `polytensor demo` run it.

use std::time::Instant;

use super::llama::{Llama, LlamaConfig};
use crate::{DType, Device, FallbackPolicy, Result, Session, Tensor};

/// The toy model: 4 layers, hidden 128, 4 query heads over 2 KV heads of 32, SwiGLU 256, a
/// 512-token vocabulary with its own LM head, 64 positions.
pub fn config() -> LlamaConfig {
    LlamaConfig {
        vocab: 512,
        hidden: 128,
        layers: 4,
        heads: 4,
        kv_heads: 2,
        head_dim: 32,
        ffn: 256,
        rope_theta: 10_000.0,
        rms_eps: 1e-5,
        tie_embeddings: false,
        qkv_bias: false,
        max_len: 64,
    }
}

/// The prompt every device starts from.
pub const PROMPT: [u32; 8] = [1, 17, 42, 7, 300, 5, 99, 256];
/// Tokens generated after the prompt.
pub const GENERATE: usize = 24;

/// Deterministic weights for any name of [`LlamaConfig::weights`]: norms near 1, the embedding
/// table uniform in ±1, everything else uniform in ±2.5/√fan_in. The gains spread the logits
/// (nearly every greedy step has a clear top-1/top-2 margin) and an untied head keeps the model
/// from echoing its input token.
pub fn weight(name: &str, shape: &[usize]) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let seed = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let mut s = seed;
    let mut next = move || {
        s = s
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    let values: Vec<f32> = if name.ends_with("layernorm.weight") || name == "model.norm.weight" {
        (0..n).map(|_| 1.0 + 0.1 * next()).collect()
    } else if name == "model.embed_tokens.weight" {
        (0..n).map(|_| next()).collect()
    } else {
        let fan_in = shape.last().copied().unwrap_or(1) as f32;
        let gain = 2.5 / fan_in.sqrt();
        (0..n).map(|_| gain * next()).collect()
    };
    Tensor::new(shape, values)
}

/// A step is compared when its reference top-1/top-2 margin exceeds this fraction of the
/// largest |logit| (at least 1): well above f32 differences between devices (about 1e-6
/// relative here), so a device that computes right never disagrees at a compared step.
pub const MARGIN: f32 = 1e-3;

/// One device's run of the toy model.
#[derive(Clone, Debug)]
pub struct Report {
    pub device: String,
    /// Its own greedy continuation of the prompt.
    pub tokens: Vec<u32>,
    /// Prefill tokens/s (the prompt, one run) and decode tokens/s (after the first step).
    pub prefill_tps: f64,
    pub decode_tps: f64,
    /// Kernel launches of one decode step (0 on the CPU backend, which runs no kernels).
    pub decode_launches: u64,
    /// Teacher-forced on the reference sequence: steps compared (margin clear), steps in all,
    /// and the compared steps whose top-1 differed from the reference.
    pub compared: usize,
    pub steps: usize,
    pub mismatches: usize,
}

/// Top-1 and the margin to top-2.
fn top2(logits: &[f32]) -> (u32, f32) {
    let (mut i1, mut v1, mut v2) = (0usize, f32::MIN, f32::MIN);
    for (i, &x) in logits.iter().enumerate() {
        if x > v1 {
            (v2, v1, i1) = (v1, x, i);
        } else if x > v2 {
            v2 = x;
        }
    }
    (i1 as u32, v1 - v2)
}

/// The reference run: the CPU's greedy tokens and, per step, the logits they came from.
fn reference() -> Result<(Vec<u32>, Vec<Vec<f32>>)> {
    let mut m = Llama::new(Session::new(&Device::cpu()), config(), DType::F32, weight)?;
    let mut step = m.forward(&PROMPT)?;
    let (mut tokens, mut logits) = (Vec::new(), Vec::new());
    while tokens.len() < GENERATE {
        tokens.push(step.next);
        logits.push(step.logits.clone());
        if tokens.len() < GENERATE {
            step = m.forward(&[step.next])?;
        }
    }
    Ok((tokens, logits))
}

/// Runs the toy model on `device` (CPU fallback refused): its own greedy generation, timed, and
/// the teacher-forced comparison with the CPU's sequence `reference`.
fn run_on(device: &Device, reference: &(Vec<u32>, Vec<Vec<f32>>)) -> Result<Report> {
    // Every op of the model runs on every adapter: a CPU fallback would hide a wrong kernel.
    let mut session = Session::new(device);
    session.set_fallback(FallbackPolicy::Deny);
    let mut m = Llama::new(session, config(), DType::F32, weight)?;
    // Warm-up (pipelines, caches), then the timed run.
    m.generate_greedy(&PROMPT, 2)?;
    m.reset();
    let t0 = Instant::now();
    let mut step = m.forward(&PROMPT)?;
    let prefill = t0.elapsed().as_secs_f64();
    let mut tokens = vec![step.next];
    let t1 = Instant::now();
    while tokens.len() < GENERATE {
        step = m.forward(&[step.next])?;
        tokens.push(step.next);
    }
    let decode = t1.elapsed().as_secs_f64();
    let decode_launches = m.session().last_run_stats().launch_count;
    // Teacher forcing: the reference tokens in, this device's logits out.
    m.reset();
    let (want, want_logits) = reference;
    let mut got = m.forward(&PROMPT)?;
    let (mut compared, mut mismatches) = (0, 0);
    for (i, (&t, wl)) in want.iter().zip(want_logits).enumerate() {
        let (top, margin) = top2(wl);
        let scale = wl.iter().fold(1f32, |a, x| a.max(x.abs()));
        if margin > MARGIN * scale {
            compared += 1;
            if top2(&got.logits).0 != top {
                mismatches += 1;
            }
        }
        if i + 1 < want.len() {
            got = m.forward(&[t])?;
        }
    }
    Ok(Report {
        device: device.info().name.clone(),
        tokens,
        prefill_tps: PROMPT.len() as f64 / prefill,
        decode_tps: (GENERATE - 1) as f64 / decode.max(1e-9),
        decode_launches,
        compared,
        steps: want.len(),
        mismatches,
    })
}

/// The toy model on every device in `devices` (the CPU's sequence is the reference).
pub fn run_everywhere(devices: &[Device]) -> Result<Vec<Report>> {
    let reference = reference()?;
    devices.iter().map(|d| run_on(d, &reference)).collect()
}

/// The reports as a table, with the tokens of the first device.
pub fn table(reports: &[Report]) -> String {
    let mut s = String::new();
    let c = config();
    s.push_str(&format!(
        "toy transformer: {} layers, hidden {}, {} query heads over {} KV heads of {}, SwiGLU {}, \
         vocab {}; prompt of {} tokens, {} generated greedily\n",
        c.layers,
        c.hidden,
        c.heads,
        c.kv_heads,
        c.head_dim,
        c.ffn,
        c.vocab,
        PROMPT.len(),
        GENERATE
    ));
    if let Some(r) = reports.first() {
        s.push_str(&format!("tokens: {:?}\n", r.tokens));
    }
    s.push_str(
        "| device | prefill tok/s | decode tok/s | launches per decode step | same tokens as the \
         CPU | teacher-forced: steps compared | mismatches |\n",
    );
    s.push_str("|---|---|---|---|---|---|---|\n");
    let first = reports
        .first()
        .map(|r| r.tokens.clone())
        .unwrap_or_default();
    for r in reports {
        s.push_str(&format!(
            "| {} | {:.0} | {:.1} | {} | {} | {} of {} | {} |\n",
            r.device,
            r.prefill_tps,
            r.decode_tps,
            r.decode_launches,
            if r.tokens == first { "yes" } else { "no" },
            r.compared,
            r.steps,
            r.mismatches
        ));
    }
    s
}
