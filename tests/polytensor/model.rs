//! The Llama-family decoder (`polytensor::model::llama`) and its toy instance on every device:
//! greedy generation teacher-forced against the CPU, the KV cache against full recomputation,
//! the CPU fast path against the f64 reference backend, and bad configurations as errors.

use polytensor::model::llama::{Llama, LlamaConfig};
use polytensor::model::toy;
use polytensor::{DType, Device, Error, FallbackPolicy, Session};

use crate::common::devices_under_test;

fn session(device: &Device) -> Session {
    let mut s = Session::new(device);
    s.set_fallback(FallbackPolicy::Deny);
    s
}

/// |got − want| ≤ 1e-4 · max(1, max |want|) elementwise (f32 through a 4-layer model).
fn assert_logits_close(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(1f32, |m, x| m.max(x.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-4 * scale,
            "{what}: logit {i}: got {g}, expected {w} (scale {scale})"
        );
    }
}

#[test]
fn toy_model_generates_the_cpu_tokens_on_every_device() {
    let reports = toy::run_everywhere(&devices_under_test()).expect("toy model");
    assert!(!reports.is_empty());
    for r in &reports {
        assert_eq!(r.steps, toy::GENERATE, "{}", r.device);
        assert_eq!(
            r.mismatches, 0,
            "{}: another top-1 than the CPU at compared steps",
            r.device
        );
        assert!(
            r.compared * 5 >= r.steps * 4,
            "{}: only {} of {} steps had a clear margin",
            r.device,
            r.compared,
            r.steps
        );
        assert_eq!(r.tokens.len(), toy::GENERATE, "{}", r.device);
    }
}

/// The toy model, and a Qwen2-style variant of it (q/k/v biases, the LM head tied to the
/// embeddings), on every device.
#[test]
fn decode_with_the_cache_equals_full_recomputation_and_compiles_once() {
    let qwen = LlamaConfig {
        qkv_bias: true,
        tie_embeddings: true,
        ..toy::config()
    };
    for config in [toy::config(), qwen] {
        cache_matches_full_run(config);
    }
}

fn cache_matches_full_run(config: LlamaConfig) {
    let prompt = &toy::PROMPT;
    let mut cpu = Llama::new(
        Session::new(&Device::cpu()),
        config.clone(),
        DType::F32,
        toy::weight,
    )
    .expect("cpu model");
    let generated = cpu.generate_greedy(prompt, 6).expect("generate");
    let mut all: Vec<u32> = prompt.to_vec();
    all.extend(&generated[..5]);
    for device in devices_under_test() {
        let name = device.info().name.clone();
        let mut m = Llama::new(session(&device), config.clone(), DType::F32, toy::weight)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        // One prefill over every token.
        let full = m.forward(&all).expect("full");
        assert_eq!(
            full.next, generated[5],
            "{name}: next token after the full run"
        );
        // Prefill the prompt, then decode the rest one token at a time through the cache.
        m.reset();
        let mut step = m.forward(prompt).expect("prefill");
        for &t in &generated[..5] {
            step = m.forward(&[t]).expect("decode");
            let st = m.session().last_run_stats();
            assert_eq!(
                st.pipelines_built, 0,
                "{name}: a decode step built pipelines"
            );
            assert_eq!(
                st.bytes_copied, 0,
                "{name}: a decode step copied on the device"
            );
        }
        assert_eq!(m.position(), all.len(), "{name}");
        assert_logits_close(
            &format!("{name}: cached decode vs full run"),
            &step.logits,
            &full.logits,
        );
    }
}

#[test]
fn the_cpu_fast_path_matches_the_reference_backend() {
    let mut fast = Llama::new(
        Session::new(&Device::cpu()),
        toy::config(),
        DType::F32,
        toy::weight,
    )
    .expect("cpu");
    let mut reference = Llama::new(
        Session::new(&Device::reference()),
        toy::config(),
        DType::F32,
        toy::weight,
    )
    .expect("reference");
    let a = fast.forward(&toy::PROMPT).expect("fast");
    let b = reference.forward(&toy::PROMPT).expect("reference");
    assert_logits_close("prefill: fast vs f64 reference", &a.logits, &b.logits);
    let a = fast.forward(&[a.next]).expect("fast decode");
    let b = reference.forward(&[b.next]).expect("reference decode");
    assert_logits_close("decode: fast vs f64 reference", &a.logits, &b.logits);
}

#[test]
fn bad_configs_weights_and_positions_are_errors() {
    let cpu = || Session::new(&Device::cpu());
    let bad = LlamaConfig {
        heads: 5,
        ..toy::config()
    };
    let e = Llama::new(cpu(), bad, DType::F32, toy::weight)
        .err()
        .expect("heads 5 over 2");
    assert!(e.to_string().contains("kv_heads"), "{e}");
    let e = Llama::new(cpu(), toy::config(), DType::F32, |name, shape| {
        if name == "model.norm.weight" {
            toy::weight(name, &[shape[0] + 1])
        } else {
            toy::weight(name, shape)
        }
    })
    .err()
    .expect("a weight of the wrong shape");
    assert!(e.to_string().contains("model.norm.weight"), "{e}");
    let mut m = Llama::new(cpu(), toy::config(), DType::F32, toy::weight).expect("model");
    let long = vec![1u32; toy::config().max_len + 1];
    match m.forward(&long) {
        Err(Error::InvalidArgument { msg, .. }) => assert!(msg.contains("positions"), "{msg}"),
        other => panic!("expected a position error, got {other:?}"),
    }
    match m.forward(&[toy::config().vocab as u32]) {
        Err(Error::InvalidArgument { msg, .. }) => assert!(msg.contains("vocabulary"), "{msg}"),
        other => panic!("expected a token error, got {other:?}"),
    }
}

/// An embedding table and LM head over the storage binding limit (lowered to 128 KiB here; a real
/// 151936×896 f32 table is 545 MB against lavapipe's 128 MiB): the gather and the transposed
/// head matmul are split over bindings, nothing falls back to the CPU, and the tokens are the
/// CPU's.
#[test]
fn a_vocabulary_over_the_binding_limit_is_split_over_bindings() {
    use polytensor::backend::wgpu::devices_with_binding_limit;
    let config = LlamaConfig {
        vocab: 1024,
        ..toy::config()
    };
    // The table is 1024 × 128 f32 = 512 KiB.
    let limit = 128 * 1024;
    let mut cpu = Llama::new(
        Session::new(&Device::cpu()),
        config.clone(),
        DType::F32,
        toy::weight,
    )
    .expect("cpu");
    let want = cpu.generate_greedy(&toy::PROMPT, 5).expect("cpu tokens");
    let small = devices_with_binding_limit(limit);
    if small.is_empty() {
        assert!(
            std::env::var("POLYTENSOR_REQUIRE_GPU").is_err(),
            "no adapter, but POLYTENSOR_REQUIRE_GPU is set"
        );
        eprintln!("skipped: no GPU adapter");
    }
    for device in small {
        let name = device.info().name.clone();
        let mut m = Llama::new(session(&device), config.clone(), DType::F32, toy::weight)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let got = m.generate_greedy(&toy::PROMPT, 5).expect("tokens");
        assert_eq!(got, want, "{name}");
        let gathers = m
            .session()
            .last_run_stats()
            .launches
            .iter()
            .filter(|l| l.kernel.contains("gather"))
            .count();
        assert!(
            gathers >= 4,
            "{name}: the table's gather in ≥ 4 ranges, saw {gathers}"
        );
    }
}

#[test]
fn generation_is_an_iterator_that_stops_at_end_of_text() {
    let new = || {
        Llama::new(
            Session::new(&Device::cpu()),
            toy::config(),
            DType::F32,
            toy::weight,
        )
        .expect("model")
    };
    let want = new().generate_greedy(&toy::PROMPT, 6).expect("greedy");
    let argmax = |l: &[f32], _: &[u32]| {
        l.iter()
            .enumerate()
            .fold((0, f32::MIN), |b, (i, &x)| if x > b.1 { (i, x) } else { b })
            .0 as u32
    };
    let mut m = new();
    let got: Vec<u32> = m
        .generate(&toy::PROMPT, 6, &[], argmax)
        .collect::<polytensor::Result<_>>()
        .expect("tokens");
    assert_eq!(got, want);
    // Stopping at the third token's id yields the two before it.
    let stopped: Vec<u32> = m
        .generate(&toy::PROMPT, 6, &[want[2]], argmax)
        .collect::<polytensor::Result<_>>()
        .expect("tokens");
    let first = want.iter().position(|&t| t == want[2]).unwrap_or(2);
    assert_eq!(stopped, want[..first]);
    // The choice sees the prompt and the tokens so far.
    let mut lens = Vec::new();
    let _: Vec<_> = m
        .generate(&toy::PROMPT, 3, &[], |l, seen| {
            lens.push(seen.len());
            argmax(l, seen)
        })
        .collect();
    assert_eq!(lens, [8, 9, 10]);
}
