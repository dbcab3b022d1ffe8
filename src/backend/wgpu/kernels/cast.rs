//! Casts between dtypes (the `convert` entry of elementwise.wgsl, integer bits end to end), and
//! the vectorised 16-bit → f32 widen (widen.wgsl) for contiguous shapes, chosen per run.

use bytemuck::{Pod, Zeroable};

use super::elementwise::{self, Kind};
use super::{Class, Go, Launch, NodeView, RunValues, fits, grid_of};
use crate::backend::wgpu::context::{PRELUDE, PipelineKey, Shader};
use crate::backend::wgpu::layout::code;
use crate::dtype::DType;

pub(crate) static WIDEN: Shader = Shader {
    name: "widen",
    parts: &[
        PRELUDE,
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/widen.wgsl")),
    ],
    subgroups: false,
};

/// Invocations per workgroup of widen.wgsl.
const WIDEN_WG: u32 = 64;

/// widen.wgsl's `Params`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct WidenParams {
    count: u32,
    row_words: u32,
    pad: [u32; 2],
}

fn widen_key(from: DType) -> PipelineKey {
    PipelineKey {
        shader: &WIDEN,
        entry: "widen",
        constants: vec![("DT_A", code(from)), ("WG", WIDEN_WG)],
    }
}

/// Whether the cast can use widen.wgsl (16-bit → f32, even rows, a multiple of 8 elements).
fn widens(from: DType, to: DType, shape: &[usize]) -> bool {
    from.size_of() == 2
        && to == DType::F32
        && shape.last().is_some_and(|l| l % 2 == 0)
        && super::count(shape).is_multiple_of(8)
}

pub(super) fn all_keys() -> Vec<PipelineKey> {
    let mut keys = Vec::new();
    for sr in [false, true] {
        for from in DType::ALL {
            for to in DType::ALL {
                if from.is_float() == to.is_float() {
                    keys.push(elementwise::key(Kind::Convert, from, from, to, sr));
                }
            }
        }
    }
    keys.push(widen_key(DType::F16));
    keys.push(widen_key(DType::BF16));
    keys
}

pub(super) fn supports(node: &NodeView<'_>, class: &Class) -> Result<(), String> {
    let from = node.input(0).0;
    let to = node.dtype;
    if from.is_float() != to.is_float() {
        return Err(format!(
            "cast {from}→{to} between integer and float (WGSL's conversion may round either way)"
        ));
    }
    fits(node, class, &[])
}

pub(super) fn plan(node: &NodeView<'_>) -> Vec<Launch> {
    let from = node.input(0).0;
    let mut keys = vec![elementwise::key(
        Kind::Convert,
        from,
        from,
        node.dtype,
        node.sr(),
    )];
    if from.size_of() == 2 && node.dtype == DType::F32 {
        // Class 1: same bindings (widen.wgsl leaves binding 1 unused).
        keys.push(widen_key(from));
    }
    vec![Launch {
        keys,
        params_size: std::mem::size_of::<elementwise::EwParams>()
            .max(std::mem::size_of::<WidenParams>()) as u64,
        bindings: elementwise::bindings(false),
    }]
}

pub(super) fn bind(node: &NodeView<'_>, run: &RunValues<'_>) -> Go {
    let n = super::count(node.shape);
    if n == 0 {
        return Go::Skip;
    }
    let (from, shape) = node.input(0);
    if widens(from, node.dtype, shape) {
        let count = (n / 8) as u32;
        let (g, row_words) = grid_of(count, WIDEN_WG);
        let p = WidenParams {
            count,
            row_words,
            pad: [0; 2],
        };
        return Go::new(1, &p, g);
    }
    let (p, g) = elementwise::params(node.input(0), None, (node.dtype, node.shape), run.keys);
    Go::new(0, &p, g)
}
