//! The problems `polytensor bench` and the criterion benches (`benches/matmul.rs`) measure,
//! defined once: their shapes per mode, FLOPs and bytes, graphs and deterministic inputs.

use crate::{DType, Graph, Result, Tensor};

/// One measured problem of the matmul or attention suite.
#[derive(Clone, Debug, PartialEq)]
pub enum Problem {
    /// `[m, k] × [k, n]`, or `× [n, k]ᵀ` when `tb` (a weight in Hugging Face's layout).
    MatMul {
        m: usize,
        k: usize,
        n: usize,
        tb: bool,
    },
    /// Causal attention, batch 1: `heads` query heads over `kv_heads`, `q_len` query rows against
    /// `kv_len` keys (the last `q_len` positions of the sequence), head dim `d`.
    Attention {
        heads: usize,
        kv_heads: usize,
        q_len: usize,
        kv_len: usize,
        d: usize,
    },
}

/// The square sizes of the matmul suite: `--quick` takes the first two.
pub const MATMUL_SQUARE: [usize; 5] = [256, 512, 1024, 2048, 4096];

/// The criterion bench's square sizes (benches/matmul.rs).
pub const CRITERION_SQUARE: [usize; 4] = [256, 512, 1024, 2048];

/// SmolLM2-135M's hidden size, MLP width and vocabulary: the transformer-shaped problems.
pub const SMOL_HIDDEN: usize = 576;
pub const SMOL_FFN: usize = 1536;
pub const SMOL_VOCAB: usize = 49152;

impl Problem {
    /// The matmul suite: square sizes, one transposed square, transformer shapes (the MLP's
    /// up-projection at `tokens` rows and decode's LM-head matrix-vector product).
    pub fn matmuls(quick: bool) -> Vec<Problem> {
        let squares = if quick {
            &MATMUL_SQUARE[..2]
        } else {
            &MATMUL_SQUARE[..]
        };
        let mut v: Vec<Problem> = squares
            .iter()
            .map(|&n| Problem::MatMul {
                m: n,
                k: n,
                n,
                tb: false,
            })
            .collect();
        let t = if quick { 64 } else { 256 };
        v.push(Problem::MatMul {
            m: 512,
            k: 512,
            n: 512,
            tb: true,
        });
        v.push(Problem::MatMul {
            m: t,
            k: SMOL_HIDDEN,
            n: SMOL_FFN,
            tb: true,
        });
        v.push(Problem::MatMul {
            m: 1,
            k: SMOL_HIDDEN,
            n: SMOL_VOCAB,
            tb: true,
        });
        v
    }

    /// The attention suite: causal prefill at several sequence lengths (8 heads of 64), and
    /// decode (one query row; SmolLM2's 9 query heads over 3 KV heads) against a KV cache.
    pub fn attentions(quick: bool) -> Vec<Problem> {
        let prefill: &[usize] = if quick {
            &[256]
        } else {
            &[128, 512, 1024, 2048, 4096]
        };
        let decode: &[usize] = if quick {
            &[512]
        } else {
            &[128, 512, 1024, 4096]
        };
        let mut v: Vec<Problem> = prefill
            .iter()
            .map(|&s| Problem::Attention {
                heads: 8,
                kv_heads: 8,
                q_len: s,
                kv_len: s,
                d: 64,
            })
            .collect();
        v.extend(decode.iter().map(|&s| Problem::Attention {
            heads: 9,
            kv_heads: 3,
            q_len: 1,
            kv_len: s,
            d: 64,
        }));
        v
    }

    /// A short name for tables and JSON: `matmul 512³`, `matmul [64,576]×[1536,576]ᵀ`,
    /// `attention prefill 8×512×64`, `attention decode 9/3×1×4096×64`.
    pub fn name(&self) -> String {
        match *self {
            Problem::MatMul { m, k, n, tb } if m == k && k == n => {
                format!("matmul {n}³{}", if tb { " bᵀ" } else { "" })
            }
            Problem::MatMul { m, k, n, tb: true } => format!("matmul [{m},{k}]×[{n},{k}]ᵀ"),
            Problem::MatMul { m, k, n, tb: false } => format!("matmul [{m},{k}]×[{k},{n}]"),
            Problem::Attention {
                heads,
                q_len,
                kv_len,
                d,
                ..
            } if q_len == kv_len => format!("attention prefill {heads}×{q_len}×{d}"),
            Problem::Attention {
                heads,
                kv_heads,
                q_len,
                kv_len,
                d,
            } => format!("attention decode {heads}/{kv_heads}×{q_len}×{kv_len}×{d}"),
        }
    }

    /// Floating-point operations of one run (multiply-add = 2; attention counts QKᵀ and PV over
    /// the keys each causal row sees).
    pub fn flops(&self) -> f64 {
        match *self {
            Problem::MatMul { m, k, n, .. } => 2.0 * (m * k * n) as f64,
            Problem::Attention {
                heads,
                q_len,
                kv_len,
                d,
                ..
            } => {
                let seen: f64 = (0..q_len).map(|i| (kv_len - q_len + i + 1) as f64).sum();
                4.0 * (heads * d) as f64 * seen
            }
        }
    }

    /// Bytes one run must move at least: every operand read once and the output written once.
    pub fn bytes(&self, dtype: DType) -> f64 {
        let e = dtype.size_of() as f64;
        match *self {
            Problem::MatMul { m, k, n, .. } => e * (m * k + k * n + m * n) as f64,
            Problem::Attention {
                heads,
                kv_heads,
                q_len,
                kv_len,
                d,
            } => e * (2 * heads * q_len * d + 2 * kv_heads * kv_len * d) as f64,
        }
    }

    /// The graph (inputs `a`, `b` — a weight when transposed — or `q`, `k`, `v`; output `y`) in
    /// `dtype`.
    pub fn graph(&self, dtype: DType) -> Result<Graph> {
        let mut g = Graph::new();
        let y = match *self {
            Problem::MatMul { m, k, n, tb } => {
                let a = g.input("a", [m, k], dtype);
                // A transposed b is a weight in Hugging Face's layout: resident on the device.
                let b = if tb {
                    g.weight("b", [n, k], dtype)
                } else {
                    g.input("b", [k, n], dtype)
                };
                g.matmul_t(a, b, false, tb)?
            }
            Problem::Attention {
                heads,
                kv_heads,
                q_len,
                kv_len,
                d,
            } => {
                let q = g.input("q", [1, heads, q_len, d], dtype);
                let k = g.input("k", [1, kv_heads, kv_len, d], dtype);
                let v = g.input("v", [1, kv_heads, kv_len, d], dtype);
                let offset = crate::Offset::Fixed(kv_len - q_len);
                let scale = 1.0 / (d as f64).sqrt();
                g.attention(q, k, v, None, scale, true, Some(offset))?
            }
        };
        g.output("y", y)?;
        Ok(g)
    }

    /// Whether the named tensor of [`Problem::inputs`] is a weight (loaded once with
    /// `Session::load_weight`) rather than an input given at every run.
    pub fn is_weight(&self, name: &str) -> bool {
        matches!(self, Problem::MatMul { tb: true, .. }) && name == "b"
    }

    /// Deterministic tensors in [-1, 1), by name, stored in `dtype`: the inputs and weights.
    pub fn inputs(&self, dtype: DType) -> Result<Vec<(&'static str, Tensor)>> {
        let t = |shape: &[usize], seed: u32| -> Result<Tensor> {
            Tensor::from_f32(shape, data(shape.iter().product(), seed), dtype)
        };
        Ok(match *self {
            Problem::MatMul { m, k, n, tb } => vec![
                ("a", t(&[m, k], 1)?),
                ("b", t(&if tb { [n, k] } else { [k, n] }, 2)?),
            ],
            Problem::Attention {
                heads,
                kv_heads,
                q_len,
                kv_len,
                d,
            } => vec![
                ("q", t(&[1, heads, q_len, d], 3)?),
                ("k", t(&[1, kv_heads, kv_len, d], 4)?),
                ("v", t(&[1, kv_heads, kv_len, d], 5)?),
            ],
        })
    }
}

/// `n` deterministic values in [-1, 1) (xorshift32).
pub fn data(n: usize, seed: u32) -> Vec<f32> {
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
