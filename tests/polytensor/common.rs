//! Shared test helpers: a seeded generator, tolerance checks that print index, actual, expected
//! and bound, and running one graph on a device and on the f64 reference.

use polytensor::{DType, Device, FallbackPolicy, Graph, Result, Session, Tensor};

/// SplitMix64: a tiny seeded generator (no dependency, same sequence everywhere).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * u
    }
    pub fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }
}

/// Random data of `shape`, stored as `dtype` (so the reference sees the same rounded values).
pub fn random(rng: &mut Rng, shape: &[usize], dtype: DType, lo: f32, hi: f32) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_f32(shape, rng.vec(n, lo, hi), dtype).expect("shape and data agree")
}

/// Runs `graph` on `device` with fresh weights, returning the outputs in order.
pub fn run_on(
    device: &Device,
    graph: &Graph,
    inputs: &[(&str, &Tensor)],
    weights: &[(&str, &Tensor)],
    bindings: &[(&str, usize)],
) -> Result<Vec<Tensor>> {
    let mut s = Session::new(device);
    // A fallback must never make a device test pass.
    s.set_fallback(FallbackPolicy::Deny);
    for (name, w) in weights {
        s.load_weight(name, w.view(), w.dtype())?;
    }
    let p = s.compile(graph)?;
    let views: Vec<(&str, polytensor::TensorView<'_>)> =
        inputs.iter().map(|(n, t)| (*n, t.view())).collect();
    let out = s.run(&p, &views, bindings)?;
    Ok(out.into_vec().into_iter().map(|(_, t)| t).collect())
}

/// Checks |got − want| ≤ atol + rtol·|want| elementwise, and equal shapes and dtypes.
pub fn assert_close(what: &str, got: &Tensor, want: &Tensor, atol: f64, rtol: f64) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    assert_eq!(got.dtype(), want.dtype(), "{what}: dtype");
    let (g, w) = (got.to_f64_vec(), want.to_f64_vec());
    for (i, (&a, &e)) in g.iter().zip(&w).enumerate() {
        let tol = atol + rtol * e.abs();
        let ok = (a - e).abs() <= tol || (a.is_nan() && e.is_nan()) || a == e;
        assert!(
            ok,
            "{what}: index {i}: got {a}, expected {e}, tolerance {tol}"
        );
    }
}

/// Elementwise tolerances per storage dtype: (atol, rtol). f16/bf16 allow one rounding of the
/// output plus a rounding of an f32 intermediate.
pub fn tol(dtype: DType) -> (f64, f64) {
    match dtype {
        DType::F32 => (1e-6, 1e-5),
        DType::F16 => (1e-3, 2.0 * DType::F16.epsilon() + 1e-5),
        DType::BF16 => (1e-3, 2.0 * DType::BF16.epsilon() + 1e-5),
        DType::U32 | DType::I32 => (0.0, 0.0),
    }
}

/// The devices every conformance test runs on: the fast CPU path and every wgpu adapter.
/// `POLYTENSOR_REQUIRE_GPU=vulkan,gl` (CI) names APIs that must be present: a missing one fails
/// the test instead of skipping it; `=1` requires at least one GPU adapter.
pub fn devices_under_test() -> Vec<Device> {
    let all = Device::list();
    let gpus: Vec<&Device> = all.iter().filter(|d| d.info().backend == "wgpu").collect();
    let required = std::env::var("POLYTENSOR_REQUIRE_GPU").is_ok_and(|r| {
        r.split(',')
            .any(|s| !s.trim().is_empty() && s.trim() != "0")
    });
    if gpus.is_empty() && !required {
        // Say so once per test binary: a GPU test that ran on the CPU alone must not look
        // like a GPU pass. Written to the stderr handle itself, which the test harness does
        // not capture (it captures `eprintln!`), so a passing run shows it too.
        static SKIP: std::sync::Once = std::sync::Once::new();
        SKIP.call_once(|| {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "skipped: no GPU adapter; the GPU parts of the tests did not run \
                 (set POLYTENSOR_REQUIRE_GPU=1 to make this a failure)"
            );
        });
    }
    if let Ok(req) = std::env::var("POLYTENSOR_REQUIRE_GPU") {
        for api in req
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty() && *s != "0")
        {
            let found = if api == "1" {
                !gpus.is_empty()
            } else {
                gpus.iter().any(|d| d.info().api.eq_ignore_ascii_case(api))
            };
            assert!(
                found,
                "POLYTENSOR_REQUIRE_GPU={req}: no `{api}` adapter found; devices: {:?}",
                all.iter()
                    .map(|d| d.info().name.clone())
                    .collect::<Vec<_>>()
            );
        }
    }
    let mut out = vec![Device::cpu()];
    out.extend(gpus.into_iter().cloned());
    out
}

/// Runs `graph` on every device under test and compares each against the f64 reference with
/// `tol(dtype of the output)`.
pub fn conform(
    what: &str,
    graph: &Graph,
    inputs: &[(&str, &Tensor)],
    weights: &[(&str, &Tensor)],
    tolerance: impl Fn(DType) -> (f64, f64),
) {
    let want = run_on(&Device::reference(), graph, inputs, weights, &[]).expect("reference run");
    for device in devices_under_test() {
        let name = &device.info().name;
        let got = run_on(&device, graph, inputs, weights, &[])
            .unwrap_or_else(|e| panic!("{what} on {name}: {e}"));
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            let (atol, rtol) = tolerance(w.dtype());
            assert_close(&format!("{what} on {name}, output {k}"), g, w, atol, rtol);
        }
    }
}
