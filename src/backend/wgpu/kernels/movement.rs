//! Data movement (movement.wgsl): reshape, permute, slice and concat as one strided copy kernel
//! (output word → source elements through dims and strides in the params), and gather, with a
//! table over the binding limit bound in row ranges, one launch per range (settled decision 5).
//! Every op copies bits, so every dtype is exact. A reshape is a copy on the device too (it
//! repacks 16-bit rows when the innermost dimension changes parity; no aliasing).

use bytemuck::{Pod, Zeroable};

use super::{Binding, Buf, Class, Go, Launch, NodeView, WG, fill8, fits, grid, words_of};
use crate::backend::wgpu::context::{PRELUDE, PipelineKey, Shader};
use crate::backend::wgpu::layout::{code, device_bytes, geometry};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ir::{MoveOp, Op};

pub(crate) static SHADER: Shader = Shader {
    name: "movement",
    parts: &[
        PRELUDE,
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/shaders/movement.wgsl"
        )),
    ],
    subgroups: false,
};

/// movement.wgsl's `Params`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default)]
pub(crate) struct MoveParams {
    dims: [u32; 8],
    sa: [u32; 8],
    sb: [u32; 8],
    rank: u32,
    axis: u32,
    split: u32,
    a_off: u32,
    out_last: u32,
    out_pitch: u32,
    words: u32,
    a_last: u32,
    a_pitch: u32,
    b_last: u32,
    b_pitch: u32,
    row_words: u32,
    row0: u32,
    rows: u32,
    table_rows: u32,
    zeros: u32,
    pad: [u32; 4],
}

/// No concat axis (the kernel compares axes with it).
const NO_AXIS: u32 = 8;

/// The kernels copy bits: one pipeline per storage width, not per dtype.
fn key(entry: &'static str, dtype: DType) -> PipelineKey {
    let width = if dtype.size_of() == 2 {
        DType::F16
    } else {
        DType::U32
    };
    PipelineKey {
        shader: &SHADER,
        entry,
        constants: vec![("DT", code(width)), ("WG", WG)],
    }
}

pub(super) fn all_keys() -> Vec<PipelineKey> {
    let mut keys = Vec::new();
    for entry in ["copy", "gather"] {
        for dtype in [DType::F32, DType::F16] {
            keys.push(key(entry, dtype));
        }
    }
    keys
}

/// Bytes of one stored table row of `d` elements (with the 16-bit pitch).
fn row_bytes(dtype: DType, d: usize) -> u64 {
    (geometry(dtype, &[d]).1 * dtype.size_of()) as u64
}

/// Table rows per binding when a gather's fixed-shape table is over the binding limit: the most
/// that fit with byte offsets that are multiples of the offset alignment. `None` when the table
/// fits, or when not even one row fits.
fn split(node: &NodeView<'_>, class: &Class) -> Option<usize> {
    let (dtype, t) = node.input(0);
    if !matches!(node.op, Op::Gather) || device_bytes(dtype, t) <= class.binding_limit {
        return None;
    }
    let row = row_bytes(dtype, t[1]);
    let mut rows = (class.binding_limit / row.max(1)).min(t[0] as u64);
    while rows >= 1 && !(rows * row).is_multiple_of(class.offset_align) {
        rows -= 1;
    }
    (rows >= 1).then_some(rows as usize)
}

/// The (first row, rows) of each binding of a table of `v` rows split `rows` at a time, last
/// first: each launch writes only its own rows, so the order does not matter, and running them
/// backwards proves it (in order, a launch that wrote too much would be overwritten).
fn chunks(v: usize, rows: usize) -> Vec<(usize, usize)> {
    let mut c: Vec<(usize, usize)> = (0..v)
        .step_by(rows.max(1))
        .map(|r0| (r0, rows.min(v - r0)))
        .collect();
    c.reverse();
    c
}

pub(super) fn supports(node: &NodeView<'_>, class: &Class) -> std::result::Result<(), String> {
    // A gather's table of fixed shape may exceed the limit: it is bound in row ranges.
    let may_split = if node.fixed.first().copied().unwrap_or(false) && split(node, class).is_some()
    {
        vec![0]
    } else {
        vec![]
    };
    fits(node, class, &may_split)
}

pub(super) fn plan(node: &NodeView<'_>, class: &Class) -> Vec<Launch> {
    let params_size = std::mem::size_of::<MoveParams>() as u64;
    if !matches!(node.op, Op::Gather) {
        let b = usize::from(matches!(node.op, Op::Concat { .. }));
        return vec![Launch {
            keys: vec![key("copy", node.dtype)],
            params_size,
            bindings: vec![
                Binding::read(Buf::Operand(0)),
                Binding::read(Buf::Operand(b)),
                Binding::write(Buf::Out),
            ],
        }];
    }
    let launch = |range| Launch {
        keys: vec![key("gather", node.dtype)],
        params_size,
        bindings: vec![
            Binding {
                range,
                ..Binding::read(Buf::Operand(0))
            },
            Binding::read(Buf::Operand(1)),
            Binding::write(Buf::Out),
        ],
    };
    match split(node, class) {
        None => vec![launch(None)],
        Some(rows) => {
            let (dtype, t) = node.input(0);
            let row = row_bytes(dtype, t[1]);
            chunks(t[0], rows)
                .into_iter()
                .map(|(r0, n)| launch(Some((r0 as u64 * row, (n as u64 * row).div_ceil(4) * 4))))
                .collect()
        }
    }
}

/// Row-major element strides of `dims`.
fn strides(dims: &[usize]) -> Vec<usize> {
    let mut st = vec![1; dims.len()];
    for d in (0..dims.len().saturating_sub(1)).rev() {
        st[d] = st[d + 1] * dims[d + 1];
    }
    st
}

pub(super) fn bind(node: &NodeView<'_>, class: &Class, launches: usize) -> Result<Vec<Go>> {
    let out = node.shape;
    if super::count(out) == 0 {
        return Ok((0..launches).map(|_| Go::Skip).collect());
    }
    let (dtype, a) = node.input(0);
    let (ol, op, _) = geometry(node.dtype, out);
    let (al, ap, _) = geometry(dtype, a);
    let words = words_of(node.dtype, out);
    let (g, row_words) = grid(words);
    let base = MoveParams {
        dims: fill8(out),
        rank: out.len() as u32,
        axis: NO_AXIS,
        out_last: ol as u32,
        out_pitch: op as u32,
        words,
        a_last: al as u32,
        a_pitch: ap as u32,
        b_last: al as u32,
        b_pitch: ap as u32,
        row_words,
        ..MoveParams::default()
    };
    let ist = strides(a);
    let p = match node.op.move_op() {
        Some(MoveOp::Gather) => {
            let v = a[0];
            let rows = split(node, class).unwrap_or(v);
            let table = if rows == v {
                vec![(0, v)]
            } else {
                chunks(v, rows)
            };
            return Ok(table
                .into_iter()
                .map(|(r0, n)| {
                    let p = MoveParams {
                        row0: r0 as u32,
                        rows: n as u32,
                        table_rows: v as u32,
                        zeros: u32::from(r0 + n == v),
                        ..base
                    };
                    Go::new(0, &p, g)
                })
                .collect());
        }
        // Same elements in the same order: the kernel's rank-0 path reads a at the output's
        // logical index (repacking 16-bit rows when the innermost dimension changes).
        Some(MoveOp::Reshape) => MoveParams { rank: 0, ..base },
        Some(MoveOp::Permute { perm }) => {
            let sa: Vec<usize> = perm.iter().map(|&p| ist[p]).collect();
            MoveParams {
                sa: fill8(&sa),
                ..base
            }
        }
        Some(MoveOp::Slice { axis, start }) => MoveParams {
            sa: fill8(&ist),
            a_off: (start * ist[axis]) as u32,
            ..base
        },
        Some(MoveOp::Concat { axis }) => {
            let b = node.input(1).1;
            let (bl, bp, _) = geometry(dtype, b);
            MoveParams {
                sa: fill8(&ist),
                sb: fill8(&strides(b)),
                axis: axis as u32,
                split: a[axis] as u32,
                b_last: bl as u32,
                b_pitch: bp as u32,
                ..base
            }
        }
        None => {
            return Err(Error::InvalidGraph(format!(
                "{} is not a movement op",
                node.op.name()
            )));
        }
    };
    Ok(vec![Go::new(0, &p, g)])
}
