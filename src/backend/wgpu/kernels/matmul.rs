//! Batched matmul (matmul.wgsl, matmul_cpu.wgsl, matmul_sg.wgsl): the params uniform, tile
//! configurations per adapter class, the kernel classes chosen per run from the bound sizes, and
//! a transposed weight over the binding limit bound in row ranges, one launch per range.

use bytemuck::{Pod, Zeroable};

use super::{Binding, Buf, Class, Go, Launch, NodeView, RunValues, fits, matvec};
use crate::backend::wgpu::context::{PRELUDE, PipelineKey, Shader};
use crate::backend::wgpu::layout::{code, device_bytes, geometry};
use crate::dtype::DType;
use crate::shape::broadcast_strides;

pub(super) const PARAMS: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/shaders/matmul_params.wgsl"
));

pub(crate) static TILED: Shader = Shader {
    name: "matmul",
    parts: &[
        PRELUDE,
        PARAMS,
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/matmul.wgsl")),
    ],
    subgroups: false,
};

pub(crate) static VECTORISED: Shader = Shader {
    name: "matmul_cpu",
    parts: &[
        PRELUDE,
        PARAMS,
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/shaders/matmul_cpu.wgsl"
        )),
    ],
    subgroups: false,
};

pub(crate) static SUBGROUP: Shader = Shader {
    name: "matmul_sg",
    parts: &[
        PRELUDE,
        PARAMS,
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/shaders/matmul_sg.wgsl"
        )),
    ],
    subgroups: true,
};

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
struct Tiles {
    wx: u32,
    wy: u32,
    bk: u32,
    /// The adapter has exactly 8-wide subgroups: the direct variant may use matmul_sg.wgsl.
    sg8: bool,
}

impl Tiles {
    /// The direct (CPU-adapter) variant with `wg` invocations per workgroup.
    fn direct(wg: u32) -> Tiles {
        Tiles {
            wx: 0,
            wy: wg,
            bk: 1,
            sg8: false,
        }
    }

    fn is_direct(self) -> bool {
        self.wx == 0
    }

    /// Invocations per workgroup.
    fn invocations(self) -> u32 {
        if self.is_direct() {
            self.wy
        } else {
            self.wx * self.wy
        }
    }

    fn bm(self) -> u32 {
        self.wy * 4
    }
    fn bn(self) -> u32 {
        self.wx * 4
    }
}

fn matmul_key(
    tiles: Tiles,
    a: DType,
    b: DType,
    out: DType,
    aligned: bool,
    sr: bool,
) -> PipelineKey {
    if tiles.is_direct() {
        return PipelineKey {
            shader: &TILED,
            entry: "matmul_direct",
            constants: cpu_constants(tiles, a, b, out, sr),
        };
    }
    PipelineKey {
        shader: &TILED,
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
            ("ROUND", super::round_code(out, sr)),
        ],
    }
}

/// The vectorised CPU-adapter kernel (matmul_cpu.wgsl) for untransposed operands whose K and N
/// are multiples of 4 (f32) or 8 (16-bit).
fn matmul_vec_key(tiles: Tiles, a: DType, b: DType, out: DType, sr: bool) -> PipelineKey {
    PipelineKey {
        shader: &VECTORISED,
        entry: "matmul_v8",
        constants: cpu_constants(tiles, a, b, out, sr),
    }
}

/// Bytes of one stored row of `k` elements of `dtype` (with the 16-bit pitch).
fn row_bytes(dtype: DType, k: usize) -> usize {
    geometry(dtype, &[k]).1 * dtype.size_of()
}

/// Rows of a transposed matmul weight `[N, K]` per binding when it exceeds `limit` bytes: the
/// most that fit, even (whole output words for 16-bit), with byte offsets that are multiples of
/// `align`. `None` when not even two rows fit.
fn split_rows(dtype: DType, k: usize, n: usize, limit: u64, align: u64) -> Option<usize> {
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
        ("ROUND", super::round_code(out, sr)),
    ]
}

/// The f32 subgroup kernel of matmul_sg.wgsl (8-wide subgroups only).
fn matmul_sg_key(tiles: Tiles, a: DType, b: DType, out: DType, sr: bool) -> PipelineKey {
    PipelineKey {
        shader: &SUBGROUP,
        entry: "matmul_sg4",
        constants: cpu_constants(tiles, a, b, out, sr),
    }
}

/// Kernel classes of a matmul node: [general, aligned (GPU tiles) or vectorised (CPU adapter),
/// subgroup (CPU adapter with 8-wide subgroups; the general kernel elsewhere), matrix-vector].
const CLASS_GENERAL: usize = 0;
const CLASS_ALIGNED: usize = 1;
const CLASS_SUBGROUP: usize = 2;
const CLASS_MATVEC: usize = 3;

/// Params, grid and alignment class of a matmul; `None` grid when there is nothing to compute.
#[allow(clippy::too_many_arguments)]
fn matmul_params(
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
    if let Some(rows) = matvec::rows(sa, sb, so, ta, tb) {
        // Decode: the batch folds into R ≤ 4 contiguous rows of one matrix.
        let groups = n.div_ceil(matvec::columns_per_group(
            tiles.is_direct(),
            tiles.invocations(),
        ));
        if groups <= 65535 {
            p.nb = 0;
            p.m = rows as u32;
            return (p, [groups as u32, 1, 1], CLASS_MATVEC);
        }
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

/// Tile shape per adapter class.
fn tiles_for(class: &Class) -> Tiles {
    if class.cpu {
        // matmul_sg.wgsl's unrolled broadcasts assume exactly 8 lanes: any other subgroup size
        // (lavapipe at LP_NATIVE_VECTOR_WIDTH=128 has 4) takes the direct kernel.
        return Tiles {
            sg8: class.subgroups == Some((8, 8)),
            ..Tiles::direct(64)
        };
    }
    if class.max_invocations >= 256 && class.workgroup_bytes >= 16 * 1024 {
        Tiles {
            wx: 16,
            wy: 16,
            bk: 16,
            sg8: false,
        }
    } else {
        Tiles {
            wx: 8,
            wy: 8,
            bk: 8,
            sg8: false,
        }
    }
}

/// The candidate kernels of a matmul node, in class order.
fn keys(tiles: Tiles, a: DType, b: DType, o: DType, sr: bool) -> Vec<PipelineKey> {
    let general = matmul_key(tiles, a, b, o, false, sr);
    // CPU adapters: the "aligned" class is the vectorised 16-bit kernel of matmul_cpu.wgsl
    // (f32 keeps the direct kernel for both classes).
    let aligned = if tiles.is_direct() && o.size_of() == 2 {
        matmul_vec_key(tiles, a, b, o, sr)
    } else if tiles.is_direct() {
        general.clone()
    } else {
        matmul_key(tiles, a, b, o, true, sr)
    };
    let subgroup = if tiles.sg8 && o == DType::F32 {
        matmul_sg_key(tiles, a, b, o, sr)
    } else {
        general.clone()
    };
    let matvec = matvec::key(tiles.is_direct(), tiles.invocations(), a, b, o, sr);
    vec![general, aligned, subgroup, matvec]
}

pub(super) fn all_keys() -> Vec<PipelineKey> {
    let configs = [
        Tiles {
            wx: 16,
            wy: 16,
            bk: 16,
            sg8: false,
        },
        Tiles {
            wx: 8,
            wy: 8,
            bk: 8,
            sg8: false,
        },
        Tiles::direct(64),
        Tiles {
            sg8: true,
            ..Tiles::direct(64)
        },
    ];
    let mut out: Vec<PipelineKey> = Vec::new();
    for sr in [false, true] {
        for d in DType::FLOATS {
            for tiles in configs {
                for k in keys(tiles, d, d, d, sr) {
                    if !out.contains(&k) {
                        out.push(k);
                    }
                }
            }
        }
    }
    out
}

/// Rows per binding when operand b (a transposed, fixed-shape rank-2 weight) is over the
/// binding limit.
fn split(node: &NodeView<'_>, class: &Class, transpose_b: bool) -> Option<usize> {
    let (bd, bs) = node.input(1);
    if !transpose_b || bs.len() != 2 || device_bytes(bd, bs) <= class.binding_limit {
        return None;
    }
    split_rows(bd, bs[1], bs[0], class.binding_limit, class.offset_align)
}

/// The chunks (first row, rows) of a split weight of `n` rows, last first: each launch writes
/// only its own columns, so the order does not matter, and running them backwards proves it.
fn chunks(n: usize, rows: usize) -> Vec<(usize, usize)> {
    let mut v: Vec<(usize, usize)> = (0..n)
        .step_by(rows)
        .map(|n0| (n0, rows.min(n - n0)))
        .collect();
    v.reverse();
    v
}

pub(super) fn supports(node: &NodeView<'_>, class: &Class) -> Result<(), String> {
    let d = node.shape;
    if d.len() > 6 || node.inputs.iter().any(|(_, s)| s.len() > 6) {
        return Err("matmul with more than 4 batch dimensions".to_string());
    }
    // Every grid dimension stays under the 65535-workgroup limit (the smallest tiles cover 4
    // rows and 4 columns; the batch is the z dimension).
    let (m, cols) = (d[d.len() - 2], d[d.len() - 1]);
    let batch: usize = d[..d.len() - 2].iter().product();
    if m.div_ceil(4) > 65535 || cols.div_ceil(4) > 65535 || batch > 65535 {
        return Err(format!(
            "matmul output {} over the dispatch grid limits",
            crate::shape::fmt_dims(d)
        ));
    }
    let tb = matches!(
        node.op,
        crate::ir::Op::MatMul {
            transpose_b: true,
            ..
        }
    );
    // A transposed rank-2 weight of fixed shape may exceed the limit: it is bound in row
    // ranges, one launch each (settled decision 5).
    let may_split =
        if node.fixed.get(1).copied().unwrap_or(false) && split(node, class, tb).is_some() {
            vec![1]
        } else {
            vec![]
        };
    fits(node, class, &may_split)
}

pub(super) fn plan(node: &NodeView<'_>, class: &Class, transpose_b: bool) -> Vec<Launch> {
    let (a, b) = (node.input(0).0, node.input(1).0);
    let keys = keys(tiles_for(class), a, b, node.dtype, node.sr());
    let launch = |range| Launch {
        keys: keys.clone(),
        params_size: std::mem::size_of::<MatmulParams>() as u64,
        bindings: vec![
            Binding::read(Buf::Operand(0)),
            Binding {
                range,
                ..Binding::read(Buf::Operand(1))
            },
            Binding::write(Buf::Out),
        ],
    };
    match split(node, class, transpose_b) {
        None => vec![launch(None)],
        Some(rows) => {
            let (bd, bs) = node.input(1);
            let row = row_bytes(bd, bs[1]) as u64;
            chunks(bs[0], rows)
                .into_iter()
                .map(|(n0, nc)| launch(Some((n0 as u64 * row, (nc as u64 * row).div_ceil(4) * 4))))
                .collect()
        }
    }
}

pub(super) fn bind(
    node: &NodeView<'_>,
    class: &Class,
    (ta, tb): (bool, bool),
    launches: usize,
    run: &RunValues<'_>,
) -> Vec<Go> {
    let out = (node.dtype, node.shape);
    if super::count(out.1) == 0 {
        return (0..launches).map(|_| Go::Skip).collect();
    }
    let tiles = tiles_for(class);
    let (a, b) = (node.input(0), node.input(1));
    let Some(rows) = split(node, class, tb) else {
        let (p, g, class) = matmul_params(tiles, a, b, out, ta, tb, run.keys, None);
        return vec![Go::new(class, &p, g)];
    };
    // Weight [N, K] bound `rows` rows at a time (fixed shape: the same chunks as at compile);
    // each launch fills its columns.
    chunks(b.1[0], rows)
        .into_iter()
        .map(|(n0, nc)| {
            let chunk = [nc, b.1[1]];
            let (p, g, class) = matmul_params(
                tiles,
                a,
                (b.0, &chunk),
                out,
                ta,
                tb,
                run.keys,
                Some((n0, nc)),
            );
            Go::new(class, &p, g)
        })
        .collect()
}
