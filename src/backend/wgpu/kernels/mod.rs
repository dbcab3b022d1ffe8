//! Host side of the kernel families: the `#[repr(C)]` params uniforms (matching the WGSL
//! structs), pipeline keys with their override constants, and grid sizes. Shapes travel in the
//! params, so a new bound length reuses the pipeline (settled decision 2).

use bytemuck::{Pod, Zeroable};

use super::context::{PipelineKey, Shader};
use super::layout::{code, geometry};
use crate::shape::broadcast_strides;
use crate::dtype::DType;

mod matmul;
use crate::ir::{BinaryOp, ReduceOp, UnaryOp};
pub(crate) use matmul::*;

/// Invocations per workgroup of the one-word-per-invocation kernels.
pub(crate) const WG: u32 = 256;
const MAX_GROUPS: u32 = 65535;

/// A 1-D grid of `words` invocations folded into 2-D when it exceeds the per-dimension limit:
/// (workgroups x, y, invocations per row).
pub(crate) fn grid(words: u32) -> ([u32; 3], u32) {
    let groups = words.div_ceil(WG).max(1);
    if groups <= MAX_GROUPS {
        ([groups, 1, 1], groups * WG)
    } else {
        (
            [MAX_GROUPS, groups.div_ceil(MAX_GROUPS), 1],
            MAX_GROUPS * WG,
        )
    }
}

fn words_of(dtype: DType, shape: &[usize]) -> u32 {
    let (_, _, phys) = geometry(dtype, shape);
    let per = if dtype.size_of() == 2 { 2 } else { 1 };
    phys.div_ceil(per) as u32
}

fn fill8(v: &[usize]) -> [u32; 8] {
    let mut out = [0u32; 8];
    for (o, &x) in out.iter_mut().zip(v) {
        *o = x as u32;
    }
    out
}

/// elementwise.wgsl's `Params`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct EwParams {
    dims: [u32; 8],
    sa: [u32; 8],
    sb: [u32; 8],
    rank: u32,
    out_last: u32,
    out_pitch: u32,
    words: u32,
    a_last: u32,
    a_pitch: u32,
    b_last: u32,
    b_pitch: u32,
    row_words: u32,
    ka: u32,
    kb: u32,
    pad: u32,
}

/// Which elementwise entry point.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Ew {
    Unary(UnaryOp),
    Binary(BinaryOp),
    Cast,
}

/// The `ROUND` override: stochastic rounding only matters for 16-bit outputs.
pub(super) fn round_code(out: DType, sr: bool) -> u32 {
    u32::from(sr && out.size_of() == 2 && out.is_float())
}

pub(crate) fn elementwise_key(kind: Ew, a: DType, b: DType, out: DType, sr: bool) -> PipelineKey {
    let (entry, op) = match kind {
        Ew::Unary(u) => (
            "unary",
            UnaryOp::ALL.iter().position(|&x| x == u).unwrap_or(0) as u32,
        ),
        Ew::Binary(o) => (
            "binary",
            BinaryOp::ALL.iter().position(|&x| x == o).unwrap_or(0) as u32,
        ),
        Ew::Cast => ("convert", 0),
    };
    PipelineKey {
        shader: Shader::Elementwise,
        entry,
        constants: vec![
            ("DT_A", code(a)),
            ("DT_B", code(b)),
            ("DT_OUT", code(out)),
            ("OP", op),
            ("WG", WG),
            ("ROUND", round_code(out, sr)),
        ],
    }
}

/// Params and grid for out = f(a, b) with `b` absent for unary ops and casts.
pub(crate) fn elementwise_params(
    a: (DType, &[usize]),
    b: Option<(DType, &[usize])>,
    out: (DType, &[usize]),
    keys: [u32; 2],
) -> (EwParams, [u32; 3]) {
    let (od, os) = out;
    let (ol, op, _) = geometry(od, os);
    let (al, ap, _) = geometry(a.0, a.1);
    let sa = broadcast_strides(a.1, os);
    let (bl, bp, sb) = match b {
        Some((bd, bs)) => {
            let (l, p, _) = geometry(bd, bs);
            (l, p, broadcast_strides(bs, os))
        }
        None => (1, 1, vec![0; os.len()]),
    };
    let words = words_of(od, os);
    let (g, row_words) = grid(words);
    // Operands of the output's own shape need no index arithmetic (rank 0 tells the kernel).
    let same = a.1 == os && b.is_none_or(|(_, bs)| bs == os);
    let p = EwParams {
        dims: fill8(os),
        sa: fill8(&sa),
        sb: fill8(&sb),
        rank: if same { 0 } else { os.len() as u32 },
        out_last: ol as u32,
        out_pitch: op as u32,
        words,
        a_last: al as u32,
        a_pitch: ap as u32,
        b_last: bl as u32,
        b_pitch: bp as u32,
        row_words,
        ka: keys[0],
        kb: keys[1],
        pad: 0,
    };
    (p, g)
}

/// reduce.wgsl's `Params`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct ReduceParams {
    outer: u32,
    len: u32,
    inner: u32,
    words: u32,
    x_last: u32,
    x_pitch: u32,
    out_last: u32,
    out_pitch: u32,
    row_words: u32,
    ka: u32,
    kb: u32,
    pad: u32,
}

pub(crate) fn reduce_key(op: ReduceOp, x: DType, out: DType, sr: bool) -> PipelineKey {
    let op = match op {
        ReduceOp::Sum => 0,
        ReduceOp::Max => 1,
        ReduceOp::Mean => 2,
    };
    PipelineKey {
        shader: Shader::Reduce,
        entry: "reduce",
        constants: vec![
            ("DT_X", code(x)),
            ("DT_OUT", code(out)),
            ("OP", op),
            ("WG", WG),
            ("ROUND", round_code(out, sr)),
        ],
    }
}

pub(crate) fn reduce_params(
    x: (DType, &[usize]),
    out: (DType, &[usize]),
    axis: usize,
    keys: [u32; 2],
) -> (ReduceParams, [u32; 3]) {
    let xs = x.1;
    let outer: usize = xs[..axis].iter().product();
    let inner: usize = xs[axis + 1..].iter().product();
    let (xl, xp, _) = geometry(x.0, xs);
    let (ol, op, _) = geometry(out.0, out.1);
    let words = words_of(out.0, out.1);
    let (g, row_words) = grid(words);
    let p = ReduceParams {
        outer: outer as u32,
        len: xs[axis] as u32,
        inner: inner as u32,
        words,
        x_last: xl as u32,
        x_pitch: xp as u32,
        out_last: ol as u32,
        out_pitch: op as u32,
        row_words,
        ka: keys[0],
        kb: keys[1],
        pad: 0,
    };
    (p, g)
}

/// state.wgsl's `Params`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct StateParams {
    s_len: u32,
    v_len: u32,
    inner: u32,
    offset: u32,
    words: u32,
    s_last: u32,
    s_pitch: u32,
    v_last: u32,
    v_pitch: u32,
    row_words: u32,
    pad: [u32; 2],
}

pub(crate) fn state_key(dtype: DType) -> PipelineKey {
    PipelineKey {
        shader: Shader::State,
        entry: "write_state",
        constants: vec![("DT", code(dtype)), ("WG", WG)],
    }
}

pub(crate) fn state_params(
    dtype: DType,
    state: &[usize],
    value: &[usize],
    axis: usize,
    offset: usize,
) -> (StateParams, [u32; 3]) {
    let inner: usize = state[axis + 1..].iter().product();
    let (sl, sp, _) = geometry(dtype, state);
    let (vl, vp, _) = geometry(dtype, value);
    let words = words_of(dtype, state);
    let (g, row_words) = grid(words);
    let p = StateParams {
        s_len: state[axis] as u32,
        v_len: value[axis] as u32,
        inner: inner as u32,
        offset: offset as u32,
        words,
        s_last: sl as u32,
        s_pitch: sp as u32,
        v_last: vl as u32,
        v_pitch: vp as u32,
        row_words,
        pad: [0; 2],
    };
    (p, g)
}

/// widen.wgsl's `Params`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct WidenParams {
    count: u32,
    row_words: u32,
    pad: [u32; 2],
}

pub(crate) fn widen_key(from: DType) -> PipelineKey {
    PipelineKey {
        shader: Shader::Widen,
        entry: "widen",
        constants: vec![("DT_A", code(from)), ("WG", 64)],
    }
}

/// Whether a cast of `shape` from `from` to `to` can use widen.wgsl (16-bit → f32, contiguous,
/// a multiple of 8 elements).
pub(crate) fn widens(from: DType, to: DType, shape: &[usize]) -> bool {
    let n: usize = shape.iter().product();
    from.size_of() == 2
        && to == DType::F32
        && shape.last().is_some_and(|l| l % 2 == 0)
        && n.is_multiple_of(8)
}

pub(crate) fn widen_params(shape: &[usize]) -> (WidenParams, [u32; 3]) {
    let count = (shape.iter().product::<usize>() / 8) as u32;
    let groups = count.div_ceil(64).max(1);
    let (g, row_words) = if groups <= MAX_GROUPS {
        ([groups, 1, 1], groups * 64)
    } else {
        (
            [MAX_GROUPS, groups.div_ceil(MAX_GROUPS), 1],
            MAX_GROUPS * 64,
        )
    };
    (
        WidenParams {
            count,
            row_words,
            pad: [0; 2],
        },
        g,
    )
}
