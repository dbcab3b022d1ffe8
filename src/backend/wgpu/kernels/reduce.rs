//! Sum, max and mean over one axis (reduce.wgsl), accumulated in f32. GPUs get a workgroup tree
//! per output word (`reduce_tree`); CPU-emulated adapters, where a barrier splits the shader into
//! coroutines, get one invocation per output word (`reduce`).

use bytemuck::{Pod, Zeroable};

use super::{Binding, Buf, Class, Go, Launch, NodeView, RunValues, WG, fits, fold, grid, words_of};
use crate::backend::wgpu::context::{PRELUDE, PipelineKey, Shader};
use crate::backend::wgpu::layout::{code, geometry};
use crate::dtype::DType;
use crate::ir::ReduceOp;

pub(crate) static SHADER: Shader = Shader {
    name: "reduce",
    parts: &[
        PRELUDE,
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/reduce.wgsl")),
    ],
    subgroups: false,
};

/// Invocations per workgroup of the tree kernel.
const RWG: u32 = 64;
/// Shorter axes use the one-invocation kernel on GPUs too (a workgroup would mostly idle).
const TREE_MIN_LEN: usize = 32;

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

const CLASS_SERIAL: usize = 0;
const CLASS_TREE: usize = 1;

fn key(op: ReduceOp, x: DType, out: DType, sr: bool, tree: bool) -> PipelineKey {
    let op = match op {
        ReduceOp::Sum => 0,
        ReduceOp::Max => 1,
        ReduceOp::Mean => 2,
    };
    let mut constants = vec![
        ("DT_X", code(x)),
        ("DT_OUT", code(out)),
        ("OP", op),
        ("ROUND", super::round_code(out, sr)),
    ];
    if tree {
        constants.push(("RWG", RWG));
    } else {
        constants.push(("WG", WG));
    }
    PipelineKey {
        shader: &SHADER,
        entry: if tree { "reduce_tree" } else { "reduce" },
        constants,
    }
}

pub(super) fn all_keys() -> Vec<PipelineKey> {
    let mut keys = Vec::new();
    for sr in [false, true] {
        for d in DType::FLOATS {
            for r in [ReduceOp::Sum, ReduceOp::Max, ReduceOp::Mean] {
                for tree in [false, true] {
                    keys.push(key(r, d, d, sr, tree));
                }
            }
        }
    }
    keys
}

pub(super) fn supports(node: &NodeView<'_>, class: &Class) -> Result<(), String> {
    fits(node, class, &[])
}

pub(super) fn plan(node: &NodeView<'_>, class: &Class, op: ReduceOp) -> Vec<Launch> {
    let x = node.input(0).0;
    let mut keys = vec![key(op, x, node.dtype, node.sr(), false)];
    if !class.cpu {
        keys.push(key(op, x, node.dtype, node.sr(), true));
    }
    vec![Launch {
        keys,
        params_size: std::mem::size_of::<ReduceParams>() as u64,
        bindings: vec![Binding::read(Buf::Operand(0)), Binding::write(Buf::Out)],
    }]
}

pub(super) fn bind(node: &NodeView<'_>, class: &Class, axis: usize, run: &RunValues<'_>) -> Go {
    let out = (node.dtype, node.shape);
    if super::count(out.1) == 0 {
        return Go::Skip;
    }
    let (xd, xs) = node.input(0);
    let outer: usize = xs[..axis].iter().product();
    let inner: usize = xs[axis + 1..].iter().product();
    let (xl, xp, _) = geometry(xd, xs);
    let (ol, op, _) = geometry(out.0, out.1);
    let words = words_of(out.0, out.1);
    let tree = !class.cpu && xs[axis] >= TREE_MIN_LEN;
    // The tree kernel: one workgroup per word; the serial one: one invocation per word.
    let (g, row_words) = if tree { fold(words) } else { grid(words) };
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
        ka: run.keys[0],
        kb: run.keys[1],
        pad: 0,
    };
    Go::new(if tree { CLASS_TREE } else { CLASS_SERIAL }, &p, g)
}
