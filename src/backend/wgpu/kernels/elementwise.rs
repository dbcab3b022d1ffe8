//! Unary and binary elementwise ops with numpy broadcasting (elementwise.wgsl): one invocation
//! per output word, f32 compute, the store encoded with integer bit operations.

use bytemuck::{Pod, Zeroable};

use super::{
    Binding, Buf, Class, Go, Launch, NodeView, RunValues, WG, fill8, fits, grid, words_of,
};
use crate::backend::wgpu::context::{PRELUDE, PipelineKey, Shader};
use crate::backend::wgpu::layout::{code, geometry};
use crate::dtype::DType;
use crate::ir::{BinaryOp, UnaryOp};
use crate::shape::broadcast_strides;

pub(crate) static SHADER: Shader = Shader {
    name: "elementwise",
    parts: &[
        PRELUDE,
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/shaders/elementwise.wgsl"
        )),
    ],
    subgroups: false,
};

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

/// Which entry point.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Kind {
    Unary(UnaryOp),
    Binary(BinaryOp),
    /// The cast family's general kernel (`convert`).
    Convert,
}

pub(crate) fn key(kind: Kind, a: DType, b: DType, out: DType, sr: bool) -> PipelineKey {
    // The `OP` codes of elementwise.wgsl's `unary_op` and `binary_op` switches.
    let (entry, op) = match kind {
        Kind::Unary(u) => (
            "unary",
            match u {
                UnaryOp::Neg => 0,
                UnaryOp::Exp => 1,
                UnaryOp::Sqrt => 2,
                UnaryOp::Rsqrt => 3,
                UnaryOp::Tanh => 4,
                UnaryOp::Gelu => 5,
                UnaryOp::Silu => 6,
                UnaryOp::Relu => 7,
                UnaryOp::Erf => 8,
                UnaryOp::GeluErf => 9,
            },
        ),
        Kind::Binary(o) => (
            "binary",
            match o {
                BinaryOp::Add => 0,
                BinaryOp::Sub => 1,
                BinaryOp::Mul => 2,
                BinaryOp::Div => 3,
                BinaryOp::Max => 4,
            },
        ),
        Kind::Convert => ("convert", 0),
    };
    PipelineKey {
        shader: &SHADER,
        entry,
        constants: vec![
            ("DT_A", code(a)),
            ("DT_B", code(b)),
            ("DT_OUT", code(out)),
            ("OP", op),
            ("WG", WG),
            ("ROUND", super::round_code(out, sr)),
        ],
    }
}

pub(super) fn all_keys() -> Vec<PipelineKey> {
    let mut keys = Vec::new();
    for sr in [false, true] {
        for d in DType::FLOATS {
            for u in UnaryOp::ALL {
                keys.push(key(Kind::Unary(u), d, d, d, sr));
            }
            for b in BinaryOp::ALL {
                keys.push(key(Kind::Binary(b), d, d, d, sr));
            }
        }
    }
    keys
}

pub(super) fn supports(node: &NodeView<'_>, class: &Class) -> Result<(), String> {
    fits(node, class, &[])
}

/// Bindings: a, b (a again for unary ops and casts), out.
pub(super) fn bindings(binary: bool) -> Vec<Binding> {
    vec![
        Binding::read(Buf::Operand(0)),
        Binding::read(Buf::Operand(usize::from(binary))),
        Binding::write(Buf::Out),
    ]
}

pub(super) fn plan(node: &NodeView<'_>, kind: Kind) -> Vec<Launch> {
    let a = node.input(0).0;
    let (b, binary) = match kind {
        Kind::Binary(_) => (node.input(1).0, true),
        Kind::Unary(_) | Kind::Convert => (a, false),
    };
    vec![Launch {
        keys: vec![key(kind, a, b, node.dtype, node.sr())],
        params_size: std::mem::size_of::<EwParams>() as u64,
        bindings: bindings(binary),
    }]
}

pub(super) fn bind(node: &NodeView<'_>, run: &RunValues<'_>) -> Go {
    if super::count(node.shape) == 0 {
        return Go::Skip;
    }
    let b = node.inputs.get(1).copied();
    let (p, g) = params(node.input(0), b, (node.dtype, node.shape), run.keys);
    Go::new(0, &p, g)
}

/// Params and grid for out = f(a, b), `b` absent for unary ops and casts.
pub(super) fn params(
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
