//! The error column: a sample of output elements against an f64 reference computed here from
//! the stored inputs, each error divided by that element's tolerance (the bound the op's tests
//! use), so a correct kernel scores ≤ 1 even where the reference is near 0.

use super::problems::Problem;
use crate::DType;

/// Output elements checked per problem.
pub const SAMPLES: usize = 256;

/// NMSE over the sample and the largest |error| ÷ tolerance.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ErrorScore {
    pub nmse: f64,
    pub ratio: f64,
}

impl ErrorScore {
    /// A bit-exact check: 0 when the output is exactly as expected, else NMSE 1 and an infinite
    /// ratio (flagged).
    pub fn exact(ok: bool) -> ErrorScore {
        ErrorScore {
            nmse: if ok { 0.0 } else { 1.0 },
            ratio: if ok { 0.0 } else { f64::INFINITY },
        }
    }
}

/// Unit roundoff of a storage dtype (`DType::epsilon` is the unit roundoff).
fn unit(dtype: DType) -> f64 {
    dtype.epsilon()
}

/// f32 accumulation's unit roundoff.
const U32: f64 = 5.960_464_477_539_063e-8;

/// `SAMPLES` flat indices into `len` elements, one per stride of `len / SAMPLES` at a varying
/// offset inside it (all of them when `len` ≤ `SAMPLES`; the first `SAMPLES` when `len` is
/// under twice that).
fn sample(len: usize) -> Vec<usize> {
    if len <= SAMPLES {
        return (0..len).collect();
    }
    // A stride coprime-ish with common row lengths, so rows and columns both vary.
    let step = len / SAMPLES;
    (0..SAMPLES)
        .map(|i| (i * step + (i * 7919) % step.max(1)) % len)
        .collect()
}

/// Scores `got` (the device's output `y`, as f64) against the f64 reference of the sampled
/// elements, from the stored `inputs` (as f32: every stored value is exact in f32).
pub fn score(problem: &Problem, dtype: DType, inputs: &[Vec<f32>], got: &[f64]) -> ErrorScore {
    let mut num = 0.0;
    let mut den = 0.0;
    let mut ratio: f64 = 0.0;
    let debug = std::env::var_os("POLYTENSOR_BENCH_DEBUG").is_some();
    let mut add = |g: f64, r: f64, tol: f64| {
        let e = (g - r).abs();
        num += e * e;
        den += r * r;
        // NaN in the output counts as an infinitely wrong element.
        let q = if e.is_nan() { f64::INFINITY } else { e / tol };
        if debug && q > ratio {
            eprintln!("worst so far: got {g:e} ref {r:e} |err| {e:e} tol {tol:e}");
        }
        ratio = ratio.max(q);
    };
    match *problem {
        Problem::MatMul { m, k, n, tb } => {
            let (a, b) = (&inputs[0], &inputs[1]);
            for l in sample(m * n) {
                let (i, j) = (l / n, l % n);
                let (mut r, mut mag) = (0.0f64, 0.0f64);
                for t in 0..k {
                    let x = f64::from(a[i * k + t]);
                    let w = f64::from(if tb { b[j * k + t] } else { b[t * n + j] });
                    r += x * w;
                    mag += (x * w).abs();
                }
                // The matmul tests' bound (tests/polytensor/matmul.rs):
                // 2·K·u·Σ|a||b|·1.01 + 2·u_dtype·|ref|.
                let tol = 2.0 * k as f64 * U32 * mag * 1.01
                    + 2.0 * unit(dtype) * r.abs()
                    + f64::MIN_POSITIVE;
                add(got.get(l).copied().unwrap_or(f64::NAN), r, tol);
            }
        }
        Problem::Attention {
            heads,
            kv_heads,
            q_len,
            kv_len,
            d,
        } => {
            let (q, k, v) = (&inputs[0], &inputs[1], &inputs[2]);
            let scale = 1.0 / (d as f64).sqrt();
            let group = heads / kv_heads;
            // 32 whole rows (head, query row) spread evenly over every head.
            let total = heads * q_len;
            let mut rows: Vec<usize> = (0..32.min(total))
                .map(|i| i * total / 32.min(total))
                .collect();
            rows.dedup();
            for row in rows {
                let (h, i) = (row / q_len, row % q_len);
                let kh = h / group;
                let seen = kv_len - q_len + i + 1;
                let qr = &q[(h * q_len + i) * d..][..d];
                let dot = |kr: &[f32], abs: bool| -> f64 {
                    qr.iter()
                        .zip(kr)
                        .map(|(&x, &y)| {
                            let p = f64::from(x) * f64::from(y);
                            if abs { p.abs() } else { p }
                        })
                        .sum::<f64>()
                };
                let krow = |j: usize| &k[(kh * kv_len + j) * d..][..d];
                let s: Vec<f64> = (0..seen).map(|j| scale * dot(krow(j), false)).collect();
                // σ: the largest scale·Σ_d |q_d||k_jd| of the row.
                let sigma = (0..seen)
                    .map(|j| scale * dot(krow(j), true))
                    .fold(0.0, f64::max);
                let mx = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let p: Vec<f64> = s.iter().map(|x| (x - mx).exp()).collect();
                let z: f64 = p.iter().sum();
                for c in 0..d {
                    let (mut r, mut m) = (0.0, 0.0);
                    for (j, pj) in p.iter().enumerate() {
                        let vj = f64::from(v[(kh * kv_len + j) * d + c]);
                        r += pj / z * vj;
                        m += pj / z * vj.abs();
                    }
                    // The attention tests' bound (tests/polytensor/attention.rs):
                    // 2·u·((D + 2)·σ + n + 16)·(Σ p|v| + |ref|) + 2.02·u_dtype·|ref|.
                    let f32_part = 2.0 * U32 * ((d as f64 + 2.0) * sigma + seen as f64 + 16.0);
                    let tol =
                        f32_part * (m + r.abs()) + 2.02 * unit(dtype) * r.abs() + f64::MIN_POSITIVE;
                    add(got.get(row * d + c).copied().unwrap_or(f64::NAN), r, tol);
                }
            }
        }
    }
    ErrorScore {
        nmse: if den > 0.0 { num / den } else { num },
        ratio,
    }
}

/// Logits of a model run against the CPU's f32 logits: NMSE and the largest |error| ÷
/// (tolerance · max(1, max |ref|)), the model tests' per-dtype tolerances.
pub fn score_logits(dtype: DType, got: &[f32], want: &[f32]) -> ErrorScore {
    let tol = match dtype {
        DType::F32 => 1e-3,
        DType::F16 => 5e-2,
        _ => 2e-1,
    };
    let scale = want.iter().fold(1.0f64, |m, &x| m.max(f64::from(x).abs()));
    let (mut num, mut den, mut worst) = (0.0, 0.0, 0.0f64);
    for (&g, &w) in got.iter().zip(want) {
        let e = (f64::from(g) - f64::from(w)).abs();
        num += e * e;
        den += f64::from(w) * f64::from(w);
        worst = worst.max(if e.is_nan() { f64::INFINITY } else { e });
    }
    ErrorScore {
        nmse: if den > 0.0 { num / den } else { num },
        ratio: worst / (tol * scale),
    }
}
