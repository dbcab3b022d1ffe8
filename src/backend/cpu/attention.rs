//! Fused attention on the CPU: the geometry shared by the reference and the fast path (which keys
//! a query row sees), the f64 reference, and the fast path (one pass over the keys per query row
//! with an online softmax: the scores are never stored), multi-threaded over rows.

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::ir::{Offset, Op};
use crate::shape::Bindings;

/// The sizes of one attention run and its mask.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Geometry {
    pub b: usize,
    pub hq: usize,
    pub hkv: usize,
    pub sq: usize,
    pub skv: usize,
    pub d: usize,
    pub scale: f64,
    pub causal: bool,
    /// Keys read (a prefix of the Skv rows).
    pub keys: usize,
    /// The causal diagonal: query i sees keys ≤ off + i.
    pub off: usize,
}

impl Geometry {
    /// From the node's op and its operands' shapes under `bindings`.
    pub(crate) fn new(op: &Op, q: &[usize], k: &[usize], bindings: &Bindings) -> Result<Geometry> {
        let Op::Attention {
            scale,
            causal,
            q_offset,
            ..
        } = op
        else {
            return Err(Error::InvalidGraph(format!(
                "{} is not attention",
                op.name()
            )));
        };
        let (b, hq, sq, d) = (q[0], q[1], q[2], q[3]);
        let (hkv, skv) = (k[1], k[2]);
        let off = match q_offset {
            Some(Offset::Fixed(n)) => *n,
            Some(Offset::Sym(s)) => bindings.get(s)?,
            None => 0,
        };
        let keys = match q_offset {
            Some(_) => off.saturating_add(sq),
            None => skv,
        };
        if keys > skv {
            return Err(Error::InvalidArgument {
                op: "attention",
                msg: format!(
                    "query offset {off} + {sq} queries reads {keys} keys, past the {skv} rows of k and v"
                ),
            });
        }
        if hkv == 0 || hq % hkv != 0 {
            return Err(Error::InvalidArgument {
                op: "attention",
                msg: format!("{hq} query heads over {hkv} key/value heads"),
            });
        }
        Ok(Geometry {
            b,
            hq,
            hkv,
            sq,
            skv,
            d,
            scale: *scale,
            causal: *causal,
            keys,
            off,
        })
    }

    /// Keys query row `i` of batch row `b` sees: a prefix of the rows, cut by the causal mask
    /// and the batch row's valid length.
    pub(crate) fn visible(&self, b: usize, i: usize, lengths: Option<&[u32]>) -> usize {
        let mut n = self.keys;
        if self.causal {
            n = n.min(self.off.saturating_add(i).saturating_add(1));
        }
        if let Some(l) = lengths {
            n = n.min(l.get(b).map_or(0, |&x| x as usize));
        }
        n
    }

    /// Element offsets of query row (b, h, i) in q/out, and of key row 0 of its KV head in k/v.
    fn bases(&self, b: usize, h: usize, i: usize) -> (usize, usize) {
        let kvh = h / (self.hq / self.hkv);
        let qrow = ((b * self.hq + h) * self.sq + i) * self.d;
        let krow = (b * self.hkv + kvh) * self.skv * self.d;
        (qrow, krow)
    }
}

/// The f64 reference: scores, a max-subtracted softmax and the weighted sum, row by row.
pub(crate) fn reference(
    g: &Geometry,
    q: &[f64],
    k: &[f64],
    v: &[f64],
    lengths: Option<&[u32]>,
) -> Vec<f64> {
    let mut out = vec![0.0; g.b * g.hq * g.sq * g.d];
    for b in 0..g.b {
        for h in 0..g.hq {
            for i in 0..g.sq {
                let (qb, kb) = g.bases(b, h, i);
                let n = g.visible(b, i, lengths);
                if n == 0 {
                    continue;
                }
                let qr = &q[qb..qb + g.d];
                let s: Vec<f64> = (0..n)
                    .map(|j| {
                        let kr = &k[kb + j * g.d..kb + (j + 1) * g.d];
                        g.scale * qr.iter().zip(kr).map(|(a, b)| a * b).sum::<f64>()
                    })
                    .collect();
                let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|&x| (x - m).exp()).collect();
                let sum: f64 = e.iter().sum();
                let o = &mut out[qb..qb + g.d];
                for (j, &p) in e.iter().enumerate() {
                    let vr = &v[kb + j * g.d..kb + (j + 1) * g.d];
                    for (x, &y) in o.iter_mut().zip(vr) {
                        *x += p / sum * y;
                    }
                }
            }
        }
    }
    out
}

/// The fast path: each query row walks its visible keys once with an online softmax (running
/// max and sum, the accumulator rescaled when the max grows), in f32, rows in parallel.
pub(crate) fn fast(
    g: &Geometry,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    lengths: Option<&[u32]>,
) -> Vec<f32> {
    let d = g.d;
    let mut out = vec![0f32; g.b * g.hq * g.sq * d];
    if d == 0 {
        return out;
    }
    let scale = g.scale as f32;
    out.par_chunks_mut(d).enumerate().for_each(|(r, o)| {
        let i = r % g.sq;
        let h = (r / g.sq) % g.hq;
        let b = r / (g.sq * g.hq);
        let (qb, kb) = g.bases(b, h, i);
        let n = g.visible(b, i, lengths);
        let qr = &q[qb..qb + d];
        let (mut m, mut sum) = (f32::MIN, 0f32);
        for j in 0..n {
            let kr = &k[kb + j * d..kb + (j + 1) * d];
            let s = scale * qr.iter().zip(kr).map(|(a, b)| a * b).sum::<f32>();
            if s > m {
                let c = (m - s).exp();
                sum *= c;
                for x in o.iter_mut() {
                    *x *= c;
                }
                m = s;
            }
            let p = (s - m).exp();
            sum += p;
            let vr = &v[kb + j * d..kb + (j + 1) * d];
            for (x, &y) in o.iter_mut().zip(vr) {
                *x += p * y;
            }
        }
        if sum > 0.0 {
            for x in o.iter_mut() {
                *x /= sum;
            }
        }
    });
    out
}
