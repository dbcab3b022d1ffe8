//! Softmax, RMS norm, layer norm and argmax over the last axis (rows.wgsl), accumulated in f32.
//! GPUs get a workgroup per row with tree reductions in workgroup memory (`rows_tree`);
//! CPU-emulated adapters, where a barrier splits the shader into coroutines, get one invocation
//! per row (`rows`). Either way one row's output words belong to one workgroup.

use bytemuck::{Pod, Zeroable};

use super::{Binding, Buf, Class, Go, Launch, NodeView, RunValues, fits, fold, grid_of};
use crate::backend::wgpu::context::{PRELUDE, PipelineKey, Shader};
use crate::backend::wgpu::layout::{code, geometry};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ir::{Op, RowOp};

pub(crate) static SHADER: Shader = Shader {
    name: "rows",
    parts: &[
        PRELUDE,
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/rows.wgsl")),
    ],
    subgroups: false,
};

/// Invocations per workgroup of the tree kernel (a power of two).
const RWG: u32 = 128;
/// Invocations per workgroup of the one-row-per-invocation kernel: small, so a few rows still
/// spread over the emulating CPU's threads.
const SWG: u32 = 16;
/// Shorter rows use the one-invocation kernel on GPUs too (a workgroup would mostly idle).
const TREE_MIN_LEN: usize = 32;

/// rows.wgsl's `Params`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct RowsParams {
    rows: u32,
    len: u32,
    x_pitch: u32,
    out_pitch: u32,
    row_groups: u32,
    has_w: u32,
    has_b: u32,
    eps: f32,
    ka: u32,
    kb: u32,
    pad: [u32; 2],
}

const CLASS_SERIAL: usize = 0;
const CLASS_TREE: usize = 1;

/// The row ops, as rows.wgsl's `OP`.
#[derive(Clone, Copy)]
enum Kind {
    Softmax = 0,
    RmsNorm = 1,
    LayerNorm = 2,
    ArgMax = 3,
}

fn kind(op: &Op) -> Option<Kind> {
    op.row_op().map(|r| match r {
        RowOp::Softmax => Kind::Softmax,
        RowOp::RmsNorm { .. } => Kind::RmsNorm,
        RowOp::LayerNorm { .. } => Kind::LayerNorm,
        RowOp::ArgMax => Kind::ArgMax,
    })
}

fn key(k: Kind, x: DType, out: DType, sr: bool, tree: bool) -> PipelineKey {
    let mut constants = vec![
        ("DT_X", code(x)),
        ("DT_OUT", code(out)),
        ("OP", k as u32),
        ("ROUND", super::round_code(out, sr)),
    ];
    if tree {
        constants.push(("RWG", RWG));
    } else {
        constants.push(("WG", SWG));
    }
    PipelineKey {
        shader: &SHADER,
        entry: if tree { "rows_tree" } else { "rows" },
        constants,
    }
}

pub(super) fn all_keys() -> Vec<PipelineKey> {
    let mut keys = Vec::new();
    for d in DType::FLOATS {
        for tree in [false, true] {
            for sr in [false, true] {
                for k in [Kind::Softmax, Kind::RmsNorm, Kind::LayerNorm] {
                    keys.push(key(k, d, d, sr, tree));
                }
            }
            keys.push(key(Kind::ArgMax, d, DType::U32, false, tree));
        }
    }
    keys
}

pub(super) fn supports(node: &NodeView<'_>, class: &Class) -> std::result::Result<(), String> {
    fits(node, class, &[])
}

/// Bindings: x, w, b (x again for an absent parameter), out.
pub(super) fn plan(node: &NodeView<'_>, class: &Class) -> Result<Vec<Launch>> {
    let (w, b) = match node.op.row_op() {
        Some(RowOp::RmsNorm { .. }) => (1, 0),
        Some(RowOp::LayerNorm { weight, bias, .. }) => (
            usize::from(weight),
            if bias { 1 + usize::from(weight) } else { 0 },
        ),
        Some(RowOp::Softmax | RowOp::ArgMax) | None => (0, 0),
    };
    let Some(k) = kind(node.op) else {
        return Err(Error::InvalidGraph(format!(
            "{} is not a row op",
            node.op.name()
        )));
    };
    let x = node.input(0).0;
    let mut keys = vec![key(k, x, node.dtype, node.sr(), false)];
    if !class.cpu {
        keys.push(key(k, x, node.dtype, node.sr(), true));
    }
    Ok(vec![Launch {
        keys,
        params_size: std::mem::size_of::<RowsParams>() as u64,
        bindings: vec![
            Binding::read(Buf::Operand(0)),
            Binding::read(Buf::Operand(w)),
            Binding::read(Buf::Operand(b)),
            Binding::write(Buf::Out),
        ],
    }])
}

pub(super) fn bind(node: &NodeView<'_>, class: &Class, run: &RunValues<'_>) -> Go {
    if super::count(node.shape) == 0 {
        return Go::Skip;
    }
    let (xd, xs) = node.input(0);
    let len = xs.last().copied().unwrap_or(1);
    let rows = super::count(&xs[..xs.len().saturating_sub(1)]);
    let (eps, has_w, has_b) = match node.op.row_op() {
        Some(RowOp::RmsNorm { eps }) => (eps, true, false),
        Some(RowOp::LayerNorm { eps, weight, bias }) => (eps, weight, bias),
        Some(RowOp::Softmax | RowOp::ArgMax) | None => (0.0, false, false),
    };
    let (_, x_pitch, _) = geometry(xd, xs);
    let (_, out_pitch, _) = geometry(node.dtype, node.shape);
    let tree = !class.cpu && len >= TREE_MIN_LEN;
    // The tree kernel: one workgroup per row; the serial one: one invocation per row.
    let (g, row_groups) = if tree {
        fold(rows as u32)
    } else {
        grid_of(rows as u32, SWG)
    };
    let p = RowsParams {
        rows: rows as u32,
        len: len as u32,
        x_pitch: x_pitch as u32,
        out_pitch: out_pitch as u32,
        row_groups,
        has_w: u32::from(has_w),
        has_b: u32::from(has_b),
        eps: eps as f32,
        ka: run.keys[0],
        kb: run.keys[1],
        pad: [0; 2],
    };
    Go::new(if tree { CLASS_TREE } else { CLASS_SERIAL }, &p, g)
}
