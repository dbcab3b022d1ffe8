//! Fused attention against the f64 reference: a pairwise-covering set of cases (generated here,
//! with every pair of values asserted covered) over query and key lengths, head dims, GQA ratios,
//! causal and padding masks and storage dtypes; fully masked rows; run-time offset and build-time
//! shape errors; the vectorised `exp2`; and a KV cache in session states (prefill, then decode one
//! token at a time, equals one full causal run, at no copy and no pipeline per step).
//!
//! ## Tolerance (settled decision 8), derived
//!
//! Inputs are stored in the case's dtype and the reference reads the same stored values, so only
//! the kernel's f32 arithmetic and the output's storage rounding differ. With u the f32 unit
//! roundoff, for one query row with visible keys j < n, probabilities p_j and output o = Σ p_j v_j:
//!
//! - a score s_j = scale·q·k_j is a D-term dot product (plus the pre-scaling of q), so
//!   |δs_j| ≤ (D + 2)·u·σ with σ = scale·Σ_d |q_d||k_jd| ≤ scale·D·max|q|·max|k|;
//! - a score error moves the output by δo = Σ_j p_j δs_j v_j − (Σ_j p_j δs_j)·o, so
//!   |δo| ≤ max_j |δs_j| · (Σ_j p_j|v_j| + |o|);
//! - the exponentials (a polynomial, a few u each), the running sum and the P·V accumulation over
//!   n keys (with the per-tile rescales) add at most (n + 16)·u·(Σ_j p_j|v_j| + |o|);
//! - the device stores its f32 result in the output dtype and the reference stores its f64
//!   result in the same dtype: two roundings, u_dtype·|o| each (one ulp apart at most).
//!
//! So |got − ref| ≤ 2·u·((D + 2)·σ + n + 16)·(Σ_j p_j|v_j| + |ref|) + 2.02·u_dtype·|ref|, with a
//! factor 2 of margin on the f32 part; Σ_j p_j|v_j| is the reference run on |v|. The worst-case
//! bound is loose, so an NMSE check (≤ 4·(u_dtype + 64·u)²) backs it.

use polytensor::{DType, Device, Dim, Error, Graph, NodeId, Offset, Session, Tensor};

use crate::common::{Rng, devices_under_test, random, run_on};

const SQ: [usize; 5] = [1, 3, 17, 100, 513];
const SKV: [usize; 5] = [1, 17, 100, 513, 2048];
const HEAD_DIM: [usize; 7] = [32, 47, 64, 80, 96, 128, 256];
const RATIO: [usize; 3] = [1, 3, 8];
const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];
/// Key/value heads in every case (≥ 2: one KV head hides head-mapping bugs).
const HKV: usize = 2;
/// About 2²⁸ multiply-adds per case (QKᵀ and PV over the visible keys).
const MAX_MACS: usize = 1 << 28;
/// Value ranges: q is wider than k and v so the softmax is not flat.
const QMAX: f32 = 2.0;
const KMAX: f32 = 1.0;

/// One point of the parameter space: an index into each value list, in the order
/// Sq, Skv, D, ratio, causal, padding, dtype.
type Point = [usize; 7];
const SIZES: Point = [5, 5, 7, 3, 2, 2, 3];

#[derive(Clone, Copy, Debug)]
struct Case {
    sq: usize,
    skv: usize,
    d: usize,
    ratio: usize,
    causal: bool,
    padding: bool,
    dtype: DType,
    /// Key/value heads ([`HKV`] in the pairwise cases) and batch rows (2 with padding, else 1).
    hkv: usize,
    b: usize,
}

impl Case {
    fn of(p: Point) -> Case {
        Case {
            sq: SQ[p[0]],
            skv: SKV[p[1]],
            d: HEAD_DIM[p[2]],
            ratio: RATIO[p[3]],
            causal: p[4] == 1,
            padding: p[5] == 1,
            dtype: DTYPES[p[6]],
            hkv: HKV,
            b: if p[5] == 1 { 2 } else { 1 },
        }
    }
    fn batch(&self) -> usize {
        self.b
    }
    /// Valid keys per batch row under padding: different lengths, one of them 0.
    fn lengths(&self) -> Vec<u32> {
        (0..self.b)
            .map(|r| match r {
                0 => (2 * self.skv).div_ceil(3) as u32,
                1 => 0,
                _ => self.skv.saturating_sub(r) as u32,
            })
            .collect()
    }
    fn offset(&self) -> usize {
        self.skv - self.sq
    }
    /// Keys query row i of batch row b sees.
    fn visible(&self, b: usize, i: usize) -> usize {
        let mut n = self.skv;
        if self.causal {
            n = n.min(self.offset() + i + 1);
        }
        if self.padding {
            n = n.min(self.lengths()[b] as usize);
        }
        n
    }
    fn valid(&self) -> bool {
        !(self.causal && self.sq > self.skv)
    }
    fn macs(&self) -> usize {
        let keys: usize = (0..self.batch())
            .map(|b| (0..self.sq).map(|i| self.visible(b, i)).sum::<usize>())
            .sum();
        2 * keys * self.d * self.ratio * self.hkv
    }
}

/// Every pair (dimension a = value x, dimension b = value y) a point covers.
fn pairs(p: &Point) -> Vec<(usize, usize, usize, usize)> {
    let mut out = Vec::new();
    for a in 0..7 {
        for b in a + 1..7 {
            out.push((a, p[a], b, p[b]));
        }
    }
    out
}

/// Every pair of values of two different dimensions, as (dimension, value index, dimension,
/// value index).
fn all_pairs() -> Vec<(usize, usize, usize, usize)> {
    let mut out = Vec::new();
    for (a, &na) in SIZES.iter().enumerate() {
        for (b, &nb) in SIZES.iter().enumerate().skip(a + 1) {
            for x in 0..na {
                for y in 0..nb {
                    out.push((a, x, b, y));
                }
            }
        }
    }
    out
}

/// A pairwise-covering set of valid cases within the cost bound: greedy set cover over every
/// valid point (the space is small), each step taking the point that covers the most uncovered
/// pairs, the cheapest among equals.
fn pairwise_cases() -> Vec<Case> {
    let mut all: Vec<Point> = Vec::new();
    let mut p = [0usize; 7];
    'outer: loop {
        let c = Case::of(p);
        if c.valid() && c.macs() <= MAX_MACS {
            all.push(p);
        }
        for k in 0..7 {
            p[k] += 1;
            if p[k] < SIZES[k] {
                continue 'outer;
            }
            p[k] = 0;
        }
        break;
    }
    let mut uncovered: std::collections::HashSet<(usize, usize, usize, usize)> =
        all_pairs().into_iter().collect();
    let mut chosen: Vec<Point> = Vec::new();
    while !uncovered.is_empty() {
        let best = all
            .iter()
            .map(|p| {
                let new = pairs(p).iter().filter(|q| uncovered.contains(q)).count();
                (new, std::cmp::Reverse(Case::of(*p).macs()), *p)
            })
            .max();
        let Some((new, _, p)) = best else { break };
        if new == 0 {
            break;
        }
        for q in pairs(&p) {
            uncovered.remove(&q);
        }
        chosen.push(p);
    }
    // Every pair of values across the dimensions is covered (none is impossible under the
    // constraints: causal needs Sq ≤ Skv, and each case stays within ~2²⁸ multiply-adds).
    for (a, x, b, y) in all_pairs() {
        assert!(
            chosen.iter().any(|p| p[a] == x && p[b] == y),
            "pair (dimension {a} = its value #{x}, dimension {b} = its value #{y}) not covered"
        );
    }
    let cases: Vec<Case> = chosen.into_iter().map(Case::of).collect();
    for c in &cases {
        assert!(c.valid() && c.macs() <= MAX_MACS, "{c:?}");
    }
    cases
}

/// The attention graph of a case, and its attention node.
fn graph(c: &Case) -> (Graph, NodeId) {
    let (b, hq) = (c.batch(), c.ratio * c.hkv);
    let mut g = Graph::new();
    let q = g.input("q", [b, hq, c.sq, c.d], c.dtype);
    let k = g.input("k", [b, c.hkv, c.skv, c.d], c.dtype);
    let v = g.input("v", [b, c.hkv, c.skv, c.d], c.dtype);
    let len = c.padding.then(|| g.input("len", [b], DType::U32));
    let off = c.causal.then(|| Offset::Fixed(c.offset()));
    let scale = 1.0 / (c.d as f64).sqrt();
    let a = g
        .attention(q, k, v, len, scale, c.causal, off)
        .expect("attention builds");
    g.output("out", a).expect("output");
    (g, a)
}

fn abs(t: &Tensor) -> Tensor {
    let v: Vec<f32> = t.to_f32_vec().iter().map(|x| x.abs()).collect();
    Tensor::from_f32(t.shape(), v, t.dtype()).expect("same shape")
}

/// What a device's result must satisfy (module docs): per element, and NMSE.
struct Bound {
    dtype: DType,
    d: usize,
    /// Bound on scale·Σ_d|q_d||k_d|.
    sigma: f64,
    /// The reference output and Σ_j p_j|v_j| (the reference on |v|).
    want: Vec<f64>,
    mag: Vec<f64>,
}

impl Bound {
    /// `keys(r)`: visible keys of output row r (rows of `d`).
    fn check(&self, what: &str, got: &[f64], keys: impl Fn(usize) -> usize) {
        let u = DType::F32.epsilon();
        let uo = self.dtype.epsilon();
        assert_eq!(got.len(), self.want.len(), "{what}: length");
        let (mut err2, mut ref2) = (0.0, 0.0);
        for (i, (&x, (&w, &m))) in got.iter().zip(self.want.iter().zip(&self.mag)).enumerate() {
            let n = keys(i / self.d.max(1)) as f64;
            let f32_part = 2.0 * u * ((self.d as f64 + 2.0) * self.sigma + n + 16.0);
            let tol = f32_part * (m + w.abs()) + 2.02 * uo * w.abs() + 1e-30;
            let e = (x - w).abs();
            assert!(
                e <= tol,
                "{what}: index {i} (row {}, {n} keys): got {x}, expected {w}, tolerance {tol}",
                i / self.d.max(1)
            );
            err2 += e * e;
            ref2 += w * w;
        }
        let nmse_max = 4.0 * (uo + 64.0 * u).powi(2);
        if ref2 > 0.0 {
            assert!(
                err2 / ref2 <= nmse_max,
                "{what}: NMSE {} > {nmse_max}",
                err2 / ref2
            );
        }
    }
}

/// Every device runs attention (D ≤ 256 here): a refusal fails the test, never skips it.
fn runs_attention(device: &Device, g: &Graph, node: NodeId, what: &str) -> bool {
    match device.backend().supports(g, node) {
        Ok(()) => true,
        Err(why) => panic!("{what}: {} refuses attention: {why}", device.info().name),
    }
}

#[test]
fn attention_pairwise_against_the_reference() {
    let cases = pairwise_cases();
    eprintln!(
        "{} pairwise cases, {} M multiply-adds in all",
        cases.len(),
        cases.iter().map(Case::macs).sum::<usize>() >> 20
    );
    let devices = devices_under_test();
    let mut rng = Rng::new(160);
    for c in &cases {
        check_case(c, &devices, &mut rng);
    }
}

/// Many heads, long queries and 16-bit K/V: enough groups of query blocks that the CPU runs
/// several blocks of a head together, sharing each widened K/V tile (the pairwise cases have 2
/// KV heads, too few for that on many threads).
#[test]
fn sixteen_bit_kv_tiles_shared_by_query_blocks() {
    let threads = polytensor::backend::cpu::default_threads();
    let devices = devices_under_test();
    let mut rng = Rng::new(165);
    for (dtype, causal, padding) in [(DType::BF16, true, false), (DType::F16, false, true)] {
        let c = Case {
            sq: 300,
            skv: 300,
            d: 64,
            ratio: 1,
            causal,
            padding,
            dtype,
            hkv: 4,
            // 5 blocks of a head run as 2 sets: 8 sets per batch row, ≥ 4 per thread.
            b: threads.div_ceil(2).max(2),
        };
        check_case(&c, &devices, &mut rng);
    }
}

/// One case on every device against the f64 reference (computed once).
fn check_case(c: &Case, devices: &[Device], rng: &mut Rng) {
    {
        let (b, hq) = (c.batch(), c.ratio * c.hkv);
        let q = random(rng, &[b, hq, c.sq, c.d], c.dtype, -QMAX, QMAX);
        let k = random(rng, &[b, c.hkv, c.skv, c.d], c.dtype, -KMAX, KMAX);
        let v = random(rng, &[b, c.hkv, c.skv, c.d], c.dtype, -1.0, 1.0);
        let len = Tensor::new(&[b], c.lengths()).expect("lengths");
        let (g, node) = graph(c);
        let mut inputs = vec![("q", &q), ("k", &k), ("v", &v)];
        if c.padding {
            inputs.push(("len", &len));
        }
        // The reference, once per case: the output and Σ p|v| (the same graph on |v|).
        let reference = Device::reference();
        let want = run_on(&reference, &g, &inputs, &[], &[]).expect("reference");
        let av = abs(&v);
        inputs[2] = ("v", &av);
        let mag = run_on(&reference, &g, &inputs, &[], &[]).expect("reference on |v|");
        inputs[2] = ("v", &v);
        let bound = Bound {
            dtype: c.dtype,
            d: c.d,
            sigma: (QMAX * KMAX) as f64 * c.d as f64 / (c.d as f64).sqrt(),
            want: want[0].to_f64_vec(),
            mag: mag[0].to_f64_vec(),
        };
        let keys = |r: usize| c.visible(r / (hq * c.sq), r % c.sq);
        for device in devices {
            let what = format!("attention {c:?} on {}", device.info().name);
            if !runs_attention(device, &g, node, &what) {
                continue;
            }
            let got =
                run_on(device, &g, &inputs, &[], &[]).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(got[0].shape(), want[0].shape(), "{what}: shape");
            assert_eq!(got[0].dtype(), c.dtype, "{what}: dtype");
            bound.check(&what, &got[0].to_f64_vec(), keys);
        }
    }
}

#[test]
fn fully_masked_rows_give_zeros() {
    // Batch row 0 has no valid key (padding length 0); batch row 1 has 3 of 5, causal on a
    // query offset, GQA 2:1.
    let mut rng = Rng::new(161);
    for dtype in DTYPES {
        let mut g = Graph::new();
        let q = g.input("q", [2, 4, 3, 8], dtype);
        let k = g.input("k", [2, 2, 5, 8], dtype);
        let v = g.input("v", [2, 2, 5, 8], dtype);
        let l = g.input("len", [2], DType::U32);
        let mut node = q;
        for causal in [false, true] {
            let off = causal.then_some(Offset::Fixed(2));
            let a = g
                .attention(q, k, v, Some(l), 0.5, causal, off)
                .expect("attention");
            node = a;
            g.output(&format!("out{}", u8::from(causal)), a)
                .expect("output");
        }
        let qt = random(&mut rng, &[2, 4, 3, 8], dtype, -1.0, 1.0);
        let kt = random(&mut rng, &[2, 2, 5, 8], dtype, -1.0, 1.0);
        let vt = random(&mut rng, &[2, 2, 5, 8], dtype, -1.0, 1.0);
        let lt = Tensor::new(&[2], vec![0u32, 3]).expect("len");
        let inputs = [("q", &qt), ("k", &kt), ("v", &vt), ("len", &lt)];
        let mut devices = devices_under_test();
        devices.push(Device::reference());
        for device in devices {
            let what = format!("masked rows {dtype} on {}", device.info().name);
            if !runs_attention(&device, &g, node, &what) {
                continue;
            }
            let outs = run_on(&device, &g, &inputs, &[], &[]).expect("run");
            for out in outs {
                let x = out.to_f32_vec();
                let (masked, rest) = x.split_at(x.len() / 2);
                assert!(
                    masked.iter().all(|v| v.to_bits() == 0),
                    "{what}: a fully masked row is +0, not {masked:?}"
                );
                assert!(
                    rest.iter().all(|v| v.is_finite()) && rest.iter().any(|v| *v != 0.0),
                    "{what}: {rest:?}"
                );
            }
        }
    }
}

#[test]
fn an_offset_past_the_keys_is_an_error_naming_the_numbers() {
    let mut g = Graph::new();
    let q = g.input("q", [1, 2, 4, 8], DType::F32);
    let k = g.input("k", [1, 2, 8, 8], DType::F32);
    let v = g.input("v", [1, 2, 8, 8], DType::F32);
    let a = g
        .attention(q, k, v, None, 0.5, true, Some(Offset::Sym("pos".into())))
        .expect("attention");
    g.output("out", a).expect("output");
    let mut rng = Rng::new(162);
    let qt = random(&mut rng, &[1, 2, 4, 8], DType::F32, -1.0, 1.0);
    let kt = random(&mut rng, &[1, 2, 8, 8], DType::F32, -1.0, 1.0);
    let inputs = [("q", &qt), ("k", &kt), ("v", &kt)];
    let mut devices = devices_under_test();
    devices.push(Device::reference());
    for device in devices {
        let what = format!("offset error on {}", device.info().name);
        if !runs_attention(&device, &g, a, &what) {
            continue;
        }
        // 4 + 4 = 8 keys: fine.
        run_on(&device, &g, &inputs, &[], &[("pos", 4)]).expect("offset 4 reads 8 keys");
        let err = run_on(&device, &g, &inputs, &[], &[("pos", 5)]).expect_err("offset 5");
        let msg = err.to_string();
        for part in ["5", "4 queries", "9 keys", "8 rows"] {
            assert!(msg.contains(part), "{what}: `{msg}` does not name {part}");
        }
    }
}

#[test]
fn bad_attention_shapes_are_errors_at_build() {
    type Shapes = ([usize; 4], [usize; 4], [usize; 4]);
    let bad: [(&str, Shapes); 4] = [
        (
            "query heads not a multiple",
            ([1, 3, 4, 8], [1, 2, 4, 8], [1, 2, 4, 8]),
        ),
        (
            "head dims differ",
            ([1, 2, 4, 8], [1, 2, 4, 16], [1, 2, 4, 16]),
        ),
        ("batches differ", ([2, 2, 4, 8], [1, 2, 4, 8], [1, 2, 4, 8])),
        (
            "v is not k's shape",
            ([1, 2, 4, 8], [1, 2, 4, 8], [1, 2, 5, 8]),
        ),
    ];
    for (what, (qs, ks, vs)) in bad {
        let mut g = Graph::new();
        let q = g.input("q", qs, DType::F32);
        let k = g.input("k", ks, DType::F32);
        let v = g.input("v", vs, DType::F32);
        let r = g.attention(q, k, v, None, 1.0, false, None);
        assert!(
            matches!(r, Err(Error::ShapeMismatch { .. })),
            "{what}: {r:?}"
        );
    }
    let mut g = Graph::new();
    let q3 = g.input("q3", [2, 4, 8], DType::F32);
    let q = g.input("q", [2, 2, 4, 8], DType::F32);
    let k = g.input("k", [2, 2, 4, 8], DType::F32);
    let k16 = g.input("k16", [2, 2, 4, 8], DType::F16);
    let qi = g.input("qi", [2, 2, 4, 8], DType::U32);
    let lf = g.input("lf", [2], DType::F32);
    let l3 = g.input("l3", [3], DType::U32);
    assert!(
        g.attention(q3, k, k, None, 1.0, false, None).is_err(),
        "rank 3 q"
    );
    assert!(
        matches!(
            g.attention(q, k16, k16, None, 1.0, false, None),
            Err(Error::DTypeMismatch { .. })
        ),
        "f16 k under f32 q"
    );
    assert!(
        g.attention(qi, qi, qi, None, 1.0, false, None).is_err(),
        "u32 operands"
    );
    assert!(
        g.attention(q, k, k, Some(lf), 1.0, false, None).is_err(),
        "f32 lengths"
    );
    assert!(
        g.attention(q, k, k, Some(l3), 1.0, false, None).is_err(),
        "lengths [3] for B = 2"
    );
    // And a well-formed one builds.
    assert!(g.attention(q, k, k, None, 1.0, true, None).is_ok());
}

#[test]
fn vectorised_exp2_is_accurate() {
    // Against f64 over the whole normal range, fractions included: within 4 f32 ulps
    // (relative 2⁻²¹); below 2⁻¹²⁶ (masked scores) exactly 0.
    let mut rng = Rng::new(163);
    let mut x: Vec<f32> = (0..200_000).map(|_| rng.uniform(-126.0, 127.0)).collect();
    x.extend((-126..=127).map(|i| i as f32));
    x.extend([-0.5, 0.5, -1e-8, 1e-8, 0.0, -0.49999997, 0.49999997]);
    let mut y = x.clone();
    polytensor::backend::cpu::exp2_slice(&mut y);
    let mut worst = 0f64;
    for (&a, &e) in x.iter().zip(&y) {
        let want = (a as f64).exp2();
        let rel = (e as f64 - want).abs() / want;
        worst = worst.max(rel);
        assert!(
            rel <= 2f64.powi(-21),
            "2^{a}: got {e}, expected {want}, rel {rel}"
        );
    }
    eprintln!(
        "exp2: worst relative error {worst:.3e} ({:.2} ulp)",
        worst / 2f64.powi(-23)
    );
    let mut masked = vec![-126.5f32, -1e30, -200.0, f32::MIN];
    polytensor::backend::cpu::exp2_slice(&mut masked);
    assert!(masked.iter().all(|v| v.to_bits() == 0), "{masked:?}");
}

/// Rows `s0..s1` of axis 2 of a [B, H, S, D] array.
fn rows(x: &[f32], shape: [usize; 4], s0: usize, s1: usize) -> Vec<f32> {
    let [b, h, s, d] = shape;
    let mut out = Vec::with_capacity(b * h * (s1 - s0) * d);
    for bh in 0..b * h {
        out.extend_from_slice(&x[(bh * s + s0) * d..(bh * s + s1) * d]);
    }
    out
}

/// The prefill or decode program over K/V states [B, Hkv, max_len, D]: write `len` new rows at
/// `pos`, then causal attention over the states with the query offset `pos`.
fn kv_graph(len: usize, shape: [usize; 4], hq: usize, dtype: DType) -> (Graph, NodeId) {
    let [b, hkv, max_len, d] = shape;
    let mut g = Graph::new();
    g.state("k", [b, hkv, max_len, d], dtype);
    g.state("v", [b, hkv, max_len, d], dtype);
    let q = g.input("q", [b, hq, len, d], dtype);
    let kn = g.input("k_new", [b, hkv, len, d], dtype);
    let vn = g.input("v_new", [b, hkv, len, d], dtype);
    let pos = || Offset::Sym("pos".into());
    let kw = g.write_state("k", kn, 2, pos()).expect("write k");
    let vw = g.write_state("v", vn, 2, pos()).expect("write v");
    let scale = 1.0 / (d as f64).sqrt();
    let a = g
        .attention(q, kw, vw, None, scale, true, Some(pos()))
        .expect("attention");
    g.output("out", a).expect("output");
    (g, a)
}

#[test]
fn kv_cache_prefill_then_decode_equals_one_full_run() {
    let (b, hkv, ratio, d, n, m) = (2usize, 2usize, 3usize, 44usize, 7usize, 5usize);
    let hq = hkv * ratio;
    let total = n + m;
    let mut rng = Rng::new(164);
    for dtype in [DType::F32, DType::BF16] {
        let q = random(&mut rng, &[b, hq, total, d], dtype, -QMAX, QMAX);
        let k = random(&mut rng, &[b, hkv, total, d], dtype, -KMAX, KMAX);
        let v = random(&mut rng, &[b, hkv, total, d], dtype, -1.0, 1.0);
        // One full causal run over n + m, on the reference.
        let mut full = Graph::new();
        let (fq, fk, fv) = (
            full.input("q", [b, hq, total, d], dtype),
            full.input("k", [b, hkv, total, d], dtype),
            full.input("v", [b, hkv, total, d], dtype),
        );
        let scale = 1.0 / (d as f64).sqrt();
        let fa = full
            .attention(fq, fk, fv, None, scale, true, None)
            .expect("full");
        full.output("out", fa).expect("output");
        let reference = Device::reference();
        let want = run_on(
            &reference,
            &full,
            &[("q", &q), ("k", &k), ("v", &v)],
            &[],
            &[],
        )
        .expect("full reference");
        let av = abs(&v);
        let mag = run_on(
            &reference,
            &full,
            &[("q", &q), ("k", &k), ("v", &av)],
            &[],
            &[],
        )
        .expect("full reference on |v|");
        let (qv, kv, vv) = (q.to_f32_vec(), k.to_f32_vec(), v.to_f32_vec());
        let (wv, mv) = (want[0].to_f32_vec(), mag[0].to_f32_vec());
        let slice = |x: &[f32], h: usize, s0: usize, s1: usize| {
            Tensor::from_f32(
                &[b, h, s1 - s0, d],
                rows(x, [b, h, total, d], s0, s1),
                dtype,
            )
            .expect("slice")
        };
        let mut written = Vec::new();
        for max_len in [16usize, 512] {
            let shape = [b, hkv, max_len, d];
            for device in devices_under_test() {
                let name = device.info().name.clone();
                let what = format!("kv cache {dtype} max_len {max_len} on {name}");
                let (prefill_g, node) = kv_graph(n, shape, hq, dtype);
                let (decode_g, _) = kv_graph(1, shape, hq, dtype);
                if !runs_attention(&device, &prefill_g, node, &what) {
                    continue;
                }
                let mut s = Session::new(&device);
                s.set_fallback(polytensor::FallbackPolicy::Deny);
                s.create_state("k", &shape, dtype).expect("k state");
                s.create_state("v", &shape, dtype).expect("v state");
                let prefill = s.compile(&prefill_g).expect("compile prefill");
                let decode = s.compile(&decode_g).expect("compile decode");
                let mut steps = vec![(0, n, &prefill)];
                steps.extend((n..total).map(|p| (p, p + 1, &decode)));
                for (k_step, &(s0, s1, prog)) in steps.iter().enumerate() {
                    let (qs, ks, vs) = (
                        slice(&qv, hq, s0, s1),
                        slice(&kv, hkv, s0, s1),
                        slice(&vv, hkv, s0, s1),
                    );
                    let out = s
                        .run(
                            prog,
                            &[("q", qs.view()), ("k_new", ks.view()), ("v_new", vs.view())],
                            &[("pos", s0)],
                        )
                        .unwrap_or_else(|e| panic!("{what}: step {k_step}: {e}"));
                    let got = out.get("out").expect("out");
                    assert_eq!(got.shape(), &[b, hq, s1 - s0, d], "{what}");
                    let cut = |x: &[f32]| -> Vec<f64> {
                        rows(x, [b, hq, total, d], s0, s1)
                            .iter()
                            .map(|&v| v as f64)
                            .collect()
                    };
                    let bound = Bound {
                        dtype,
                        d,
                        sigma: (QMAX * KMAX) as f64 * d as f64 * scale,
                        want: cut(&wv),
                        mag: cut(&mv),
                    };
                    let keys = |r: usize| s0 + r % (s1 - s0) + 1;
                    bound.check(&format!("{what}: step {k_step}"), &got.to_f64_vec(), keys);
                    if k_step > 0 {
                        let st = s.last_run_stats();
                        assert_eq!(st.pipelines_built, 0, "{what}: step {k_step}: {st:?}");
                        assert_eq!(st.bytes_copied, 0, "{what}: step {k_step}: {st:?}");
                        assert_eq!(
                            st.state_elements_written as usize,
                            2 * b * hkv * d,
                            "{what}: step {k_step}: one row of K and V per head, {st:?}"
                        );
                        written.push(st.state_elements_written);
                    }
                }
            }
        }
        // The same count at both cache sizes (O(written), never O(cache)).
        assert!(written.windows(2).all(|w| w[0] == w[1]), "{written:?}");
    }
}

#[test]
fn kv_graph_with_a_symbolic_query_length_builds() {
    // A prefill of a run-time length (Dim::Sym) over the states also builds: the attention
    // output follows q's symbolic length.
    let mut g = Graph::new();
    g.state("k", [1, 2, 64, 8], DType::F32);
    let q = g.input(
        "q",
        [
            Dim::Fixed(1),
            Dim::Fixed(4),
            Dim::sym("len", 64),
            Dim::Fixed(8),
        ],
        DType::F32,
    );
    let kn = g.input(
        "k_new",
        [
            Dim::Fixed(1),
            Dim::Fixed(2),
            Dim::sym("len", 64),
            Dim::Fixed(8),
        ],
        DType::F32,
    );
    let kw = g
        .write_state("k", kn, 2, Offset::Sym("pos".into()))
        .expect("write");
    let a = g
        .attention(q, kw, kw, None, 0.5, true, Some(Offset::Sym("pos".into())))
        .expect("attention over the state");
    assert_eq!(g.node(a).expect("node").shape, g.node(q).expect("q").shape);
}
