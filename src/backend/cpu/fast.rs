//! The fast CPU path: every op computes in f32 (16-bit operands widened with F16C block
//! conversions), multi-threaded with rayon, and narrows the result to the node's storage dtype with
//! round to nearest even.

use std::borrow::Cow;

use rayon::prelude::*;

use super::attention::Kv;
use super::{matmul, split_axis};
use crate::dtype::{DType, Rounding};
use crate::error::{Error, Result};
use crate::ir::{MoveOp, Node, Op, ReduceOp, RowOp};
use crate::shape::{Bindings, broadcast_strides};
use crate::tensor::{Storage, StorageRef, constant_storage};

/// Elements per rayon task for elementwise work.
const CHUNK: usize = 1 << 14;

/// Recycled f32 buffers for widened matmul operands: reusing their memory avoids an allocation
/// and its page faults per run. At most 4 kept, each at most 64 Mi elements.
static SCRATCH: std::sync::Mutex<Vec<Vec<f32>>> = std::sync::Mutex::new(Vec::new());

fn scratch_take() -> Vec<f32> {
    SCRATCH
        .lock()
        .map(|mut s| s.pop())
        .ok()
        .flatten()
        .unwrap_or_default()
}

fn scratch_give(v: Vec<f32>) {
    if v.capacity() <= 1 << 26
        && let Ok(mut s) = SCRATCH.lock()
        && s.len() < 4
    {
        s.push(v);
    }
}

/// `s` as f32: borrowed when it is f32, else widened into `buf`.
fn widen<'a>(s: StorageRef<'a>, buf: &'a mut Vec<f32>) -> &'a [f32] {
    match s {
        StorageRef::F32(v) => v,
        StorageRef::F16(v) => {
            crate::dtype::widen_f16_into(v, buf);
            buf
        }
        StorageRef::BF16(v) => {
            crate::dtype::widen_bf16_into(v, buf);
            buf
        }
        other => {
            *buf = other.to_f32_vec();
            buf
        }
    }
}

/// An attention operand as stored (f32 borrowed; 16-bit widened per block or tile by the kernel).
fn kv_operand(s: StorageRef<'_>) -> Result<Kv<'_>> {
    match s {
        StorageRef::F32(x) => Ok(Kv::F32(x)),
        StorageRef::F16(x) => Ok(Kv::F16(x)),
        StorageRef::BF16(x) => Ok(Kv::BF16(x)),
        other => Err(Error::InvalidGraph(format!(
            "attention: {} operands",
            other.dtype()
        ))),
    }
}

/// An operand widened to f32, borrowed when it already is f32.
pub(crate) fn as_f32(s: StorageRef<'_>) -> Cow<'_, [f32]> {
    match s {
        StorageRef::F32(v) => Cow::Borrowed(v),
        other => Cow::Owned(other.to_f32_vec()),
    }
}

/// Evaluates one non-source node on operands `ins` (data, concrete shape) into `out_shape`.
pub(crate) fn eval(
    node: &Node,
    ins: &[(StorageRef<'_>, &[usize])],
    out_shape: &[usize],
    threads: usize,
    seed: u64,
    counter: u64,
    bindings: &Bindings,
) -> Result<Storage> {
    // A safety net under the session's checks: data shorter than its shape is an error here,
    // never an out-of-bounds read in a kernel.
    for (data, shape) in ins {
        let want = shape.iter().fold(1usize, |a, &d| a.saturating_mul(d));
        if data.len() != want {
            return Err(Error::InvalidGraph(format!(
                "{}: operand of {} elements for shape {shape:?}",
                node.op.name(),
                data.len()
            )));
        }
    }
    let out = match &node.op {
        Op::Attention { padding, lse, .. } => {
            let g = super::attention::Geometry::new(&node.op, ins[0].1, ins[1].1, bindings)?;
            let lengths = match (padding, ins.get(3).map(|x| x.0)) {
                (true, Some(StorageRef::U32(l))) => Some(l),
                (true, _) => {
                    return Err(Error::InvalidGraph(
                        "attention: key lengths must be u32".to_string(),
                    ));
                }
                (false, _) => None,
            };
            // Q, K and V stay as stored: the kernel widens Q one block and K and V one tile at a
            // time.
            let q = kv_operand(ins[0].0)?;
            let (k, v) = (kv_operand(ins[1].0)?, kv_operand(ins[2].0)?);
            if *lse {
                // f32 [B, Hq, Sq]: the user's output.
                super::attention::lse_fast(&g, q, k, lengths)
            } else if node.dtype == DType::F32 {
                // An f32 result is the user's output; a 16-bit one is narrowed from a scratch
                // buffer.
                let mut y = Vec::new();
                super::attention::fast(&g, q, k, v, lengths, &mut y);
                y
            } else {
                let mut y = scratch_take();
                super::attention::fast(&g, q, k, v, lengths, &mut y);
                let stored = narrow(&y, node.dtype, node.rounding, seed, counter);
                scratch_give(y);
                return Ok(stored);
            }
        }
        Op::Rope {
            theta,
            rotary_dim,
            interleaved,
            offset,
        } => {
            let first = crate::ir::rope_first_position(offset, ins[0].1[2], bindings)?;
            rope(
                &as_f32(ins[0].0),
                ins[0].1,
                (*theta, *rotary_dim, *interleaved),
                first,
            )
        }
        Op::Unary(u) => {
            let x = as_f32(ins[0].0);
            let mut y = vec![0f32; x.len()];
            y.par_chunks_mut(CHUNK)
                .zip(x.par_chunks(CHUNK))
                .for_each(|(y, x)| {
                    for (o, &v) in y.iter_mut().zip(x) {
                        *o = u.eval_f32(v);
                    }
                });
            y
        }
        Op::Binary(b) => {
            let (a, sa) = (as_f32(ins[0].0), ins[0].1);
            let (c, sc) = (as_f32(ins[1].0), ins[1].1);
            binary(*b, &a, sa, &c, sc, out_shape)
        }
        Op::MatMul {
            transpose_a,
            transpose_b,
        } => {
            // Decode (≤ 4 rows) against a 16-bit [N, K] weight: read the weight as stored.
            let (sa_, sb_) = (ins[0].1, ins[1].1);
            let k = sb_.get(1).copied().unwrap_or(0);
            let rows = sa_.iter().product::<usize>().checked_div(k).unwrap_or(0);
            if !*transpose_a
                && *transpose_b
                && sb_.len() == 2
                && sa_.last() == Some(&k)
                && (1..=4).contains(&rows)
                && let Some(y) = {
                    let mut sa = scratch_take();
                    let a = widen(ins[0].0, &mut sa);
                    let y = matmul::matvec_t16(a, rows, k, ins[1].0, sb_[0]);
                    scratch_give(sa);
                    y
                }
            {
                if node.dtype.size_of() == 2 {
                    return Ok(narrow(&y, node.dtype, node.rounding, seed, counter));
                }
                return Ok(Storage::F32(y));
            }
            // 16-bit operands are widened into recycled scratch buffers (F16C block
            // conversion), then the f32 kernel runs: faster here than a native f16 GEMM.
            let mut sa = scratch_take();
            let mut sb = scratch_take();
            let a = widen(ins[0].0, &mut sa);
            let b = widen(ins[1].0, &mut sb);
            // An f32 result is the user's output; a 16-bit one is narrowed from a scratch buffer.
            let mut y = if node.dtype == DType::F32 {
                Vec::new()
            } else {
                scratch_take()
            };
            let (ta, tb) = (*transpose_a, *transpose_b);
            matmul::matmul(&mut y, a, ins[0].1, b, ins[1].1, ta, tb, out_shape, threads);
            scratch_give(sa);
            scratch_give(sb);
            if node.dtype.size_of() == 2 {
                let stored = narrow(&y, node.dtype, node.rounding, seed, counter);
                scratch_give(y);
                return Ok(stored);
            }
            y
        }
        Op::Reduce { op, axis } => reduce(*op, &as_f32(ins[0].0), ins[0].1, *axis),
        Op::ArgMax => {
            let len = ins[0].1.last().copied().unwrap_or(1);
            let rows: usize = out_shape.iter().product();
            return Ok(Storage::U32(argmax(&as_f32(ins[0].0), len, rows)));
        }
        Op::Softmax | Op::RmsNorm { .. } | Op::LayerNorm { .. } => {
            let len = ins[0].1.last().copied().unwrap_or(1);
            let params: Vec<Cow<'_, [f32]>> = ins[1..].iter().map(|p| as_f32(p.0)).collect();
            rows(&node.op, &as_f32(ins[0].0), len, &params)
        }
        Op::Cast { to, rounding } => {
            let from = ins[0].0.dtype();
            if to.size_of() == 2 && from != *to {
                // Narrowing float casts straight from the (borrowed) f32 data.
                let x = as_f32(ins[0].0);
                return Ok(narrow(&x, *to, *rounding, seed, counter));
            }
            return Ok(cast(ins[0].0, *to));
        }
        Op::Reshape { .. }
        | Op::Permute { .. }
        | Op::Slice { .. }
        | Op::Concat { .. }
        | Op::Gather => return movement(node, ins, out_shape),
        Op::Input { .. } | Op::Weight { .. } | Op::State { .. } | Op::WriteState { .. } => {
            return Err(Error::InvalidGraph(format!(
                "{} is not evaluated by a kernel",
                node.op.name()
            )));
        }
        // The one constant rule every backend shares: exact for integers, never through f32.
        Op::Constant { values } => {
            let n: usize = out_shape.iter().product();
            return constant_storage(values, node.dtype, n);
        }
    };
    Ok(Storage::from_f32_rounded(
        node.dtype,
        out,
        node.rounding,
        seed,
        counter,
    ))
}

/// f32 → f16/bf16 with `rounding` (stochastic draws by logical flat index).
fn narrow(x: &[f32], to: DType, rounding: Rounding, seed: u64, counter: u64) -> Storage {
    use crate::dtype::{narrow_bf16, narrow_bf16_sr, narrow_f16, narrow_f16_sr};
    match (to, rounding) {
        (DType::F16, Rounding::Stochastic { stream }) => {
            Storage::F16(narrow_f16_sr(x, crate::rng::sr_keys(seed, stream, counter)))
        }
        (DType::BF16, Rounding::Stochastic { stream }) => Storage::BF16(narrow_bf16_sr(
            x,
            crate::rng::sr_keys(seed, stream, counter),
        )),
        (DType::F16, Rounding::NearestEven) => Storage::F16(narrow_f16(x)),
        _ => Storage::BF16(narrow_bf16(x)),
    }
}

/// Casts between any two dtypes. Floats convert through f32 (exact widening, one rounding to
/// nearest even); integers convert directly; float → integer follows Rust `as` (toward zero,
/// saturating, NaN → 0).
pub(crate) fn cast(x: StorageRef<'_>, to: DType) -> Storage {
    match (x, to) {
        (StorageRef::I32(v), DType::U32) => Storage::U32(v.iter().map(|&x| x as u32).collect()),
        (StorageRef::U32(v), DType::I32) => Storage::I32(v.iter().map(|&x| x as i32).collect()),
        (s, t) if s.dtype() == t => s.to_owned(),
        (s, t) => Storage::from_f32(t, s.to_f32_vec()),
    }
}

/// Elementwise `a op b` with numpy broadcasting into `out_shape`.
fn binary(
    op: crate::ir::BinaryOp,
    a: &[f32],
    sa: &[usize],
    b: &[f32],
    sb: &[usize],
    out_shape: &[usize],
) -> Vec<f32> {
    let n: usize = out_shape.iter().product();
    let mut out = vec![0f32; n];
    if n == 0 {
        return out;
    }
    if a.len() == n && b.len() == n {
        out.par_chunks_mut(CHUNK)
            .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
            .for_each(|(o, (a, b))| {
                for ((o, &x), &y) in o.iter_mut().zip(a).zip(b) {
                    *o = op.eval_f32(x, y);
                }
            });
        return out;
    }
    // Broadcast: walk rows of the innermost dimension; each row has one base offset per operand.
    let rank = out_shape.len();
    let inner = out_shape[rank - 1];
    let (ta, tb) = (
        broadcast_strides(sa, out_shape),
        broadcast_strides(sb, out_shape),
    );
    let (ia, ib) = (ta[rank - 1], tb[rank - 1]);
    let rows_per_task = (CHUNK / inner.max(1)).max(1);
    out.par_chunks_mut(inner * rows_per_task)
        .enumerate()
        .for_each(|(task, o)| {
            for (r, row) in o.chunks_mut(inner).enumerate() {
                let mut rem = task * rows_per_task + r;
                let (mut oa, mut ob) = (0, 0);
                for d in (0..rank - 1).rev() {
                    let i = rem % out_shape[d];
                    rem /= out_shape[d];
                    oa += i * ta[d];
                    ob += i * tb[d];
                }
                for (j, o) in row.iter_mut().enumerate() {
                    *o = op.eval_f32(a[oa + j * ia], b[ob + j * ib]);
                }
            }
        });
    out
}

/// Reduction over `axis` with f32 accumulation.
fn reduce(op: ReduceOp, x: &[f32], shape: &[usize], axis: usize) -> Vec<f32> {
    let (outer, len, inner) = split_axis(shape, axis);
    let mut out = vec![0f32; outer * inner];
    if out.is_empty() {
        return out;
    }
    out.par_chunks_mut(inner.max(1))
        .enumerate()
        .for_each(|(o, row)| {
            let base = o * len * inner;
            for (i, r) in row.iter_mut().enumerate() {
                let mut acc = match op {
                    ReduceOp::Max => f32::NEG_INFINITY,
                    ReduceOp::Sum | ReduceOp::Mean => 0.0,
                };
                for k in 0..len {
                    let v = x[base + k * inner + i];
                    acc = match op {
                        ReduceOp::Max => acc.max(v),
                        ReduceOp::Sum | ReduceOp::Mean => acc + v,
                    };
                }
                *r = match op {
                    ReduceOp::Mean => acc / len as f32,
                    ReduceOp::Sum | ReduceOp::Max => acc,
                };
            }
        });
    out
}

/// The u32 whose order is argmax's order on f32 bits: NaN (either sign) above everything, −0
/// equal to +0, then the usual sign-magnitude flip. Integer compares only, as in rows.wgsl.
#[inline]
fn argmax_key(v: f32) -> u32 {
    let b = v.to_bits();
    if b & 0x7fff_ffff > 0x7f80_0000 {
        return u32::MAX;
    }
    let b = if b == 0x8000_0000 { 0 } else { b };
    if b & 0x8000_0000 != 0 {
        !b
    } else {
        b | 0x8000_0000
    }
}

/// The index of the largest element of each row of `len` (ties: the lowest index; an empty row
/// gives 0).
fn argmax(x: &[f32], len: usize, rows: usize) -> Vec<u32> {
    let mut out = vec![0u32; rows];
    if len == 0 {
        return out;
    }
    out.par_iter_mut()
        .zip(x.par_chunks(len))
        .for_each(|(o, row)| {
            let (mut best, mut key) = (0, argmax_key(row[0]));
            for (k, &v) in row.iter().enumerate().skip(1) {
                let kv = argmax_key(v);
                if kv > key {
                    (best, key) = (k, kv);
                }
            }
            *o = best as u32;
        });
    out
}

/// Softmax or a norm of each row of `len`, in f32 (`params`: the norm's weight, then bias).
fn rows(op: &Op, x: &[f32], len: usize, params: &[Cow<'_, [f32]>]) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    if len == 0 {
        return out;
    }
    let rows_per_task = (CHUNK / len).max(1);
    out.par_chunks_mut(len * rows_per_task)
        .zip(x.par_chunks(len * rows_per_task))
        .for_each(|(o, x)| {
            for (y, row) in o.chunks_mut(len).zip(x.chunks(len)) {
                row_f32(op, row, params, y);
            }
        });
    out
}

/// One row of softmax or a norm into `y`.
fn row_f32(op: &Op, row: &[f32], params: &[Cow<'_, [f32]>], y: &mut [f32]) {
    let n = row.len() as f32;
    match op.row_op() {
        Some(RowOp::Softmax) => {
            // Clamped to the finite range, so a row of −Inf is uniform, not NaN (`Op::Softmax`).
            let m = row
                .iter()
                .fold(-f32::MAX, |m, &v| m.max(v.clamp(-f32::MAX, f32::MAX)));
            let mut s = 0f32;
            for (o, &v) in y.iter_mut().zip(row) {
                *o = (v.clamp(-f32::MAX, f32::MAX) - m).exp();
                s += *o;
            }
            for o in y.iter_mut() {
                *o /= s;
            }
        }
        Some(RowOp::RmsNorm { eps }) => {
            let ms = row.iter().map(|v| v * v).sum::<f32>() / n;
            let r = 1.0 / (ms + eps as f32).sqrt();
            for ((o, &v), &w) in y.iter_mut().zip(row).zip(params[0].iter()) {
                *o = v * r * w;
            }
        }
        Some(RowOp::LayerNorm { eps, weight, bias }) => {
            // Shifted by the row's first element: a constant row gives exactly zero deviations
            // (the mean of a huge constant row is not exact in f32, its shifted mean is).
            let k = row[0];
            let mu = row.iter().map(|&v| v - k).sum::<f32>() / n;
            let var = row
                .iter()
                .map(|&v| (v - k - mu) * (v - k - mu))
                .sum::<f32>()
                / n;
            let r = 1.0 / (var + eps as f32).sqrt();
            for (j, (o, &v)) in y.iter_mut().zip(row).enumerate() {
                let w = if weight { params[0][j] } else { 1.0 };
                let b = if bias {
                    params[usize::from(weight)][j]
                } else {
                    0.0
                };
                *o = (v - k - mu) * r * w + b;
            }
        }
        // Argmax has its own loop (`argmax`); nothing else reaches here.
        Some(RowOp::ArgMax) | None => {}
    }
}

/// Rope of x `[B, H, S, D]` in f32 with cos and sin from f64 angles (so every position is as
/// accurate as position 0), one table of S × rotary_dim/2 pairs shared by every head.
fn rope(
    x: &[f32],
    shape: &[usize],
    (theta, rotary_dim, interleaved): (f64, usize, bool),
    first: usize,
) -> Vec<f32> {
    let (seq, d) = (shape[2], shape[3]);
    let mut out = vec![0f32; x.len()];
    if out.is_empty() || d == 0 {
        return out;
    }
    let half = rotary_dim / 2;
    let inv = crate::ir::rope_inv_freq(theta, rotary_dim);
    let mut table = vec![(0f32, 0f32); seq * half];
    table.par_chunks_mut(half).enumerate().for_each(|(s, t)| {
        let pos = (first + s) as f64;
        for (o, &f) in t.iter_mut().zip(&inv) {
            let (sin, cos) = (pos * f).sin_cos();
            *o = (cos as f32, sin as f32);
        }
    });
    let rows_per_task = (CHUNK / d).max(1);
    out.par_chunks_mut(d * rows_per_task)
        .zip(x.par_chunks(d * rows_per_task))
        .enumerate()
        .for_each(|(task, (o, x))| {
            for (r, (y, row)) in o.chunks_mut(d).zip(x.chunks(d)).enumerate() {
                let s = (task * rows_per_task + r) % seq;
                let t = &table[s * half..(s + 1) * half];
                for (i, &(c, sn)) in t.iter().enumerate() {
                    let (a, b) = if interleaved {
                        (2 * i, 2 * i + 1)
                    } else {
                        (i, i + half)
                    };
                    y[a] = row[a] * c - row[b] * sn;
                    y[b] = row[b] * c + row[a] * sn;
                }
                y[rotary_dim..].copy_from_slice(&row[rotary_dim..]);
            }
        });
    out
}

/// Row-major strides of `dims`.
fn strides(dims: &[usize]) -> Vec<usize> {
    let mut st = vec![1; dims.len()];
    for d in (0..dims.len().saturating_sub(1)).rev() {
        st[d] = st[d + 1] * dims[d + 1];
    }
    st
}

/// The data-movement ops as copies of contiguous runs of stored elements (bits, never values),
/// multi-threaded over runs. A reshape is a plain copy here; the run loop shares the operand's
/// storage instead where it can (`CpuProgram::run_fast`).
fn movement(node: &Node, ins: &[(StorageRef<'_>, &[usize])], out: &[usize]) -> Result<Storage> {
    let n: usize = out.iter().product();
    let data = if matches!(node.op, Op::Gather) {
        &ins[..1]
    } else {
        ins
    };
    macro_rules! typed {
        ($v:ident) => {{
            let mut srcs = Vec::with_capacity(data.len());
            for (s, _) in data {
                match s {
                    StorageRef::$v(x) => srcs.push(*x),
                    other => {
                        return Err(Error::DTypeMismatch {
                            op: node.op.name(),
                            lhs: node.dtype,
                            rhs: other.dtype(),
                        });
                    }
                }
            }
            Storage::$v(movement_typed(node, &srcs, ins, out, n)?)
        }};
    }
    Ok(match node.dtype {
        DType::F32 => typed!(F32),
        DType::F16 => typed!(F16),
        DType::BF16 => typed!(BF16),
        DType::U32 => typed!(U32),
        DType::I32 => typed!(I32),
    })
}

fn movement_typed<T: Copy + Default + Send + Sync>(
    node: &Node,
    srcs: &[&[T]],
    ins: &[(StorageRef<'_>, &[usize])],
    out: &[usize],
    n: usize,
) -> Result<Vec<T>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    match node.op.move_op() {
        Some(MoveOp::Reshape) => copy_runs(srcs, n, n, &|_| Ok((0, 0))),
        Some(MoveOp::Permute { perm }) => {
            // Trailing output dims that the permutation keeps in place are contiguous in both
            // tensors: copy them as one run.
            let rank = out.len();
            let keep = (0..rank).rev().take_while(|&d| perm[d] == d).count();
            let lead = rank - keep;
            let run: usize = out[lead..].iter().product();
            let ist = strides(ins[0].1);
            let lead_dims = &out[..lead];
            copy_runs(srcs, n, run, &|r| {
                let (mut rem, mut src) = (r, 0);
                for d in (0..lead).rev() {
                    src += (rem % lead_dims[d]) * ist[perm[d]];
                    rem /= lead_dims[d];
                }
                Ok((0, src))
            })
        }
        Some(MoveOp::Slice { axis, start }) => {
            // One run per outer index: `len` rows of `inner` elements.
            let (_, len, inner) = split_axis(out, axis);
            let size = ins[0].1[axis];
            copy_runs(srcs, n, len * inner, &|o| {
                Ok((0, (o * size + start) * inner))
            })
        }
        Some(MoveOp::Concat { axis }) => {
            // Each outer index: a's run, then b's.
            let (_, na, inner) = split_axis(ins[0].1, axis);
            let nb = ins[1].1[axis];
            let (ra, rb) = (na * inner, nb * inner);
            let mut y = vec![T::default(); n];
            let rows_per_task = (CHUNK / (ra + rb)).max(1);
            y.par_chunks_mut((ra + rb) * rows_per_task)
                .enumerate()
                .try_for_each(|(t, o)| {
                    for (r, row) in o.chunks_mut(ra + rb).enumerate() {
                        let o = t * rows_per_task + r;
                        let a = srcs[0].get(o * ra..(o + 1) * ra);
                        let b = srcs.get(1).and_then(|s| s.get(o * rb..(o + 1) * rb));
                        let (Some(a), Some(b)) = (a, b) else {
                            return Err(Error::InvalidGraph(format!(
                                "concat: row {o} past its operands"
                            )));
                        };
                        row[..ra].copy_from_slice(a);
                        row[ra..].copy_from_slice(b);
                    }
                    Ok(())
                })?;
            Ok(y)
        }
        Some(MoveOp::Gather) => {
            let (rows, d) = (ins[0].1[0], ins[0].1[1]);
            let idx = ins[1].0;
            copy_runs(srcs, n, d, &|r| {
                Ok((0, super::reference::gather_index(idx, r, rows)? * d))
            })
        }
        None => Err(Error::InvalidGraph(format!(
            "{} is not a movement op",
            node.op.name()
        ))),
    }
}

/// `n` elements as runs of `run` (> 0, dividing `n`): run `r` copies from `src(r)` = (operand,
/// first element). Threads take many short runs or one long one.
fn copy_runs<T: Copy + Default + Send + Sync>(
    srcs: &[&[T]],
    n: usize,
    run: usize,
    src: &(dyn Fn(usize) -> Result<(usize, usize)> + Sync),
) -> Result<Vec<T>> {
    let mut y = vec![T::default(); n];
    let rows_per_task = (CHUNK / run.max(1)).max(1);
    y.par_chunks_mut(run * rows_per_task)
        .enumerate()
        .try_for_each(|(t, o)| {
            for (r, row) in o.chunks_mut(run).enumerate() {
                let (k, i) = src(t * rows_per_task + r)?;
                let s = srcs
                    .get(k)
                    .and_then(|s| s.get(i..i + row.len()))
                    .ok_or_else(|| {
                        Error::InvalidGraph(format!("a copy reads past operand {k} at {i}"))
                    })?;
                row.copy_from_slice(s);
            }
            Ok(())
        })?;
    Ok(y)
}
