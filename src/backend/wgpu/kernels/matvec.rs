//! Decode's matrix-vector class of the matmul family (matvec.wgsl): `a [R, K] · bᵀ` for R ≤ 4
//! rows against a rank-2 `[N, K]` weight, any storage dtype, read as stored. The matmul planner
//! picks it per run (`CLASS_MATVEC`) with the params of matmul_params.wgsl; this file holds the
//! shader, its eligibility rule, its grid and its pipeline key.

use crate::backend::wgpu::context::{PRELUDE, PipelineKey, Shader};
use crate::backend::wgpu::layout::code;
use crate::dtype::DType;

pub(crate) static MATVEC: Shader = Shader {
    name: "matvec",
    parts: &[
        PRELUDE,
        super::matmul::PARAMS,
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/matvec.wgsl")),
    ],
    subgroups: false,
};

/// Invocations sharing one column in matvec.wgsl's `matvec_wg` (its `MV_LANES`).
const MV_LANES: u32 = 32;

/// matvec.wgsl for `a [R, K] · bᵀ` (R ≤ 4 rows with the batch folded in) against a rank-2 weight
/// `b [N, K]`: K a multiple of 8 and N even (whole 8-element units, whole output words), `a`
/// not broadcast over the batch. Returns the folded row count, or `None` for other matmuls.
pub(super) fn rows(a: &[usize], b: &[usize], out: &[usize], ta: bool, tb: bool) -> Option<usize> {
    let r = out.len();
    let batch = &out[..r - 2];
    let rows = batch.iter().product::<usize>() * out[r - 2];
    let k = b.get(1).copied()?;
    let a_whole = a.len() == r && a[..r - 2] == *batch;
    (!ta && tb
        && b.len() == 2
        && a_whole
        && (1..=4).contains(&rows)
        && k.is_multiple_of(8)
        && out[r - 1].is_multiple_of(2))
    .then_some(rows)
}

/// Output columns per workgroup of `wg` invocations: two per invocation for `matvec_lanes`
/// (CPU-side adapters, `direct`), one per `MV_LANES` invocations for `matvec_wg`.
pub(super) fn columns_per_group(direct: bool, wg: u32) -> usize {
    if direct {
        2 * wg as usize
    } else {
        (wg / MV_LANES) as usize
    }
}

/// The pipeline key: `matvec_lanes` on CPU-side adapters (`direct`), `matvec_wg` elsewhere.
pub(super) fn key(direct: bool, wg: u32, a: DType, b: DType, out: DType, sr: bool) -> PipelineKey {
    PipelineKey {
        shader: &MATVEC,
        entry: if direct { "matvec_lanes" } else { "matvec_wg" },
        constants: vec![
            ("DT_A", code(a)),
            ("DT_B", code(b)),
            ("DT_OUT", code(out)),
            ("DWG", wg),
            ("MV_LANES", MV_LANES),
            ("ROUND", super::round_code(out, sr)),
        ],
    }
}
