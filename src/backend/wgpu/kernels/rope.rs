//! Rotary position embedding (rope.wgsl), one invocation per output word. The angles are reduced
//! exactly with integer arithmetic: each pair's frequency travels in the params as a 64-bit
//! fixed-point fraction of a turn, computed here in f64 (see the shader's header), and the first
//! position is a per-run value, so a decode step reuses the program.

use bytemuck::{Pod, Zeroable};

use super::{Binding, Buf, Class, Go, Launch, NodeView, RunValues, WG, fits, grid, words_of};
use crate::backend::wgpu::context::{PRELUDE, PipelineKey, Shader};
use crate::backend::wgpu::layout::{code, geometry};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ir::{Op, rope_first_position, rope_inv_freq};

pub(crate) static SHADER: Shader = Shader {
    name: "rope",
    parts: &[
        PRELUDE,
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/rope.wgsl")),
    ],
    subgroups: false,
};

/// Frequency pairs the params hold: rotary dims up to 256 (every head dim models use).
const MAX_PAIRS: usize = 128;

/// rope.wgsl's `Params`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct RopeParams {
    rows: u32,
    len: u32,
    x_pitch: u32,
    out_pitch: u32,
    seq: u32,
    first: u32,
    rot: u32,
    interleaved: u32,
    words: u32,
    row_words: u32,
    ka: u32,
    kb: u32,
    /// Pair i's G_i = f_i / 2π · 2⁶⁴ as (low, high) halves, two pairs per vec4.
    freq: [[u32; 4]; MAX_PAIRS / 2],
}

fn key(x: DType, out: DType, sr: bool) -> PipelineKey {
    PipelineKey {
        shader: &SHADER,
        entry: "rope",
        constants: vec![
            ("DT_X", code(x)),
            ("DT_OUT", code(out)),
            ("WG", WG),
            ("ROUND", super::round_code(out, sr)),
        ],
    }
}

pub(super) fn all_keys() -> Vec<PipelineKey> {
    let mut keys = Vec::new();
    for d in DType::FLOATS {
        for sr in [false, true] {
            keys.push(key(d, d, sr));
        }
    }
    keys
}

/// The op's attributes: (θ, rotary_dim, interleaved, offset).
fn attrs(op: &Op) -> Result<(f64, usize, bool, &crate::ir::Offset)> {
    match op {
        Op::Rope {
            theta,
            rotary_dim,
            interleaved,
            offset,
        } => Ok((*theta, *rotary_dim, *interleaved, offset)),
        other => Err(Error::InvalidGraph(format!("{} is not rope", other.name()))),
    }
}

pub(super) fn supports(node: &NodeView<'_>, class: &Class) -> std::result::Result<(), String> {
    let (_, rot, _, _) = attrs(node.op).map_err(|e| e.to_string())?;
    if rot > 2 * MAX_PAIRS {
        return Err(format!(
            "rotary_dim {rot} is over the rope kernel's {}",
            2 * MAX_PAIRS
        ));
    }
    fits(node, class, &[])
}

/// Bindings: x, out.
pub(super) fn plan(node: &NodeView<'_>) -> Vec<Launch> {
    vec![Launch {
        keys: vec![key(node.input(0).0, node.dtype, node.sr())],
        params_size: std::mem::size_of::<RopeParams>() as u64,
        bindings: vec![Binding::read(Buf::Operand(0)), Binding::write(Buf::Out)],
    }]
}

pub(super) fn bind(node: &NodeView<'_>, run: &RunValues<'_>) -> Result<Go> {
    let (theta, rot, interleaved, offset) = attrs(node.op)?;
    let (xd, xs) = node.input(0);
    let first = rope_first_position(offset, xs[2], run.bindings)?;
    if super::count(node.shape) == 0 {
        return Ok(Go::Skip);
    }
    let inv = rope_inv_freq(theta, rot);
    if inv.len() > MAX_PAIRS {
        return Err(Error::Unsupported(format!(
            "rope: rotary_dim {rot} is over the kernel's {}",
            2 * MAX_PAIRS
        )));
    }
    let mut freq = [[0u32; 4]; MAX_PAIRS / 2];
    for (i, f) in inv.iter().enumerate() {
        // f ≤ 1 (θ ≥ 1), so G < 2⁶² fits; the conversion truncates below 2⁻⁶⁴ of a turn.
        let g = (f / std::f64::consts::TAU * 2f64.powi(64)) as u64;
        let slot = &mut freq[i / 2][2 * (i % 2)..2 * (i % 2) + 2];
        slot[0] = g as u32;
        slot[1] = (g >> 32) as u32;
    }
    let (_, x_pitch, _) = geometry(xd, xs);
    let (_, out_pitch, _) = geometry(node.dtype, node.shape);
    let words = words_of(node.dtype, node.shape);
    let (g, row_words) = grid(words);
    let p = RopeParams {
        rows: super::count(&xs[..3]) as u32,
        len: xs[3] as u32,
        x_pitch: x_pitch as u32,
        out_pitch: out_pitch as u32,
        seq: xs[2] as u32,
        first: first as u32,
        rot: rot as u32,
        interleaved: u32::from(interleaved),
        words,
        row_words,
        ka: run.keys[0],
        kb: run.keys[1],
        freq,
    };
    Ok(Go::new(0, &p, g))
}
