//! The CPU reference: plain f64 loops, one element at a time, readable at a glance. Every test
//! compares the other paths against it. Each node's value is rounded to its storage dtype (through
//! f32, round to nearest even), so the reference stores what a real backend stores.

use half::{bf16, f16};

use super::{Plan, byte_len, cpu_buffer, resolve_offset, split_axis, write_state};
use crate::backend::{RunArgs, RunStats};
use crate::dtype::{DType, Rounding};
use crate::error::{Error, Result};
use crate::ir::{MoveOp, Node, Op, ReduceOp, Role, RowOp};
use crate::shape::{Bindings, broadcast_strides};
use crate::tensor::{Storage, StorageRef, Tensor, constant_storage};

/// Rounds an f64 to what `dtype` stores, returned as f64.
fn round_to(x: f64, dtype: DType) -> f64 {
    match dtype {
        DType::F32 => f64::from(x as f32),
        DType::F16 => f64::from(f16::from_f32(x as f32)),
        DType::BF16 => f64::from(bf16::from_f32(x as f32)),
        DType::U32 => f64::from(x as u32),
        DType::I32 => f64::from(x as i32),
    }
}

/// The flat index into an operand of shape `s` (strides `st` in the output's index space) of
/// output element `flat`.
fn operand_index(flat: usize, out_shape: &[usize], st: &[usize]) -> usize {
    let (mut rem, mut idx) = (flat, 0);
    for d in (0..out_shape.len()).rev() {
        idx += (rem % out_shape[d]) * st[d];
        rem /= out_shape[d];
    }
    idx
}

/// `[.., M, K] × [.., K, N]` in f64, three plain loops per output matrix.
fn matmul(
    a: &[f64],
    sa: &[usize],
    b: &[f64],
    sb: &[usize],
    ta: bool,
    tb: bool,
    out: &[usize],
) -> Vec<f64> {
    let r = out.len();
    let (m, n) = (out[r - 2], out[r - 1]);
    let k = if ta {
        sa[sa.len() - 2]
    } else {
        sa[sa.len() - 1]
    };
    let batch = &out[..r - 2];
    let nb: usize = batch.iter().product();
    let (st_a, st_b) = (
        broadcast_strides(&sa[..sa.len() - 2], batch),
        broadcast_strides(&sb[..sb.len() - 2], batch),
    );
    let mut y = vec![0.0; nb * m * n];
    for bi in 0..nb {
        let oa = operand_index(bi, batch, &st_a) * m * k;
        let ob = operand_index(bi, batch, &st_b) * k * n;
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0.0;
                for kk in 0..k {
                    let av = if ta {
                        a[oa + kk * m + i]
                    } else {
                        a[oa + i * k + kk]
                    };
                    let bv = if tb {
                        b[ob + j * k + kk]
                    } else {
                        b[ob + kk * n + j]
                    };
                    acc += av * bv;
                }
                y[bi * m * n + i * n + j] = acc;
            }
        }
    }
    y
}

fn reduce(op: ReduceOp, x: &[f64], shape: &[usize], axis: usize) -> Vec<f64> {
    let (outer, len, inner) = split_axis(shape, axis);
    let mut y = vec![0.0; outer * inner];
    for o in 0..outer {
        for i in 0..inner {
            let vals = (0..len).map(|k| x[(o * len + k) * inner + i]);
            y[o * inner + i] = match op {
                ReduceOp::Sum => vals.sum(),
                ReduceOp::Mean => vals.sum::<f64>() / len as f64,
                ReduceOp::Max => vals.fold(f64::NEG_INFINITY, f64::max),
            };
        }
    }
    y
}

/// Softmax, RMS norm, layer norm or argmax of each row of the last axis, in f64. `params` are the
/// norm's weight and bias (`[len]` each) when present.
/// `n` is the output's element count.
fn rows(op: &Op, x: &[f64], len: usize, params: &[&[f64]], n: usize) -> Vec<f64> {
    if len == 0 {
        // An empty last axis: argmax still has one output per row (0); the rest are empty.
        return vec![0.0; n];
    }
    let mut y = Vec::with_capacity(x.len());
    for row in x.chunks(len) {
        match op.row_op() {
            Some(RowOp::Softmax) => {
                // −Inf and +Inf are clamped to the largest finite values (see `Op::Softmax`).
                let fmax = f64::from(f32::MAX);
                let row: Vec<f64> = row.iter().map(|&v| v.clamp(-fmax, fmax)).collect();
                let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = row.iter().map(|&v| (v - m).exp()).collect();
                let s: f64 = e.iter().sum();
                y.extend(e.iter().map(|&v| v / s));
            }
            Some(RowOp::RmsNorm { eps }) => {
                let ms = row.iter().map(|v| v * v).sum::<f64>() / len as f64;
                let r = 1.0 / (ms + eps).sqrt();
                y.extend(row.iter().zip(params[0]).map(|(&v, &w)| v * r * w));
            }
            Some(RowOp::LayerNorm { eps, weight, bias }) => {
                let mean = row.iter().sum::<f64>() / len as f64;
                let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / len as f64;
                let r = 1.0 / (var + eps).sqrt();
                for (k, &v) in row.iter().enumerate() {
                    let w = if weight { params[0][k] } else { 1.0 };
                    let b = if bias {
                        params[usize::from(weight)][k]
                    } else {
                        0.0
                    };
                    y.push((v - mean) * r * w + b);
                }
            }
            // Only the row ops reach here (`eval`'s match).
            Some(RowOp::ArgMax) | None => {
                // Argmax: NaN above every number (the first NaN wins), ties to the lowest index
                // (`>` keeps the earlier of equal values; −0 == +0).
                let mut best = 0;
                for (k, &v) in row.iter().enumerate() {
                    let b = row[best];
                    if !b.is_nan() && (v.is_nan() || v > b) {
                        best = k;
                    }
                }
                y.push(best as f64);
            }
        }
    }
    y
}

/// Rope of x `[B, H, S, D]` in f64, straight from the definition (see [`Op::Rope`]): element k
/// of pair i turns with its partner by the angle pos · θ^(−2i/rotary_dim).
fn rope(
    x: &[f64],
    shape: &[usize],
    (theta, rotary_dim, interleaved): (f64, usize, bool),
    first: usize,
) -> Vec<f64> {
    let (seq, d) = (shape[2], shape[3]);
    let inv = crate::ir::rope_inv_freq(theta, rotary_dim);
    let half = rotary_dim / 2;
    let mut y = Vec::with_capacity(x.len());
    for (r, row) in x.chunks(d.max(1)).enumerate() {
        let pos = (first + r % seq.max(1)) as f64;
        for (k, &v) in row.iter().enumerate() {
            if k >= rotary_dim {
                y.push(v);
                continue;
            }
            // (pair, partner, sign of the partner's term): the first of a pair gets x·cos −
            // partner·sin, the second x·cos + partner·sin.
            let (i, partner, sign) = match (interleaved, k < half) {
                (true, _) if k % 2 == 0 => (k / 2, k + 1, -1.0),
                (true, _) => (k / 2, k - 1, 1.0),
                (false, true) => (k, k + half, -1.0),
                (false, false) => (k - half, k - half, 1.0),
            };
            let a = pos * inv[i];
            y.push(v * a.cos() + sign * row[partner] * a.sin());
        }
    }
    y
}

/// Evaluates one non-source node in f64 (before rounding to its dtype).
fn eval(
    node: &Node,
    ins: &[(&[f64], &[usize], DType)],
    out: &[usize],
    bindings: &Bindings,
) -> Result<Vec<f64>> {
    let n: usize = out.iter().product();
    Ok(match &node.op {
        Op::Attention { padding, lse, .. } => {
            let g = super::attention::Geometry::new(&node.op, ins[0].1, ins[1].1, bindings)?;
            let lengths: Option<Vec<u32>> =
                padding.then(|| ins[3].0.iter().map(|&x| x as u32).collect());
            if *lse {
                super::attention::lse_reference(&g, ins[0].0, ins[1].0, lengths.as_deref())
            } else {
                super::attention::reference(&g, ins[0].0, ins[1].0, ins[2].0, lengths.as_deref())
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
                ins[0].0,
                ins[0].1,
                (*theta, *rotary_dim, *interleaved),
                first,
            )
        }
        Op::Unary(u) => ins[0].0.iter().map(|&x| u.eval_f64(x)).collect(),
        Op::Binary(b) => {
            let st_a = broadcast_strides(ins[0].1, out);
            let st_b = broadcast_strides(ins[1].1, out);
            (0..n)
                .map(|f| {
                    let x = ins[0].0[operand_index(f, out, &st_a)];
                    let y = ins[1].0[operand_index(f, out, &st_b)];
                    b.eval_f64(x, y)
                })
                .collect()
        }
        Op::MatMul {
            transpose_a,
            transpose_b,
        } => matmul(
            ins[0].0,
            ins[0].1,
            ins[1].0,
            ins[1].1,
            *transpose_a,
            *transpose_b,
            out,
        ),
        Op::Reduce { op, axis } => reduce(*op, ins[0].0, ins[0].1, *axis),
        Op::Softmax | Op::RmsNorm { .. } | Op::LayerNorm { .. } | Op::ArgMax => {
            let len = ins[0].1.last().copied().unwrap_or(1);
            let params: Vec<&[f64]> = ins[1..].iter().map(|p| p.0).collect();
            rows(&node.op, ins[0].0, len, &params, n)
        }
        // Integer → integer casts reinterpret two's complement (Rust `as`); the rest go through
        // `round_to`, which saturates floats into integers.
        Op::Cast { to: DType::U32, .. } if ins[0].2 == DType::I32 => ins[0]
            .0
            .iter()
            .map(|&x| f64::from(x as i32 as u32))
            .collect(),
        Op::Cast { to: DType::I32, .. } if ins[0].2 == DType::U32 => ins[0]
            .0
            .iter()
            .map(|&x| f64::from(x as u32 as i32))
            .collect(),
        Op::Cast { .. } => ins[0].0.to_vec(),
        // The one constant rule every backend shares (exact for integers).
        Op::Constant { values } => constant_storage(values, node.dtype, n)?
            .as_ref()
            .to_f64_vec(),
        Op::Input { .. }
        | Op::Weight { .. }
        | Op::State { .. }
        | Op::WriteState { .. }
        | Op::Reshape { .. }
        | Op::Permute { .. }
        | Op::Slice { .. }
        | Op::Concat { .. }
        | Op::Gather => {
            return Err(Error::InvalidGraph(format!(
                "{} is not evaluated in f64",
                node.op.name()
            )));
        }
    })
}

/// True for the data-movement ops, which the reference runs on the stored bits (`movement`),
/// never through f64, so integers, NaN payloads and signalling NaNs stay exact.
fn is_movement(op: &Op) -> bool {
    op.move_op().is_some()
}

/// The multi-index of flat element `l` in `dims`.
fn unflatten(mut l: usize, dims: &[usize]) -> Vec<usize> {
    let mut o = vec![0; dims.len()];
    for d in (0..dims.len()).rev() {
        o[d] = l % dims[d].max(1);
        l /= dims[d].max(1);
    }
    o
}

/// The flat element index of multi-index `o` in `dims`.
fn flatten(o: &[usize], dims: &[usize]) -> usize {
    o.iter().zip(dims).fold(0, |acc, (&i, &n)| acc * n + i)
}

/// Index `r` of a gather's index tensor, checked against the table's `rows`.
pub(super) fn gather_index(idx: StorageRef<'_>, r: usize, rows: usize) -> Result<usize> {
    let i = match idx {
        StorageRef::U32(v) => v.get(r).map(|&i| i64::from(i)),
        StorageRef::I32(v) => v.get(r).map(|&i| i64::from(i)),
        other => {
            return Err(Error::InvalidArgument {
                op: "gather",
                msg: format!("indices must be u32 or i32, got {}", other.dtype()),
            });
        }
    };
    let i = i.ok_or_else(|| Error::InvalidGraph(format!("gather: index {r} past the indices")))?;
    usize::try_from(i)
        .ok()
        .filter(|&u| u < rows)
        .ok_or_else(|| Error::InvalidArgument {
            op: "gather",
            msg: format!(
                "index {i} (at position {r} of the indices) is outside the table's {rows} rows"
            ),
        })
}

/// Where output element `l` of a movement op comes from: (operand, flat element index).
fn movement_source(
    node: &Node,
    ins: &[(StorageRef<'_>, &[usize])],
    out: &[usize],
    l: usize,
) -> Result<(usize, usize)> {
    Ok(match node.op.move_op() {
        Some(MoveOp::Reshape) => (0, l),
        Some(MoveOp::Permute { perm }) => {
            // Output dimension d walks operand dimension perm[d].
            let o = unflatten(l, out);
            let mut src = vec![0; o.len()];
            for (d, &p) in perm.iter().enumerate() {
                src[p] = o[d];
            }
            (0, flatten(&src, ins[0].1))
        }
        Some(MoveOp::Slice { axis, start }) => {
            let mut o = unflatten(l, out);
            o[axis] += start;
            (0, flatten(&o, ins[0].1))
        }
        Some(MoveOp::Concat { axis }) => {
            let mut o = unflatten(l, out);
            let na = ins[0].1[axis];
            if o[axis] < na {
                (0, flatten(&o, ins[0].1))
            } else {
                o[axis] -= na;
                (1, flatten(&o, ins[1].1))
            }
        }
        Some(MoveOp::Gather) => {
            let (rows, d) = (ins[0].1[0], ins[0].1[1]);
            let row = gather_index(ins[1].0, l / d.max(1), rows)?;
            (0, row * d + l % d.max(1))
        }
        None => {
            return Err(Error::InvalidGraph(format!(
                "{} is not a movement op",
                node.op.name()
            )));
        }
    })
}

/// A movement op on stored bits, one element at a time.
fn movement(node: &Node, ins: &[(StorageRef<'_>, &[usize])], out: &[usize]) -> Result<Storage> {
    let n: usize = out.iter().product();
    // Gather's operand 1 holds indices, not data.
    let data = if matches!(node.op, Op::Gather) {
        &ins[..1]
    } else {
        ins
    };
    let lost = |k: usize, l: usize, i: usize| {
        Error::InvalidGraph(format!(
            "{}: element {l} reads {i}, past operand {k}",
            node.op.name()
        ))
    };
    macro_rules! pick {
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
            let mut y = Vec::with_capacity(n);
            for l in 0..n {
                let (k, i) = movement_source(node, ins, out, l)?;
                y.push(*srcs[k].get(i).ok_or_else(|| lost(k, l, i))?);
            }
            Storage::$v(y)
        }};
    }
    Ok(match node.dtype {
        DType::F32 => pick!(F32),
        DType::F16 => pick!(F16),
        DType::BF16 => pick!(BF16),
        DType::U32 => pick!(U32),
        DType::I32 => pick!(I32),
    })
}

/// A cast to the dtype it already has changes nothing, whatever its rounding.
fn same_dtype_cast(node: &Node, ins: &[(&[f64], &[usize], DType)]) -> bool {
    matches!(node.op, Op::Cast { .. }) && ins[0].2 == node.dtype
}

/// f64 values already rounded to `dtype` as storage (exact: integers never pass through f32).
fn stored(dtype: DType, v: &[f64]) -> Result<Storage> {
    constant_storage(v, dtype, v.len())
}

/// Runs the whole plan in f64. Every state read and state value is a copy here (counted in
/// `stats.bytes_copied`).
pub(super) fn run(plan: &Plan, args: &RunArgs<'_>, stats: &mut RunStats) -> Result<Vec<Tensor>> {
    let shapes = plan.shapes(args.bindings)?;
    let nodes = plan.graph.nodes();
    let mut vals: Vec<Vec<f64>> = Vec::with_capacity(nodes.len());
    // The stored bits of sources and movement results: movement copies bits, and f64 would
    // lose NaN payloads. `None` for computed values (their f64 value rounds back exactly).
    let mut exact: Vec<Option<Storage>> = Vec::with_capacity(nodes.len());
    for (i, node) in nodes.iter().enumerate() {
        let bits = |j: usize, vals: &[Vec<f64>], exact: &[Option<Storage>]| match &exact[j] {
            Some(s) => Ok(s.clone()),
            None => stored(nodes[j].dtype, &vals[j]),
        };
        let e = match node.op.role() {
            Role::Input(name) => Some(
                args.inputs
                    .get(name)
                    .map(|t| t.data().to_owned())
                    .ok_or_else(|| Error::MissingInput {
                        name: name.to_string(),
                        shape: node.shape.to_string(),
                        dtype: node.dtype,
                    })?,
            ),
            Role::Weight(name) => {
                let buf = args.weights.get(name).ok_or_else(|| Error::UnknownWeight {
                    name: name.to_string(),
                    known: String::new(),
                })?;
                Some(cpu_buffer(buf, name)?.read_lock().storage().clone())
            }
            Role::State(name) => {
                let t = state(args, name)?.read_lock();
                stats.bytes_copied += byte_len(t.storage().as_ref());
                Some(t.storage().clone())
            }
            Role::WriteState { name, axis, offset } => {
                let j = node.inputs[0].0;
                let value = bits(j, &vals, &exact)?;
                let off = resolve_offset(offset, args.bindings)?;
                let buf = state(args, name)?;
                let mut t = buf.write_lock();
                write_state(name, &mut t, value.as_ref(), &shapes[j], axis, off)?;
                stats.state_elements_written += value.len() as u64;
                stats.bytes_copied += byte_len(t.storage().as_ref());
                Some(t.storage().clone())
            }
            Role::Compute if is_movement(&node.op) => {
                let mut owned = Vec::with_capacity(node.inputs.len());
                for j in &node.inputs {
                    owned.push(bits(j.0, &vals, &exact)?);
                }
                let ins: Vec<(StorageRef<'_>, &[usize])> = owned
                    .iter()
                    .zip(&node.inputs)
                    .map(|(s, j)| (s.as_ref(), shapes[j.0].as_slice()))
                    .collect();
                Some(movement(node, &ins, &shapes[i])?)
            }
            Role::Constant(_) | Role::Compute => None,
        };
        let v = match &e {
            Some(s) => s.as_ref().to_f64_vec(),
            None => {
                let ins: Vec<(&[f64], &[usize], DType)> = node
                    .inputs
                    .iter()
                    .map(|j| {
                        (
                            vals[j.0].as_slice(),
                            shapes[j.0].as_slice(),
                            nodes[j.0].dtype,
                        )
                    })
                    .collect();
                let v = eval(node, &ins, &shapes[i], args.bindings)?;
                match node.rounding {
                    // Stochastic rounding of the f32 value, element by logical flat index.
                    Rounding::Stochastic { stream }
                        if node.dtype.size_of() == 2 && !same_dtype_cast(node, &ins) =>
                    {
                        let keys = crate::rng::sr_keys(args.seed, stream, args.counter);
                        v.into_iter()
                            .enumerate()
                            .map(|(k, x)| {
                                let bits = (x as f32).to_bits();
                                let r = crate::rng::sr_bits_keyed(keys, k as u32);
                                match node.dtype {
                                    DType::F16 => f64::from(f16::from_bits(
                                        crate::rng::f32_to_f16_sr(bits, r),
                                    )),
                                    _ => f64::from(bf16::from_bits(crate::rng::f32_to_bf16_sr(
                                        bits, r,
                                    ))),
                                }
                            })
                            .collect()
                    }
                    _ => v.into_iter().map(|x| round_to(x, node.dtype)).collect(),
                }
            }
        };
        vals.push(v);
        exact.push(e);
    }
    plan.graph
        .outputs()
        .iter()
        .map(|(_, id)| {
            let storage = match &exact[id.0] {
                Some(s) => s.clone(),
                None => stored(nodes[id.0].dtype, &vals[id.0])?,
            };
            Tensor::from_storage(&shapes[id.0], storage)
        })
        .collect()
}

fn state<'a>(args: &RunArgs<'a>, name: &str) -> Result<&'a super::CpuBuffer> {
    let buf = args.states.get(name).ok_or_else(|| Error::UnknownState {
        name: name.to_string(),
        known: String::new(),
    })?;
    cpu_buffer(buf, name)
}
