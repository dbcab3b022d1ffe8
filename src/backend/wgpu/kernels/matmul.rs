//! Host side of the matmul kernels (matmul.wgsl, matmul_cpu.wgsl, matmul_sg.wgsl): the params
//! uniform, tile configurations per adapter class, kernel classes and the split of a weight over
//! several bindings.

use bytemuck::{Pod, Zeroable};

use super::super::context::{PipelineKey, Shader};
use super::super::layout::{code, geometry};
use super::round_code;
use crate::shape::broadcast_strides;
use crate::dtype::DType;

/// matmul.wgsl's `Params`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct MatmulParams {
    bdims: [u32; 4],
    sa: [u32; 4],
    sb: [u32; 4],
    nb: u32,
    m: u32,
    n: u32,
    k: u32,
    a_pitch: u32,
    b_pitch: u32,
    out_pitch: u32,
    ta: u32,
    tb: u32,
    ka: u32,
    kb: u32,
    n_off: u32,
    n_total: u32,
    pad: [u32; 3],
}

/// Tile configuration of the matmul kernel for one adapter class. `wx == 0` selects the
/// direct variant for CPU-emulated adapters (no workgroup memory; `wy` invocations per group).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Tiles {
    pub wx: u32,
    pub wy: u32,
    pub bk: u32,
    /// The adapter has 8-wide subgroups: the direct variant may use matmul_sg.wgsl.
    pub sg8: bool,
}

impl Tiles {
    /// The direct (CPU-adapter) variant with `wg` invocations per workgroup.
    pub(crate) fn direct(wg: u32) -> Tiles {
        Tiles {
            wx: 0,
            wy: wg,
            bk: 1,
            sg8: false,
        }
    }

    pub(crate) fn is_direct(self) -> bool {
        self.wx == 0
    }

    fn bm(self) -> u32 {
        self.wy * 4
    }
    fn bn(self) -> u32 {
        self.wx * 4
    }
}

pub(crate) fn matmul_key(
    tiles: Tiles,
    a: DType,
    b: DType,
    out: DType,
    aligned: bool,
    sr: bool,
) -> PipelineKey {
    if tiles.is_direct() {
        return PipelineKey {
            shader: Shader::Matmul,
            entry: "matmul_direct",
            constants: cpu_constants(tiles, a, b, out, sr),
        };
    }
    PipelineKey {
        shader: Shader::Matmul,
        entry: "matmul",
        constants: vec![
            ("DT_A", code(a)),
            ("DT_B", code(b)),
            ("DT_OUT", code(out)),
            ("WX", tiles.wx),
            ("WY", tiles.wy),
            ("BK", tiles.bk),
            ("BM", tiles.bm()),
            ("BN", tiles.bn()),
            ("A_TILE", tiles.bm() * tiles.bk),
            ("B_TILE", tiles.bn() * tiles.bk),
            ("ALIGNED", u32::from(aligned)),
            ("ROUND", round_code(out, sr)),
        ],
    }
}

/// The vectorised CPU-adapter kernel (matmul_cpu.wgsl) for untransposed operands whose K and N
/// are multiples of 4 (f32) or 8 (16-bit).
pub(crate) fn matmul_vec_key(
    tiles: Tiles,
    a: DType,
    b: DType,
    out: DType,
    sr: bool,
) -> PipelineKey {
    PipelineKey {
        shader: Shader::MatmulCpu,
        entry: "matmul_v8",
        constants: cpu_constants(tiles, a, b, out, sr),
    }
}

/// Bytes of one stored row of `k` elements of `dtype` (with the 16-bit pitch).
pub(crate) fn row_bytes(dtype: DType, k: usize) -> usize {
    geometry(dtype, &[k]).1 * dtype.size_of()
}

/// Rows of a transposed matmul weight `[N, K]` per binding when it exceeds `limit` bytes: the
/// most that fit, even (whole output words for 16-bit), with byte offsets that are multiples of
/// `align`. `None` when not even two rows fit.
pub(crate) fn split_rows(
    dtype: DType,
    k: usize,
    n: usize,
    limit: u64,
    align: u64,
) -> Option<usize> {
    let row = row_bytes(dtype, k) as u64;
    let mut rows = (limit / row.max(1)).min(n as u64);
    while rows >= 2 && (!rows.is_multiple_of(2) || !(rows * row).is_multiple_of(align)) {
        rows -= 1;
    }
    (rows >= 2).then_some(rows as usize)
}

/// Rows per workgroup of matmul_sg.wgsl (its `SG_ROWS`).
const SG_ROWS: usize = 16;

/// The override constants of the CPU-adapter kernels (direct, vectorised, subgroup).
fn cpu_constants(
    tiles: Tiles,
    a: DType,
    b: DType,
    out: DType,
    sr: bool,
) -> Vec<(&'static str, u32)> {
    vec![
        ("DT_A", code(a)),
        ("DT_B", code(b)),
        ("DT_OUT", code(out)),
        ("DWG", tiles.wy),
        ("ROUND", round_code(out, sr)),
    ]
}

/// The f32 subgroup kernel of matmul_sg.wgsl (8-wide subgroups only).
pub(crate) fn matmul_sg_key(tiles: Tiles, a: DType, b: DType, out: DType, sr: bool) -> PipelineKey {
    PipelineKey {
        shader: Shader::MatmulSg,
        entry: "matmul_sg4",
        constants: cpu_constants(tiles, a, b, out, sr),
    }
}

/// Kernel classes of a matmul node: [general, aligned (GPU tiles) or vectorised (CPU adapter),
/// subgroup (CPU adapter with 8-wide subgroups)].
pub(crate) const CLASS_GENERAL: usize = 0;
pub(crate) const CLASS_ALIGNED: usize = 1;
pub(crate) const CLASS_SUBGROUP: usize = 2;

/// Params, grid and alignment class of a matmul; `None` grid when there is nothing to compute.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_params(
    tiles: Tiles,
    a: (DType, &[usize]),
    b: (DType, &[usize]),
    out: (DType, &[usize]),
    ta: bool,
    tb: bool,
    keys: [u32; 2],
    split: Option<(usize, usize)>,
) -> (MatmulParams, [u32; 3], usize) {
    let (sa, sb, so) = (a.1, b.1, out.1);
    let r = so.len();
    // A split launch computes `n` = its chunk's columns from `n_off` of the full output.
    let (n_off, n) = split.unwrap_or((0, so[r - 1]));
    let m = so[r - 2];
    let k = if ta {
        sa[sa.len() - 2]
    } else {
        sa[sa.len() - 1]
    };
    let batch = &so[..r - 2];
    let nb: usize = batch.iter().product();
    let stride_a = broadcast_strides(&sa[..sa.len() - 2], batch);
    let stride_b = broadcast_strides(&sb[..sb.len() - 2], batch);
    let mut p = MatmulParams {
        bdims: [1; 4],
        sa: [0; 4],
        sb: [0; 4],
        nb: batch.len() as u32,
        m: m as u32,
        n: n as u32,
        k: k as u32,
        a_pitch: geometry(a.0, sa).1 as u32,
        b_pitch: geometry(b.0, sb).1 as u32,
        out_pitch: geometry(out.0, so).1 as u32,
        ta: u32::from(ta),
        tb: u32::from(tb),
        ka: keys[0],
        kb: keys[1],
        n_off: n_off as u32,
        n_total: so[r - 1] as u32,
        pad: [0; 3],
    };
    for (d, &x) in batch.iter().enumerate() {
        p.bdims[d] = x as u32;
        p.sa[d] = stride_a[d] as u32;
        p.sb[d] = stride_b[d] as u32;
    }
    if tiles.is_direct() && split.is_some() {
        let wg = tiles.wy as usize;
        let g = [n.div_ceil(4 * wg) as u32, m.div_ceil(8) as u32, nb as u32];
        return (p, g, CLASS_GENERAL);
    }
    if tiles.is_direct() {
        let wg = tiles.wy as usize;
        // 16-bit: the vectorised kernel (one 16-byte load = 8 elements) wins; f32: the direct
        // kernel's 8×4 block measured faster than 16-byte loads on lavapipe.
        let lanes = if out.0.size_of() == 2 { 8 } else { 4 };
        let g = [
            (n / lanes).div_ceil(wg) as u32,
            m.div_ceil(4) as u32,
            nb as u32,
        ];
        // Measured on lavapipe at n = 1024 (best of 4, alternating runs): f32 124–146 ms with
        // matmul_sg4 (16 rows) vs 214–234 ms with the direct kernel. 16-bit matmuls there are
        // widened to f32 first (133 ms in all, vs 180 ms bf16 / 273 ms f16 with 16-bit kernels).
        // f32 needs at least 16 rows (SG_ROWS), or the block would mostly idle.
        if tiles.sg8
            && out.0 == DType::F32
            && !ta
            && !tb
            && k % 32 == 0
            && n % 4 == 0
            && m >= SG_ROWS
        {
            let g = [
                (n / 4).div_ceil(wg) as u32,
                m.div_ceil(SG_ROWS) as u32,
                nb as u32,
            ];
            return (p, g, CLASS_SUBGROUP);
        }
        // matmul_cpu.wgsl: one invocation per 8 columns of 4 rows.
        if lanes == 8 && !ta && !tb && k % lanes == 0 && n % lanes == 0 {
            return (p, g, CLASS_ALIGNED);
        }
        // Each workgroup covers 8 rows × 4·wg columns.
        let g = [n.div_ceil(4 * wg) as u32, m.div_ceil(8) as u32, nb as u32];
        return (p, g, CLASS_GENERAL);
    }
    let (bm, bn) = (tiles.bm() as usize, tiles.bn() as usize);
    let aligned = split.is_none() && m % bm == 0 && n % bn == 0 && k % tiles.bk as usize == 0;
    let g = [n.div_ceil(bn) as u32, m.div_ceil(bm) as u32, nb as u32];
    (
        p,
        g,
        if aligned {
            CLASS_ALIGNED
        } else {
            CLASS_GENERAL
        },
    )
}
