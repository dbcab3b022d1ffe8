//! Fused attention on the CPU: the geometry shared by the reference and the fast path (which keys
//! a query row sees), the f64 reference, and the fast path.
//!
//! The fast path is flash-style: a block of up to [`QB`] query rows (of one batch row and one
//! key/value head, so GQA heads that share K and V read each tile once) walks the visible keys in
//! tiles of [`KT`]. Per tile it
//!
//! - computes the scores transposed (keys × query rows, the query block transposed once and
//!   pre-scaled by `scale·log2 e`) with a 6×16 AVX2/FMA register tile, skipping the register
//!   tiles no row sees on the causal diagonal; a block of at most 4 rows (decode) instead takes
//!   dot products of each key row with its rows, two keys at a time;
//! - masks the tile only where the causal or padding limit cuts it, with a finite sentinel;
//! - updates each row's running max and sum (an online softmax in base 2, a polynomial `exp2`,
//!   vectorised across rows) and rescales the output rows;
//! - adds `P·V` into the output rows (6×16 register tiles, or 3×24 / 2×32 for few rows), each row
//!   group stopping at its last visible key.
//!
//! Tiles past every row's last key are never read. 16-bit Q is widened once per block and K and V
//! once per tile, shared by up to 4 blocks of a head. Blocks run in parallel (rayon); when there
//! are few blocks and many keys (decode), each block's keys are split too and the partial softmax
//! states merged. Without AVX2 and FMA, a portable row-by-row online softmax does the same.

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
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
    for_each_row(g, q, k, lengths, |qb, kb, s| {
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
    });
    out
}

/// Calls `f(q row offset, k/v head offset, scaled scores of the visible keys)` for every query
/// row that sees at least one key.
fn for_each_row(
    g: &Geometry,
    q: &[f64],
    k: &[f64],
    lengths: Option<&[u32]>,
    mut f: impl FnMut(usize, usize, &[f64]),
) {
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
                f(qb, kb, &s);
            }
        }
    }
}

/// The row's log-sum-exp for a row with no visible key (settled decision 1: a finite sentinel).
pub(crate) const LSE_EMPTY: f32 = f32::MIN;

/// The f64 reference of `lse` attention: each query row's log-sum-exp of its scaled, visible
/// scores, `[B, Hq, Sq]`.
pub(crate) fn lse_reference(
    g: &Geometry,
    q: &[f64],
    k: &[f64],
    lengths: Option<&[u32]>,
) -> Vec<f64> {
    let mut out = vec![f64::from(LSE_EMPTY); g.b * g.hq * g.sq];
    for_each_row(g, q, k, lengths, |qb, _, s| {
        let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        out[qb / g.d] = m + s.iter().map(|&x| (x - m).exp()).sum::<f64>().ln();
    });
    out
}

/// The fast path of `lse` attention: `[B, Hq, Sq]` f32, rows in parallel, f32 dot products in
/// 8 lanes (vectorised by the compiler) and an online max and sum over the visible keys.
pub(crate) fn lse_fast(g: &Geometry, q: Kv<'_>, k: Kv<'_>, lengths: Option<&[u32]>) -> Vec<f32> {
    let (q, k) = (q.to_f32(), k.to_f32());
    let mut out = vec![LSE_EMPTY; g.b * g.hq * g.sq];
    let rows_per_head = g.sq.max(1);
    out.par_chunks_mut(rows_per_head)
        .enumerate()
        .for_each(|(bh, rows)| {
            let (b, h) = (bh / g.hq, bh % g.hq);
            for (i, o) in rows.iter_mut().enumerate() {
                let (qb, kb) = g.bases(b, h, i);
                let n = g.visible(b, i, lengths);
                let qr = &q[qb..qb + g.d];
                let (mut m, mut l) = (f32::MIN, 0f32);
                for j in 0..n {
                    let kr = &k[kb + j * g.d..kb + (j + 1) * g.d];
                    let mut acc = [0f32; 8];
                    let (qc, kc) = (qr.chunks_exact(8), kr.chunks_exact(8));
                    let (qt, kt) = (qc.remainder(), kc.remainder());
                    for (a, b) in qc.zip(kc) {
                        for t in 0..8 {
                            acc[t] = a[t].mul_add(b[t], acc[t]);
                        }
                    }
                    let tail: f32 = qt.iter().zip(kt).map(|(a, b)| a * b).sum();
                    let s = (acc.iter().sum::<f32>() + tail) * g.scale as f32;
                    let mx = m.max(s);
                    l = l * (m - mx).exp() + (s - mx).exp();
                    m = mx;
                }
                if n > 0 {
                    *o = m + l.ln();
                }
            }
        });
    out
}

/// Q, K or V as stored: f32 is read in place, f16/bf16 widened one block or tile at a time.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Kv<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    BF16(&'a [bf16]),
}

impl<'a> Kv<'a> {
    /// Elements `[start, start + len)` as f32: borrowed, or widened into `buf`.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    fn span<'b>(self, start: usize, len: usize, buf: &'b mut Vec<f32>) -> &'b [f32]
    where
        'a: 'b,
    {
        let widen = |buf: &'b mut Vec<f32>| -> &'b mut [f32] {
            buf.resize(len, 0.0);
            &mut buf[..len]
        };
        match self {
            Kv::F32(x) => &x[start..start + len],
            Kv::F16(x) => {
                let b = widen(buf);
                x[start..start + len].convert_to_f32_slice(b);
                b
            }
            Kv::BF16(x) => {
                let b = widen(buf);
                x[start..start + len].convert_to_f32_slice(b);
                b
            }
        }
    }

    /// The whole operand as f32 (the portable path).
    fn to_f32(self) -> std::borrow::Cow<'a, [f32]> {
        match self {
            Kv::F32(x) => std::borrow::Cow::Borrowed(x),
            Kv::F16(x) => std::borrow::Cow::Owned(crate::dtype::widen_f16(x)),
            Kv::BF16(x) => std::borrow::Cow::Owned(crate::dtype::widen_bf16(x)),
        }
    }
}

/// Query rows per block (the columns of a score tile).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) const QB: usize = 64;
/// Keys per tile.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) const KT: usize = 64;
/// The finite "minus infinity" of masked scores and of a running max before any key
/// (settled decision 1: kernels never materialise Inf).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const SENTINEL: f32 = -1.0e30;

/// The fast path: `out` [B, Hq, Sq, D] in f32 (its capacity reused); q, k and v as stored.
pub(crate) fn fast(
    g: &Geometry,
    q: Kv<'_>,
    k: Kv<'_>,
    v: Kv<'_>,
    lengths: Option<&[u32]>,
    out: &mut Vec<f32>,
) {
    out.clear();
    out.resize(g.b * g.hq * g.sq * g.d, 0.0);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        tiled(g, q, k, v, lengths, out);
        return;
    }
    portable(g, &q.to_f32(), &k.to_f32(), &v.to_f32(), lengths, out);
}

/// A query block: its first row in its group, its row count, and its output rows.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
type BlockRows<'o> = (usize, usize, &'o mut [f32]);

/// The blocks of one (batch row, key/value head) group, as (first row, rows). The group's rows
/// are its `ratio` query heads' rows, head-major, which is also their order in the output, so a
/// block's output is one contiguous slice. A head with many queries is cut into near-equal blocks
/// of at most [`QB`] rows; short heads (decode) are packed several to a block, so the heads that
/// share K and V read each tile once.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn blocks(sq: usize, ratio: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    if sq == 0 || ratio == 0 {
        return out;
    }
    if sq >= QB / 2 {
        let nb = sq.div_ceil(QB);
        for h in 0..ratio {
            let mut i = 0;
            for blk in 0..nb {
                let end = sq * (blk + 1) / nb;
                out.push((h * sq + i, end - i));
                i = end;
            }
        }
    } else {
        let per = (QB / sq).max(1);
        let mut h = 0;
        while h < ratio {
            let n = per.min(ratio - h);
            out.push((h * sq, n * sq));
            h += n;
        }
    }
    out
}

#[cfg(target_arch = "x86_64")]
fn tiled(g: &Geometry, q: Kv<'_>, k: Kv<'_>, v: Kv<'_>, lengths: Option<&[u32]>, out: &mut [f32]) {
    let d = g.d;
    let ratio = g.hq / g.hkv.max(1);
    let rows = ratio * g.sq;
    if out.is_empty() {
        return;
    }
    let blocks = blocks(g.sq, ratio);
    let groups = g.b * g.hkv;
    let mut tasks: Vec<(usize, usize, usize, &mut [f32])> = Vec::new();
    for (grp, chunk) in out.chunks_mut(rows * d).enumerate() {
        let mut rest = chunk;
        for &(r0, nr) in &blocks {
            let (o, tail) = std::mem::take(&mut rest).split_at_mut(nr * d);
            tasks.push((grp, r0, nr, o));
            rest = tail;
        }
    }
    // Few blocks and many keys (decode): split each block's keys too, so every thread has work,
    // and merge the splits' partial softmax states.
    let threads = rayon::current_num_threads().max(1);
    // At least 4 tasks per thread, a multiple of the thread count (equal shares), each split
    // at least 2 tiles long.
    let splits = if tasks.len() < 2 * threads && g.keys >= 4 * KT {
        let most = g.keys / (2 * KT);
        let mut sp = (4 * threads).div_ceil(tasks.len().max(1));
        while !(sp * tasks.len()).is_multiple_of(threads) && sp < most {
            sp += 1;
        }
        sp.min(most).max(1)
    } else {
        1
    };
    let chunk = g.keys.div_ceil(splits).next_multiple_of(KT);
    if splits == 1 {
        // 16-bit K and V: blocks of one group run together, up to 4 at a time, so each tile is
        // widened once for all of them, when that still leaves every thread several tasks.
        let wide = !matches!(k, Kv::F32(_)) && !matches!(v, Kv::F32(_));
        let per = if wide && blocks.len() > 1 && groups * blocks.len().div_ceil(4) >= 4 * threads {
            4
        } else {
            1
        };
        let mut sets: Vec<(usize, Vec<BlockRows<'_>>)> = Vec::new();
        for (grp, r0, nr, o) in tasks {
            match sets.last_mut() {
                Some((g0, list)) if *g0 == grp && list.len() < per => list.push((r0, nr, o)),
                _ => sets.push((grp, vec![(r0, nr, o)])),
            }
        }
        sets.into_par_iter().for_each(|(grp, list)| {
            // SAFETY: `fast` checked that the CPU has AVX2 and FMA.
            unsafe { avx::blocks(g, q, k, v, lengths, grp, list, (0, g.keys), true) };
        });
        return;
    }
    tasks.into_par_iter().for_each(|(grp, r0, nr, o)| {
        let parts: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = (0..splits)
            .into_par_iter()
            .map(|sp| {
                let mut po = vec![0f32; nr * d];
                let keys = (sp * chunk, ((sp + 1) * chunk).min(g.keys));
                // SAFETY: as above.
                let ml = unsafe {
                    avx::blocks(
                        g,
                        q,
                        k,
                        v,
                        lengths,
                        grp,
                        vec![(r0, nr, &mut po)],
                        keys,
                        false,
                    )
                };
                let (m, l) = ml.into_iter().next().unwrap_or_default();
                (po, m, l)
            })
            .collect();
        merge(g, lengths, grp / g.hkv, r0, &parts, o);
    });
}

/// Merges the partial results of a block's key splits into its output rows: with the overall
/// max M of a row, o = Σ 2^(m_s − M)·o_s / Σ 2^(m_s − M)·l_s (a split that saw none of the
/// row's keys has the sentinel max and weighs 0); a row with no visible key gives zeros.
#[cfg(target_arch = "x86_64")]
fn merge(
    g: &Geometry,
    lengths: Option<&[u32]>,
    b: usize,
    r0: usize,
    parts: &[(Vec<f32>, Vec<f32>, Vec<f32>)],
    o: &mut [f32],
) {
    let d = g.d;
    for (c, row) in o.chunks_exact_mut(d).enumerate() {
        if g.visible(b, (r0 + c) % g.sq, lengths) == 0 {
            row.fill(0.0);
            continue;
        }
        let mx = parts.iter().map(|p| p.1[c]).fold(SENTINEL, f32::max);
        let mut sum = 0f32;
        row.fill(0.0);
        for (po, m, l) in parts {
            let wgt = (m[c] - mx).exp2();
            if wgt == 0.0 {
                continue;
            }
            sum += wgt * l[c];
            for (x, &y) in row.iter_mut().zip(&po[c * d..(c + 1) * d]) {
                *x += wgt * y;
            }
        }
        if sum > 0.0 {
            let inv = 1.0 / sum;
            for x in row.iter_mut() {
                *x *= inv;
            }
        }
    }
}

/// The portable path: each query row walks its visible keys once with an online softmax
/// (running max and sum, the accumulator rescaled when the max grows), in f32, rows in parallel.
fn portable(
    g: &Geometry,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    lengths: Option<&[u32]>,
    out: &mut [f32],
) {
    let d = g.d;
    if d == 0 {
        return;
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
}

/// 2^x for each element of `x` in place, vectorised where the CPU allows (relative error a few
/// f32 ulps; 0 below 2^-126). Exposed for the accuracy test.
pub fn exp2_slice(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the features were just checked.
        unsafe { avx::exp2_slice(x) };
        return;
    }
    for v in x.iter_mut() {
        *v = if *v < -126.0 { 0.0 } else { v.exp2() };
    }
}

#[cfg(target_arch = "x86_64")]
mod avx {
    //! The AVX2 + FMA kernels. Every function here needs both features (checked by callers).

    use std::arch::x86_64::*;

    use super::{BlockRows, Geometry, KT, Kv, SENTINEL};

    /// Taylor coefficients of 2^f = e^(f ln 2) on |f| ≤ 1/2, degree 7: truncation ≤ 5.2e-9
    /// relative, below half an f32 ulp.
    const C: [f32; 8] = [
        1.0,
        std::f32::consts::LN_2,
        0.240_226_5,
        0.055_504_11,
        0.009_618_129,
        0.001_333_355_8,
        0.000_154_035_3,
        0.000_015_252_734,
    ];

    /// 2^x, 8 lanes: x = n + f with n = round(x), f ∈ [−½, ½]; 2^n from the exponent bits.
    /// Inputs below −126 give exactly 0 (masked scores), above 127 are clamped.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn exp2(x: __m256) -> __m256 {
        let lo = _mm256_set1_ps(-126.0);
        let keep = _mm256_cmp_ps::<_CMP_GE_OQ>(x, lo);
        let x = _mm256_min_ps(_mm256_max_ps(x, lo), _mm256_set1_ps(127.0));
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(x);
        let f = _mm256_sub_ps(x, n);
        let mut p = _mm256_set1_ps(C[7]);
        for c in C[..7].iter().rev() {
            p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(*c));
        }
        let e = _mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        ));
        _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)), keep)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn exp2_slice(x: &mut [f32]) {
        let mut chunks = x.chunks_exact_mut(8);
        for c in &mut chunks {
            // SAFETY: `c` has 8 elements.
            unsafe {
                let v = _mm256_loadu_ps(c.as_ptr());
                _mm256_storeu_ps(c.as_mut_ptr(), exp2(v));
            }
        }
        let rest = chunks.into_remainder();
        let mut buf = [0f32; 8];
        buf[..rest.len()].copy_from_slice(rest);
        // SAFETY: `buf` has 8 elements.
        unsafe {
            let v = exp2(_mm256_loadu_ps(buf.as_ptr()));
            _mm256_storeu_ps(buf.as_mut_ptr(), v);
        }
        let n = rest.len();
        rest.copy_from_slice(&buf[..n]);
    }

    /// Scores of `R` keys against `8·NV` query columns starting at `c`:
    /// `s[(j + t)·w + c ..] = Σ_d k[(j + t)·d + dd] · qt[dd·w + c ..]`.
    ///
    /// SAFETY: `k` holds rows `j..j + R` of `d`, `qt` is `d × w`, `s` has rows `j..j + R` of `w`,
    /// and `c + 8·NV ≤ w`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn score_kernel<const R: usize, const NV: usize>(
        k: &[f32],
        j: usize,
        d: usize,
        qt: &[f32],
        w: usize,
        c: usize,
        s: &mut [f32],
    ) {
        debug_assert!(k.len() >= (j + R) * d && qt.len() >= d * w && s.len() >= (j + R) * w);
        debug_assert!(c + 8 * NV <= w);
        let mut acc = [[_mm256_setzero_ps(); NV]; R];
        let kp = unsafe { k.as_ptr().add(j * d) };
        let qp = unsafe { qt.as_ptr().add(c) };
        for dd in 0..d {
            let mut qv = [_mm256_setzero_ps(); NV];
            for (u, x) in qv.iter_mut().enumerate() {
                *x = unsafe { _mm256_loadu_ps(qp.add(dd * w + 8 * u)) };
            }
            for (t, a) in acc.iter_mut().enumerate() {
                let kb = _mm256_set1_ps(unsafe { *kp.add(t * d + dd) });
                for u in 0..NV {
                    a[u] = _mm256_fmadd_ps(kb, qv[u], a[u]);
                }
            }
        }
        let sp = s.as_mut_ptr();
        for (t, a) in acc.iter().enumerate() {
            for (u, x) in a.iter().enumerate() {
                unsafe { _mm256_storeu_ps(sp.add((j + t) * w + c + 8 * u), *x) };
            }
        }
    }

    /// `s[j·w + c] = scores` for keys `0..n` of the tile and every column.
    #[target_feature(enable = "avx2,fma")]
    ///
    /// `need[g]`: how many of the tile's keys any column of the 8-column group `g` sees; a
    /// register tile no column of which sees its first key is skipped (the causal diagonal),
    /// its scores left for the mask to overwrite.
    #[allow(clippy::too_many_arguments)]
    fn scores(k: &[f32], n: usize, d: usize, qt: &[f32], w: usize, s: &mut [f32], need: &[usize]) {
        assert!(k.len() >= n * d && qt.len() >= d * w && s.len() >= n * w && w.is_multiple_of(8));
        assert!(need.len() >= w / 8);
        let mut j = 0;
        // SAFETY (all calls): the assert above bounds every row and column used.
        while j < n {
            let r = step(n - j);
            let mut c = 0;
            while c + 16 <= w {
                if need[c / 8].max(need[c / 8 + 1]) <= j {
                    c += 16;
                    continue;
                }
                match r {
                    6 => unsafe { score_kernel::<6, 2>(k, j, d, qt, w, c, s) },
                    4 => unsafe { score_kernel::<4, 2>(k, j, d, qt, w, c, s) },
                    _ => unsafe { score_kernel::<1, 2>(k, j, d, qt, w, c, s) },
                }
                c += 16;
            }
            if c < w && need[c / 8] > j {
                match r {
                    6 => unsafe { score_kernel::<6, 1>(k, j, d, qt, w, c, s) },
                    4 => unsafe { score_kernel::<4, 1>(k, j, d, qt, w, c, s) },
                    _ => unsafe { score_kernel::<1, 1>(k, j, d, qt, w, c, s) },
                }
            }
            j += r;
        }
    }

    /// Query rows at most for [`scores_few`].
    const FEW: usize = 4;

    /// Scores for a block of at most [`FEW`] query rows (decode): `q` holds 4 rows of `d`
    /// (row-major, zeros past the block), and each key row's dot products with them are summed
    /// across lanes, two keys at a time, into columns 0..4 of `s` (the other columns stay as
    /// they are: finite, and never read back).
    #[target_feature(enable = "avx2,fma")]
    fn scores_few(k: &[f32], n: usize, d: usize, q: &[f32], w: usize, s: &mut [f32]) {
        assert!(k.len() >= n * d && q.len() >= FEW * d && s.len() >= n * w && w >= 8);
        let dv = d / 8 * 8;
        let (kp, qp, sp) = (k.as_ptr(), q.as_ptr(), s.as_mut_ptr());
        let mut j = 0;
        // SAFETY: the assert bounds every access: key rows j, j + 1 < n (the second only when it
        // exists), lanes x + 8 ≤ dv ≤ d, query rows < 4, and 4 columns of rows j, j + 1 of `s`.
        unsafe {
            while j < n {
                let two = j + 1 < n;
                let mut acc = [[_mm256_setzero_ps(); FEW]; 2];
                for x in (0..dv).step_by(8) {
                    let mut qv = [_mm256_setzero_ps(); FEW];
                    for (c, v) in qv.iter_mut().enumerate() {
                        *v = _mm256_loadu_ps(qp.add(c * d + x));
                    }
                    let k0 = _mm256_loadu_ps(kp.add(j * d + x));
                    let k1 = if two {
                        _mm256_loadu_ps(kp.add((j + 1) * d + x))
                    } else {
                        _mm256_setzero_ps()
                    };
                    for c in 0..FEW {
                        acc[0][c] = _mm256_fmadd_ps(k0, qv[c], acc[0][c]);
                        acc[1][c] = _mm256_fmadd_ps(k1, qv[c], acc[1][c]);
                    }
                }
                // Eight lane sums at once: [s(j, 0..4), s(j + 1, 0..4)].
                let t0 = _mm256_hadd_ps(acc[0][0], acc[0][1]);
                let t1 = _mm256_hadd_ps(acc[0][2], acc[0][3]);
                let t2 = _mm256_hadd_ps(acc[1][0], acc[1][1]);
                let t3 = _mm256_hadd_ps(acc[1][2], acc[1][3]);
                let u0 = _mm256_hadd_ps(t0, t1);
                let u1 = _mm256_hadd_ps(t2, t3);
                let r = _mm256_add_ps(
                    _mm256_permute2f128_ps::<0x20>(u0, u1),
                    _mm256_permute2f128_ps::<0x31>(u0, u1),
                );
                let mut sums = [0f32; 8];
                _mm256_storeu_ps(sums.as_mut_ptr(), r);
                for x in dv..d {
                    for c in 0..FEW {
                        let qx = *qp.add(c * d + x);
                        sums[c] += *kp.add(j * d + x) * qx;
                        if two {
                            sums[FEW + c] += *kp.add((j + 1) * d + x) * qx;
                        }
                    }
                }
                for c in 0..FEW {
                    *sp.add(j * w + c) = sums[c];
                    if two {
                        *sp.add((j + 1) * w + c) = sums[FEW + c];
                    }
                }
                j += 2;
            }
        }
    }

    /// Rows per register tile: 6 (12 accumulators of 8 lanes, two operand vectors and a
    /// broadcast fit the 16 AVX registers), then 4, then 1 for what is left.
    fn step(left: usize) -> usize {
        if left >= 6 {
            6
        } else if left >= 4 {
            4
        } else {
            1
        }
    }

    /// `o[(c + t)·d + dd ..] += Σ_j p[j·w + c + t] · v[j·d + dd ..]` for `R` rows from `c` and
    /// `8·NV` columns from `dd`.
    ///
    /// SAFETY: `p` is `n × w` with `c + R ≤ w`, `v` is `n × d`, `o` holds rows `c..c + R` of
    /// `d`, and `dd + 8·NV ≤ d`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn pv_kernel<const R: usize, const NV: usize>(
        p: &[f32],
        n: usize,
        w: usize,
        c: usize,
        v: &[f32],
        d: usize,
        dd: usize,
        o: &mut [f32],
    ) {
        debug_assert!(p.len() >= n * w && c + R <= w && v.len() >= n * d);
        debug_assert!(o.len() >= (c + R) * d && dd + 8 * NV <= d);
        let op = o.as_mut_ptr();
        let mut acc = [[_mm256_setzero_ps(); NV]; R];
        for (t, a) in acc.iter_mut().enumerate() {
            for (u, x) in a.iter_mut().enumerate() {
                *x = unsafe { _mm256_loadu_ps(op.add((c + t) * d + dd + 8 * u)) };
            }
        }
        let (pp, vp) = (p.as_ptr(), v.as_ptr());
        for j in 0..n {
            let mut vv = [_mm256_setzero_ps(); NV];
            for (u, x) in vv.iter_mut().enumerate() {
                *x = unsafe { _mm256_loadu_ps(vp.add(j * d + dd + 8 * u)) };
            }
            for (t, a) in acc.iter_mut().enumerate() {
                let pb = _mm256_set1_ps(unsafe { *pp.add(j * w + c + t) });
                for u in 0..NV {
                    a[u] = _mm256_fmadd_ps(pb, vv[u], a[u]);
                }
            }
        }
        for (t, a) in acc.iter().enumerate() {
            for (u, x) in a.iter().enumerate() {
                unsafe { _mm256_storeu_ps(op.add((c + t) * d + dd + 8 * u), *x) };
            }
        }
    }

    /// `o[c·d ..] += Σ_j p[j·w + c] · v[j·d ..]` for rows `c < rows`, keys `j < n`.
    #[target_feature(enable = "avx2,fma")]
    ///
    /// `keys[c]`: keys of the tile row `c` sees (its later probabilities are 0, so a register
    /// tile of rows stops at its rows' last visible key).
    #[allow(clippy::too_many_arguments)]
    fn pv(
        p: &[f32],
        n: usize,
        w: usize,
        rows: usize,
        v: &[f32],
        d: usize,
        o: &mut [f32],
        keys: &[usize],
    ) {
        assert!(p.len() >= n * w && rows <= w && v.len() >= n * d && o.len() >= rows * d);
        assert!(keys.len() >= rows);
        // SAFETY (all calls): the assert above bounds every row and column used.
        let mut c = 0;
        while c < rows {
            // Few rows (decode, GQA groups): 3 rows at most, and 24 or 32 columns per tile so
            // that enough independent accumulators hide the FMA latency.
            let r = match rows - c {
                1..=3 => rows - c,
                left => step(left),
            };
            let n = keys[c..c + r].iter().copied().max().unwrap_or(0).min(n);
            let mut dd = 0;
            if r == 3 {
                while dd + 24 <= d {
                    unsafe { pv_kernel::<3, 3>(p, n, w, c, v, d, dd, o) };
                    dd += 24;
                }
            } else if r <= 2 {
                while dd + 32 <= d {
                    match r {
                        2 => unsafe { pv_kernel::<2, 4>(p, n, w, c, v, d, dd, o) },
                        _ => unsafe { pv_kernel::<1, 4>(p, n, w, c, v, d, dd, o) },
                    }
                    dd += 32;
                }
            }
            while dd + 16 <= d {
                match r {
                    6 => unsafe { pv_kernel::<6, 2>(p, n, w, c, v, d, dd, o) },
                    4 => unsafe { pv_kernel::<4, 2>(p, n, w, c, v, d, dd, o) },
                    3 => unsafe { pv_kernel::<3, 2>(p, n, w, c, v, d, dd, o) },
                    2 => unsafe { pv_kernel::<2, 2>(p, n, w, c, v, d, dd, o) },
                    _ => unsafe { pv_kernel::<1, 2>(p, n, w, c, v, d, dd, o) },
                }
                dd += 16;
            }
            if dd + 8 <= d {
                match r {
                    6 => unsafe { pv_kernel::<6, 1>(p, n, w, c, v, d, dd, o) },
                    4 => unsafe { pv_kernel::<4, 1>(p, n, w, c, v, d, dd, o) },
                    3 => unsafe { pv_kernel::<3, 1>(p, n, w, c, v, d, dd, o) },
                    2 => unsafe { pv_kernel::<2, 1>(p, n, w, c, v, d, dd, o) },
                    _ => unsafe { pv_kernel::<1, 1>(p, n, w, c, v, d, dd, o) },
                }
                dd += 8;
            }
            for t in c..c + r {
                for x in dd..d {
                    let mut a = o[t * d + x];
                    for j in 0..n {
                        a += p[j * w + t] * v[j * d + x];
                    }
                    o[t * d + x] = a;
                }
            }
            c += r;
        }
    }

    /// The online-softmax step of one tile, 8 columns at a time: the new running max per column,
    /// `p = 2^(s − max)` in place, the running sum, and each column's rescale factor in `alpha`.
    #[target_feature(enable = "avx2,fma")]
    fn softmax(s: &mut [f32], n: usize, w: usize, m: &mut [f32], l: &mut [f32], alpha: &mut [f32]) {
        assert!(s.len() >= n * w && m.len() >= w && l.len() >= w && alpha.len() >= w);
        assert!(w.is_multiple_of(8));
        let sp = s.as_mut_ptr();
        // SAFETY: the asserts bound every access (columns c..c + 8 ≤ w, rows < n).
        unsafe {
            for c in (0..w).step_by(8) {
                let old = _mm256_loadu_ps(m.as_ptr().add(c));
                let mut mx = old;
                for j in 0..n {
                    mx = _mm256_max_ps(mx, _mm256_loadu_ps(sp.add(j * w + c)));
                }
                let mut sum = _mm256_setzero_ps();
                for j in 0..n {
                    let x = _mm256_sub_ps(_mm256_loadu_ps(sp.add(j * w + c)), mx);
                    let e = exp2(x);
                    _mm256_storeu_ps(sp.add(j * w + c), e);
                    sum = _mm256_add_ps(sum, e);
                }
                let a = exp2(_mm256_sub_ps(old, mx));
                let lv = _mm256_fmadd_ps(_mm256_loadu_ps(l.as_ptr().add(c)), a, sum);
                _mm256_storeu_ps(l.as_mut_ptr().add(c), lv);
                _mm256_storeu_ps(m.as_mut_ptr().add(c), mx);
                _mm256_storeu_ps(alpha.as_mut_ptr().add(c), a);
            }
        }
    }

    /// One query block's state across key tiles: `nr` rows of one group (batch row × key/value
    /// head) whose output rows `o` (`nr × d`, zeros on entry) accumulate `P·V`.
    struct Blk<'o> {
        nr: usize,
        w: usize,
        few: bool,
        /// Visible keys per column (padding columns copy the block's widest row).
        nvis: Vec<usize>,
        nmin: usize,
        /// The block's last key read + 1 (within the key range).
        end: usize,
        /// The query block, scaled by `scale·log2 e`: transposed (d × w), or row-major for a
        /// block of at most [`FEW`] rows.
        qt: Vec<f32>,
        s: Vec<f32>,
        m: Vec<f32>,
        l: Vec<f32>,
        alpha: Vec<f32>,
        tile_keys: Vec<usize>,
        need: Vec<usize>,
        o: &'o mut [f32],
    }

    impl<'o> Blk<'o> {
        #[target_feature(enable = "avx2,fma")]
        #[allow(clippy::too_many_arguments)]
        fn new(
            g: &Geometry,
            q: Kv<'_>,
            lengths: Option<&[u32]>,
            grp: usize,
            r0: usize,
            nr: usize,
            key_end: usize,
            o: &'o mut [f32],
        ) -> Blk<'o> {
            let d = g.d;
            let (b, kvh) = (grp / g.hkv, grp % g.hkv);
            let ratio = g.hq / g.hkv;
            let w = nr.next_multiple_of(8);
            let mut nvis = vec![0usize; w];
            for (c, n) in nvis.iter_mut().enumerate().take(nr) {
                *n = g.visible(b, (r0 + c) % g.sq, lengths);
            }
            let nmax = nvis[..nr].iter().copied().max().unwrap_or(0);
            let nmin = nvis[..nr].iter().copied().min().unwrap_or(0);
            nvis[nr..].fill(nmax);
            let sl = (g.scale * std::f64::consts::LOG2_E) as f32;
            let qbase = (b * g.hq + kvh * ratio) * g.sq * d;
            let few = nr <= FEW;
            let mut qt = vec![0f32; if few { FEW * d } else { d * w }];
            let mut qbuf = Vec::new();
            for c in 0..nr {
                let row = span(q, qbase + (r0 + c) * d, d, &mut qbuf);
                for (dd, &x) in row.iter().enumerate() {
                    qt[if few { c * d + dd } else { dd * w + c }] = x * sl;
                }
            }
            Blk {
                nr,
                w,
                few,
                nvis,
                nmin,
                end: nmax.min(key_end),
                qt,
                s: vec![0f32; KT * w],
                m: vec![SENTINEL; w],
                l: vec![0f32; w],
                alpha: vec![0f32; w],
                tile_keys: vec![0usize; w],
                need: vec![0usize; w / 8],
                o,
            }
        }

        /// Keys `j0..j0 + n` (`kt`, `vt`: their rows of K and V, `n × d`).
        #[target_feature(enable = "avx2,fma")]
        fn step(&mut self, d: usize, j0: usize, n: usize, kt: &[f32], vt: &[f32]) {
            let (w, nr) = (self.w, self.nr);
            // Keys of this tile each row sees, and each 8-column group's most.
            for (t, &nv) in self.tile_keys.iter_mut().zip(&self.nvis) {
                *t = nv.saturating_sub(j0).min(n);
            }
            for (nd, grp) in self.need.iter_mut().zip(self.tile_keys.chunks_exact(8)) {
                *nd = grp.iter().copied().max().unwrap_or(0);
            }
            if self.few {
                scores_few(kt, n, d, &self.qt, w, &mut self.s);
            } else {
                scores(kt, n, d, &self.qt, w, &mut self.s, &self.need);
            }
            if j0 + n > self.nmin {
                // The causal diagonal or a padding limit cuts this tile.
                for (c, &lim) in self.nvis.iter().enumerate() {
                    for j in lim.saturating_sub(j0).min(n)..n {
                        self.s[j * w + c] = SENTINEL;
                    }
                }
            }
            softmax(&mut self.s, n, w, &mut self.m, &mut self.l, &mut self.alpha);
            for (row, &a) in self.o.chunks_exact_mut(d).zip(&self.alpha) {
                if a != 1.0 {
                    for x in row {
                        *x *= a;
                    }
                }
            }
            pv(&self.s, n, w, nr, vt, d, self.o, &self.tile_keys);
        }

        /// Divides each row by its sum (zeros for a row that sees no key) when `normalize`;
        /// returns the rows' running max (base 2) and sum.
        fn finish(mut self, d: usize, normalize: bool) -> (Vec<f32>, Vec<f32>) {
            self.m.truncate(self.nr);
            self.l.truncate(self.nr);
            if normalize {
                for ((row, &n), &sum) in self.o.chunks_exact_mut(d).zip(&self.nvis).zip(&self.l) {
                    if n == 0 || sum <= 0.0 {
                        row.fill(0.0);
                    } else {
                        let inv = 1.0 / sum;
                        for x in row {
                            *x *= inv;
                        }
                    }
                }
            }
            (self.m, self.l)
        }
    }

    /// Query blocks `(first row, rows, output rows)` of group `grp` over the keys
    /// `keys.0..keys.1`: each K and V tile is widened once for all of them. With `normalize`,
    /// the output rows are final; without, they are the unnormalised partial sums of a key
    /// split, and the returned running max (base 2) and sum per row let the caller merge.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn blocks(
        g: &Geometry,
        q: Kv<'_>,
        k: Kv<'_>,
        v: Kv<'_>,
        lengths: Option<&[u32]>,
        grp: usize,
        list: Vec<BlockRows<'_>>,
        keys: (usize, usize),
        normalize: bool,
    ) -> Vec<(Vec<f32>, Vec<f32>)> {
        let d = g.d;
        if d == 0 {
            return list
                .iter()
                .map(|&(_, nr, _)| (vec![SENTINEL; nr], vec![0f32; nr]))
                .collect();
        }
        let mut blks: Vec<Blk<'_>> = list
            .into_iter()
            .map(|(r0, nr, o)| Blk::new(g, q, lengths, grp, r0, nr, keys.1, o))
            .collect();
        let end = blks.iter().map(|b| b.end).max().unwrap_or(0);
        // Groups are batch-row-major, as K and V are: group `grp`'s rows start at grp·Skv.
        let kbase = grp * g.skv * d;
        let (mut kbuf, mut vbuf) = (Vec::new(), Vec::new());
        let mut j0 = keys.0;
        while j0 < end {
            let n = KT.min(end - j0);
            let kt = span(k, kbase + j0 * d, n * d, &mut kbuf);
            let vt = span(v, kbase + j0 * d, n * d, &mut vbuf);
            for b in blks.iter_mut().filter(|b| j0 < b.end) {
                let nb = n.min(b.end - j0);
                b.step(d, j0, nb, &kt[..nb * d], &vt[..nb * d]);
            }
            j0 += n;
        }
        blks.into_iter().map(|b| b.finish(d, normalize)).collect()
    }

    /// Elements `[start, start + len)` of K or V as f32: f32 borrowed, bf16 widened here (a
    /// 16-bit shift, 8 lanes), f16 by `half` (F16C).
    #[target_feature(enable = "avx2,fma")]
    fn span<'b>(x: Kv<'b>, start: usize, len: usize, buf: &'b mut Vec<f32>) -> &'b [f32] {
        match x {
            Kv::BF16(src) => {
                let src = &src[start..start + len];
                buf.resize(len, 0.0);
                let mut i = 0;
                // SAFETY: `src` and `buf` hold `len` elements; each step reads and writes 8.
                unsafe {
                    while i + 8 <= len {
                        let h = _mm_loadu_si128(src.as_ptr().add(i).cast::<__m128i>());
                        let w = _mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h));
                        _mm256_storeu_ps(buf.as_mut_ptr().add(i), _mm256_castsi256_ps(w));
                        i += 8;
                    }
                }
                for (o, h) in buf[i..len].iter_mut().zip(&src[i..]) {
                    *o = h.to_f32();
                }
                &buf[..len]
            }
            other => other.span(start, len, buf),
        }
    }
}
