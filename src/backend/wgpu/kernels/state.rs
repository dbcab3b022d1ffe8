//! In-place writes into a persistent state at a run-time offset (state.wgsl): the grid covers
//! only the written words, so a KV-cache append costs O(elements written).

use bytemuck::{Pod, Zeroable};

use super::{Binding, Buf, Class, Go, Launch, NodeView, RunValues, WG, fits, grid};
use crate::backend::wgpu::context::{PRELUDE, PipelineKey, Shader};
use crate::backend::wgpu::layout::{code, geometry};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ir::Offset;

pub(crate) static SHADER: Shader = Shader {
    name: "state",
    parts: &[
        PRELUDE,
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/state.wgsl")),
    ],
    subgroups: false,
};

/// state.wgsl's `Params`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct StateParams {
    s_len: u32,
    v_len: u32,
    inner: u32,
    offset: u32,
    outer: u32,
    span: u32,
    s_last: u32,
    s_pitch: u32,
    v_last: u32,
    v_pitch: u32,
    row_words: u32,
    pad: u32,
}

fn key(dtype: DType) -> PipelineKey {
    PipelineKey {
        shader: &SHADER,
        entry: "write_state",
        constants: vec![("DT", code(dtype)), ("WG", WG)],
    }
}

pub(super) fn all_keys() -> Vec<PipelineKey> {
    DType::ALL.iter().map(|&d| key(d)).collect()
}

pub(super) fn supports(node: &NodeView<'_>, class: &Class) -> std::result::Result<(), String> {
    fits(node, class, &[])
}

pub(super) fn plan(node: &NodeView<'_>, name: &str) -> Vec<Launch> {
    vec![Launch {
        keys: vec![key(node.dtype)],
        params_size: std::mem::size_of::<StateParams>() as u64,
        bindings: vec![
            Binding::read(Buf::Operand(0)),
            Binding::write(Buf::State(name.to_string())),
        ],
    }]
}

pub(super) fn bind(
    node: &NodeView<'_>,
    name: &str,
    axis: usize,
    offset: &Offset,
    run: &RunValues<'_>,
) -> Result<Go> {
    let off = match offset {
        Offset::Fixed(n) => *n,
        Offset::Sym(s) => run.bindings.get(s)?,
    };
    let (state, value) = (node.shape, node.input(0).1);
    if off
        .checked_add(value[axis])
        .is_none_or(|end| end > state[axis])
    {
        return Err(Error::StateWriteOutOfRange {
            name: name.to_string(),
            axis,
            offset: off,
            len: value[axis],
            size: state[axis],
        });
    }
    let elements = super::count(value);
    if elements == 0 {
        return Ok(Go::Skip);
    }
    let dtype = node.dtype;
    let outer: usize = state[..axis].iter().product();
    let inner: usize = state[axis + 1..].iter().product();
    let (sl, sp, _) = geometry(dtype, state);
    let (vl, vp, _) = geometry(dtype, value);
    // Words one outer index's written range can touch: its elements, the pad of every row it
    // crosses, and a partial word at each end.
    let per_outer = value[axis] * inner;
    let per = if dtype.size_of() == 2 { 2 } else { 1 };
    let span = (per_outer + (per_outer / sl.max(1) + 1) * (sp - sl)) / per + 2;
    let (g, row_words) = grid((outer * span) as u32);
    let p = StateParams {
        s_len: state[axis] as u32,
        v_len: value[axis] as u32,
        inner: inner as u32,
        offset: off as u32,
        outer: outer as u32,
        span: span as u32,
        s_last: sl as u32,
        s_pitch: sp as u32,
        v_last: vl as u32,
        v_pitch: vp as u32,
        row_words,
        pad: 0,
    };
    Ok(Go::Dispatch {
        class: 0,
        params: bytemuck::bytes_of(&p).to_vec(),
        grid: g,
        state_elements: elements as u64,
    })
}
