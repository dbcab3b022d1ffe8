//! Decoder speed with SmolLM2-135M's shapes (30 layers, hidden 576, 9 query heads over 3 KV heads
//! of 64, SwiGLU 1536, a tied 49152-token vocabulary) and seeded random weights, on the CPU and
//! every wgpu adapter (or those whose name contains the first argument), f32 and bf16 storage:
//! prefill tokens/s for a 256-token prompt, decode tokens/s, launches per decode step, and the
//! peak resident memory over the baseline before loading (as a multiple of the weight bytes; the
//! peak is reset before each model), with the KV cache's size (max_len 320) apart. On lavapipe and
//! llvmpipe "device memory" is host memory, so their peak holds the device copies too. Beside them, in the same run: a plain copy's bandwidth over the weight
//! bytes (the decode limit: every weight byte is read once per token) and the `gemm` crate's f32
//! rate on the prefill's largest matmul shape (the prefill limit).
//!
//! Then a MiniLM-shaped encoder (6 layers, hidden 384, 12 heads, ffn 1536, vocabulary 30522):
//! sentences/s for a batch of 32 sentences of 12–28 tokens, f32.
//!
//! Run: `cargo run --release --example llama_speed [-- vulkan]` (`POLYTENSOR_SPEED_DECODE` tokens,
//! default 32; `POLYTENSOR_SPEED_ONLY=encoder` for the encoder rows alone,
//! `POLYTENSOR_SPEED_DTYPE=bf16` for one storage dtype).

use std::time::Instant;

use polytensor::model::bert::{Bert, BertConfig, Pooling};
use polytensor::model::llama::{Llama, LlamaConfig};
use polytensor::model::toy;
use polytensor::{DType, Device, FallbackPolicy, Session};

fn smollm2() -> LlamaConfig {
    LlamaConfig {
        vocab: 49152,
        hidden: 576,
        layers: 30,
        heads: 9,
        kv_heads: 3,
        head_dim: 64,
        ffn: 1536,
        rope_theta: 100_000.0,
        rms_eps: 1e-5,
        tie_embeddings: true,
        qkv_bias: false,
        max_len: 320,
    }
}

/// A `/proc/self/status` memory line (`VmHWM`: peak resident, `VmRSS`: resident now) in MB.
fn status_mb(key: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with(key)).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|x| x.parse::<f64>().ok())
            })
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Resets the peak resident size to the current one (Linux `clear_refs` 5), so each model's
/// peak is its own; returns the baseline (resident MB before loading).
fn reset_peak() -> f64 {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    status_mb("VmRSS:")
}

/// GB/s of a plain copy of `bytes` (the best of 5), multi-threaded like the runtime's CPU path.
fn copy_bandwidth(bytes: usize) -> f64 {
    use rayon::prelude::*;
    let src = vec![1u8; bytes];
    let mut dst = vec![0u8; bytes];
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        dst.par_chunks_mut(1 << 20)
            .zip(src.par_chunks(1 << 20))
            .for_each(|(d, s)| d.copy_from_slice(s));
        best = best.min(t.elapsed().as_secs_f64());
    }
    std::hint::black_box(&dst);
    2.0 * bytes as f64 / best / 1e9
}

/// GFLOP/s of the `gemm` crate (f32, all threads) on [m, k] × [k, n].
fn gemm_rate(m: usize, k: usize, n: usize) -> f64 {
    let a = vec![0.5f32; m * k];
    let b = vec![0.25f32; k * n];
    let mut c = vec![0f32; m * n];
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        // SAFETY: the slices hold m·k, k·n and m·n elements with the strides given.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                1,
                k as isize,
                b.as_ptr(),
                1,
                n as isize,
                0.0f32,
                1.0f32,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(0),
            );
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    2.0 * (m * n * k) as f64 / best / 1e9
}

fn main() -> polytensor::Result<()> {
    let filter = std::env::args().nth(1).map(|s| s.to_lowercase());
    let decode_n: usize = std::env::var("POLYTENSOR_SPEED_DECODE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
    let c = smollm2();
    let params = c.parameters();
    let non_embed = params - c.vocab * c.hidden;
    let prompt: Vec<u32> = (0..256u32).map(|i| (i * 7919) % c.vocab as u32).collect();
    let t = prompt.len() as f64;
    let prefill_flop = c.prefill_flops(prompt.len());
    let gemm = gemm_rate(256, 576, 1536);
    // 2 × 128 MiB: past L3, small beside the weights (so the peak memory stays the model's).
    let bw = copy_bandwidth(128 << 20);
    println!(
        "SmolLM2-135M shapes, random weights: {params} parameters ({non_embed} outside the \
         embedding); prefill {} tokens = {:.1} GFLOP; gemm f32 [256×576]×[576×1536] {gemm:.1} \
         GFLOP/s; copy {bw:.1} GB/s",
        prompt.len(),
        prefill_flop / 1e9
    );
    let mut devices = vec![Device::cpu()];
    devices.extend(
        Device::list()
            .into_iter()
            .filter(|d| d.info().backend == "wgpu"),
    );
    if let Some(f) = &filter {
        devices.retain(|d| d.info().name.to_lowercase().contains(f));
    }
    println!(
        "| device | dtype | load s | prefill tok/s | % of gemm rate | decode tok/s | bandwidth limit tok/s | % of limit | launches/step | peak RSS over baseline MB (× weights) | KV cache MB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let only_dtype = std::env::var("POLYTENSOR_SPEED_DTYPE").ok();
    let decoder = std::env::var("POLYTENSOR_SPEED_ONLY").map_or(true, |v| v != "encoder");
    for device in devices.iter().filter(|_| decoder) {
        for dtype in [DType::F32, DType::BF16] {
            if only_dtype.as_ref().is_some_and(|d| d != &dtype.to_string()) {
                continue;
            }
            let weight_bytes = params * dtype.size_of();
            let limit = bw * 1e9 / weight_bytes as f64;
            let base = reset_peak();
            let t0 = Instant::now();
            let mut s = Session::new(device);
            s.set_fallback(FallbackPolicy::Deny);
            let mut m = Llama::new(s, c.clone(), dtype, toy::weight)?;
            let load = t0.elapsed().as_secs_f64();
            // Warm-up: one prefill and one decode step (pipelines, caches).
            let step = m.forward(&prompt[..8])?;
            m.forward(&[step.next])?;
            m.reset();
            let t1 = Instant::now();
            let mut step = m.forward(&prompt)?;
            let prefill = t1.elapsed().as_secs_f64();
            let t2 = Instant::now();
            for _ in 0..decode_n {
                step = m.forward(&[step.next])?;
            }
            let decode = decode_n as f64 / t2.elapsed().as_secs_f64();
            let launches = m.session().last_run_stats().launch_count;
            let prefill_tps = t / prefill;
            // K and V of every layer for max_len positions, in the storage dtype.
            let kv = 2 * c.layers * c.kv_heads * c.head_dim * c.max_len * dtype.size_of();
            let over = status_mb("VmHWM:") - base;
            println!(
                "| {} | {dtype} | {load:.1} | {prefill_tps:.1} | {:.0} % | {decode:.2} | {limit:.1} | {:.0} % | {launches} | {over:.0} ({:.2}×) | {:.1} |",
                device.info().name,
                100.0 * prefill_flop / prefill / 1e9 / gemm,
                100.0 * decode / limit,
                over * (1 << 20) as f64 / weight_bytes as f64,
                kv as f64 / (1 << 20) as f64
            );
            drop(m);
        }
    }
    // The MiniLM-shaped encoder.
    let minilm = BertConfig {
        vocab: 30522,
        hidden: 384,
        layers: 6,
        heads: 12,
        ffn: 1536,
        max_positions: 512,
        type_vocab: 2,
        eps: 1e-12,
        max_batch: 32,
    };
    let batch: Vec<Vec<u32>> = (0..32u32)
        .map(|i| {
            let len = 12 + (i as usize * 7) % 17;
            (0..len as u32)
                .map(|t| (i * 131 + t * 17) % 30522)
                .collect()
        })
        .collect();
    let tokens: usize = batch.iter().map(Vec::len).sum();
    println!(
        "\nMiniLM shapes (6 layers, hidden 384, 12 heads, ffn 1536), random weights: a batch of 32 \
         sentences of 12–28 tokens ({tokens} tokens), f32, mean pooling"
    );
    println!("| device | sentences/s | ms per batch |");
    println!("|---|---|---|");
    for device in &devices {
        let mut s = Session::new(device);
        s.set_fallback(FallbackPolicy::Deny);
        let mut m = Bert::new(s, minilm.clone(), DType::F32, toy::weight)?;
        m.encode(&batch, Pooling::Mean)?;
        let mut best = f64::INFINITY;
        for _ in 0..3 {
            let t = Instant::now();
            m.encode(&batch, Pooling::Mean)?;
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!(
            "| {} | {:.1} | {:.1} |",
            device.info().name,
            32.0 / best,
            best * 1e3
        );
    }
    Ok(())
}
