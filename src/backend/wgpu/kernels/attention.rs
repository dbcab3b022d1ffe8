//! Fused attention: an online softmax over key tiles, f32 accumulation, the scores never in
//! device memory. Kernel classes, chosen per adapter class as matmul's are (measured on
//! lavapipe, causal 1×8×512×64: `attn_rows` 145 ms, `attn_sg` 12.6 ms):
//!
//! - CPU-emulated adapters (`class.cpu`, lavapipe and llvmpipe by default), head dims of whole
//!   16-byte units in every float dtype (D a multiple of 8) with the output in the input's
//!   dtype: `attn_sg` (attention_sg.wgsl) where subgroups are exactly 8 wide, each lane reading
//!   one unit in eight of every K/V row and sharing it with subgroupBroadcast; else `attn_v4`
//!   (attention_cpu.wgsl), every lane reading whole K/V rows as vec4<u32> units for 4 query rows
//!   at once — but not on GL (`class.compile_lock`: llvmpipe's GL compiler takes seconds over
//!   its unrolled slabs while wgpu holds the context lock). Both keep q and the accumulators in
//!   registers and rescale once per 8 keys.
//! - Other head dims on those adapters: `attn_rows` (attention.wgsl), one invocation per query
//!   row, no workgroup memory or barriers (a barrier splits a lavapipe shader into coroutines),
//!   keys walked in steps of 8 with workgroup-uniform key/value addresses, so the emulator loads
//!   each once per SIMD batch instead of once per lane;
//! - GPUs (and lavapipe/llvmpipe under `POLYTENSOR_KERNELS=gpu`) run `attn_tiles`: a workgroup of
//!   64 per (query block, head, batch) with the q block and each key/value tile in workgroup
//!   memory, in three tile classes by head dim (D ≤ 64, ≤ 128, ≤ 256), each under 16 KiB of
//!   workgroup memory (WebGPU's minimum). No subgroup operations: correct at any subgroup size
//!   and on GL as is.
//! - Decode, at most 4 query rows per head (`SPLIT_SQ`), where the choice above is `attn_tiles`
//!   or `attn_rows`: split-K in two launches. `attn_split` (attention_split.wgsl) cuts the keys
//!   into up to 32 chunks of at least 256, one workgroup of 64 per (chunk, head, batch row), and
//!   writes each chunk's partial softmax (max, sum, unnormalised accumulator) to a scratch
//!   buffer of the node; `attn_merge` (attention_merge.wgsl) rescales and combines them, one
//!   invocation per output word. One query row alone cannot fill a GPU; this fills it with
//!   chunks.
//!
//! The geometry (keys read, the causal diagonal, the error past Skv) is the CPU's
//! [`Geometry`], so both backends accept and refuse the same runs.

use bytemuck::{Pod, Zeroable};

use super::{Binding, Buf, Class, Go, Launch, NodeView, RunValues, fits, fold};
use crate::backend::cpu::attention::Geometry;
use crate::backend::wgpu::context::{PRELUDE, PipelineKey, Shader};
use crate::backend::wgpu::layout::{code, geometry};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ir::Op;

const COMMON: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/shaders/attention_common.wgsl"
));
const UNITS: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/shaders/attention_cpu.wgsl"
));

pub(crate) static SHADER: Shader = Shader {
    name: "attention",
    parts: &[
        PRELUDE,
        COMMON,
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/shaders/attention.wgsl"
        )),
    ],
    subgroups: false,
};

/// `attn_v4` (attention_cpu.wgsl).
pub(crate) static VECTORISED: Shader = Shader {
    name: "attention_cpu",
    parts: &[PRELUDE, COMMON, UNITS],
    subgroups: false,
};

/// `attn_sg` (attention_sg.wgsl, after attention_cpu.wgsl's helpers).
pub(crate) static SUBGROUP: Shader = Shader {
    name: "attention_sg",
    parts: &[
        PRELUDE,
        COMMON,
        UNITS,
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/shaders/attention_sg.wgsl"
        )),
    ],
    subgroups: true,
};

/// `attn_split` (attention_split.wgsl): split-K decode, partial softmaxes into a scratch buffer.
pub(crate) static SPLIT: Shader = Shader {
    name: "attention_split",
    parts: &[
        PRELUDE,
        COMMON,
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/shaders/attention_split.wgsl"
        )),
    ],
    subgroups: false,
};

/// `attn_merge` (attention_merge.wgsl): the partials of each row combined into the output.
pub(crate) static MERGE: Shader = Shader {
    name: "attention_merge",
    parts: &[
        PRELUDE,
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/shaders/attention_merge.wgsl"
        )),
    ],
    subgroups: false,
};

/// The largest head dim the kernels take (the CPU runs larger ones).
pub(crate) const MAX_D: usize = 256;
/// Query rows per workgroup of `attn_rows`.
const SWG: u32 = 16;
/// Invocations per workgroup of `attn_tiles` (attention.wgsl's `GWG`).
const GWG: u32 = 64;

/// attention.wgsl's `Params`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct AttentionParams {
    hq: u32,
    hkv: u32,
    sq: u32,
    skv: u32,
    d: u32,
    in_pitch: u32,
    out_pitch: u32,
    keys: u32,
    off: u32,
    causal: u32,
    padding: u32,
    scale: f32,
    qblocks: u32,
    blocks: u32,
    row_groups: u32,
    ka: u32,
    kb: u32,
    /// attention_cpu.wgsl's keys per softmax step (its `CK`), passed at run time.
    step: u32,
    /// attention_split.wgsl's keys per chunk (`qblocks` is its chunk count).
    chunk: u32,
    pad: u32,
}

/// attention_merge.wgsl's `Params`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct MergeParams {
    d: u32,
    out_pitch: u32,
    splits: u32,
    words: u32,
    row_groups: u32,
    ka: u32,
    kb: u32,
    pad: u32,
}

/// Split-K decode (attention_split.wgsl): query rows per head it takes (its `SQMAX`), its
/// workgroup size and keys per tile (`GS`), the most key chunks per head, and the fewest keys per
/// chunk (below that, another chunk costs more in its fixed work than it gains).
const SPLIT_SQ: usize = 4;
const SPLIT_GS: usize = 64;
const MAX_SPLITS: usize = 32;
const MIN_CHUNK: usize = 256;

/// Scratch bytes of split-K decode for q `[B, Hq, Sq, D]` (at the symbols' maxima), when the node
/// takes it: at most `SPLIT_SQ` query rows per head (decode and short appends), and the
/// partials of `MAX_SPLITS` chunks within one binding.
fn split_scratch(q: &[usize], class: &Class) -> Option<u64> {
    let [b, hq, sq, d] = *q else {
        return None;
    };
    // attention_split.wgsl's workgroup: 64 invocations, 5 KiB of workgroup memory.
    if sq > SPLIT_SQ || d > MAX_D || class.workgroup_bytes < 5120 || class.max_invocations < 64 {
        return None;
    }
    let bytes = (b * hq * sq * MAX_SPLITS * (d + 2) * 4) as u64;
    (bytes <= class.binding_limit).then_some(bytes)
}

/// Key chunks of a split-K run over `keys` keys: (chunks, keys per chunk, a multiple of the tile).
fn split_chunks(keys: usize) -> (usize, usize) {
    let splits = keys.div_ceil(MIN_CHUNK).clamp(1, MAX_SPLITS);
    let chunk = keys.div_ceil(splits).div_ceil(SPLIT_GS).max(1) * SPLIT_GS;
    (keys.div_ceil(chunk).max(1), chunk)
}

fn split_key(x: DType) -> PipelineKey {
    PipelineKey {
        shader: &SPLIT,
        entry: "attn_split",
        constants: vec![("DT_IN", code(x))],
    }
}

fn merge_key(out: DType, sr: bool) -> PipelineKey {
    PipelineKey {
        shader: &MERGE,
        entry: "attn_merge",
        constants: vec![("DT_OUT", code(out)), ("ROUND", super::round_code(out, sr))],
    }
}

/// A tile class of `attn_tiles`: head dims up to `dmax`, `bq` query rows per workgroup (dividing
/// 64, with 64 / bq invocations per row owning `dmax / (2 · 64 / bq)` ≤ 16 column pairs each),
/// `bk` keys per tile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Tiles {
    dmax: u32,
    bq: u32,
    bk: u32,
}

const TILES: [Tiles; 3] = [
    Tiles {
        dmax: 64,
        bq: 16,
        bk: 32,
    },
    Tiles {
        dmax: 128,
        bq: 16,
        bk: 12,
    },
    Tiles {
        dmax: 256,
        bq: 8,
        bk: 6,
    },
];

impl Tiles {
    /// The smallest class holding head dim `d`.
    fn for_dim(d: usize) -> Option<Tiles> {
        TILES.into_iter().find(|t| d <= t.dmax as usize)
    }

    /// Workgroup memory: the q block, one key (then value) tile, the scores, two row vectors.
    fn workgroup_bytes(self) -> u32 {
        4 * (self.bq * self.dmax + self.bk * self.dmax + self.bq * self.bk + 2 * self.bq)
    }
}

/// Query rows per invocation of `attn_v4` and `attn_sg` (their `RW`), each a workgroup of 8
/// invocations (`LANES`).
const V4_ROWS: u32 = 4;
const SG_ROWS: u32 = 2;
/// attention_cpu.wgsl's `LANES`: units per slab, invocations per workgroup.
const LANES: u32 = 8;
/// The largest head dim `attn_v4` takes (4 slabs in f32, 2 in 16-bit): its compile time grows
/// with the unrolled slabs (over 4 s for 8 on one core). A head-dim rule, not a slab rule, so f32
/// and 16-bit storage of one head dim take the same kernel.
const V4_MAX_D: usize = 128;
/// attention_cpu.wgsl's `CK`.
const STEP: u32 = 8;

/// The kernel a node runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kernel {
    /// `attn_rows`: CPU-emulated adapters, any head dim.
    Rows,
    /// `attn_tiles`: GPUs.
    Tiles(Tiles),
    /// `attn_v4`: CPU-emulated adapters, head dims of whole 16-byte units (`slabs` slabs of 8).
    Units { slabs: u32 },
    /// `attn_sg`: the same with 8-wide subgroups.
    Subgroup { slabs: u32 },
    /// `attn_lse`: each row's log-sum-exp (`lse` attention), every adapter.
    Lse,
}

impl Kernel {
    /// Query rows per workgroup.
    fn block_rows(self) -> u32 {
        match self {
            Kernel::Rows | Kernel::Lse => SWG,
            Kernel::Tiles(t) => t.bq,
            Kernel::Units { .. } => LANES * V4_ROWS,
            Kernel::Subgroup { .. } => LANES * SG_ROWS,
        }
    }
}

/// Elements of dtype `x` in one 16-byte unit.
fn unit_elems(x: DType) -> usize {
    16 / x.size_of()
}

/// Slabs of 8 units holding head dim `d` of dtype `x`, when its rows are whole 16-byte units in
/// every float dtype (D a multiple of 8): f32 and 16-bit storage of one head dim then take the
/// same kernel, and its f32 arithmetic is the same in both (attention_cpu.wgsl `qk_unit`), so a
/// 16-bit store is exactly the rounding of the f32 program's output.
fn unit_slabs(x: DType, d: usize) -> Option<u32> {
    let e = unit_elems(x);
    (d > 0 && d.is_multiple_of(8) && d <= MAX_D).then(|| (d / e).div_ceil(LANES as usize) as u32)
}

/// The kernel of a node: on CPU-emulated adapters `attn_sg` where subgroups are exactly 8 wide
/// and the head dim is whole 16-byte units (and the output has the input's dtype), `attn_v4`
/// for such head dims elsewhere but on GL, else `attn_rows` (measured: see the module docs); the tiles on
/// GPUs. The head dim is fixed (the graph builder insists), so compile and every run agree and
/// one pipeline is built.
fn kernel_for(class: &Class, x: DType, out: DType, d: usize) -> Option<Kernel> {
    if !class.cpu {
        return Tiles::for_dim(d).map(Kernel::Tiles);
    }
    Some(match unit_slabs(x, d).filter(|_| x == out) {
        Some(slabs) if class.subgroups == Some((8, 8)) => Kernel::Subgroup { slabs },
        Some(slabs) if d <= V4_MAX_D && !class.compile_lock => Kernel::Units { slabs },
        Some(_) => Kernel::Rows,
        None => Kernel::Rows,
    })
}

/// The kernel of `node`: `attn_lse` for `lse` attention, else [`kernel_for`].
fn node_kernel(node: &NodeView<'_>, class: &Class, d: usize) -> Option<Kernel> {
    match node.op {
        Op::Attention { lse: true, .. } => Some(Kernel::Lse),
        _ => kernel_for(class, node.input(0).0, node.dtype, d),
    }
}

fn key(kernel: Kernel, x: DType, out: DType, sr: bool) -> PipelineKey {
    let mut constants = vec![("DT_IN", code(x))];
    // The log-sum-exp is f32 and never rounded: no output overrides.
    if kernel != Kernel::Lse {
        constants.extend([("DT_OUT", code(out)), ("ROUND", super::round_code(out, sr))]);
    }
    let (shader, entry, extra): (&'static Shader, &'static str, Vec<(&'static str, u32)>) =
        match kernel {
            Kernel::Rows => (&SHADER, "attn_rows", vec![("SWG", SWG)]),
            Kernel::Lse => (&SHADER, "attn_lse", vec![("SWG", SWG)]),
            Kernel::Tiles(t) => (
                &SHADER,
                "attn_tiles",
                vec![
                    ("BQ", t.bq),
                    ("BK", t.bk),
                    ("DMAX", t.dmax),
                    ("Q_TILE", t.bq * t.dmax),
                    ("KV_TILE", t.bk * t.dmax),
                    ("S_TILE", t.bq * t.bk),
                ],
            ),
            Kernel::Units { slabs } => (
                &VECTORISED,
                "attn_v4",
                vec![("NSLAB", slabs), ("RW", V4_ROWS)],
            ),
            Kernel::Subgroup { slabs } => (
                &SUBGROUP,
                "attn_sg",
                vec![("NSLAB", slabs), ("RW", SG_ROWS)],
            ),
        };
    constants.extend(extra);
    PipelineKey {
        shader,
        entry,
        constants,
    }
}

pub(super) fn all_keys() -> Vec<PipelineKey> {
    let mut keys: Vec<PipelineKey> = DType::FLOATS.into_iter().map(split_key).collect();
    for x in DType::FLOATS {
        keys.push(key(Kernel::Lse, x, DType::F32, false));
    }
    for sr in [false, true] {
        for x in DType::FLOATS {
            keys.push(merge_key(x, sr));
            keys.push(key(Kernel::Rows, x, x, sr));
            for t in TILES {
                keys.push(key(Kernel::Tiles(t), x, x, sr));
            }
            let most = unit_slabs(x, MAX_D).unwrap_or(0);
            for slabs in 1..=most {
                if slabs as usize * LANES as usize * unit_elems(x) <= V4_MAX_D {
                    keys.push(key(Kernel::Units { slabs }, x, x, sr));
                }
                keys.push(key(Kernel::Subgroup { slabs }, x, x, sr));
            }
        }
    }
    keys
}

pub(super) fn supports(node: &NodeView<'_>, class: &Class) -> std::result::Result<(), String> {
    let (q, k) = (node.input(0).1, node.input(1).1);
    if q.len() != 4 || k.len() != 4 {
        return Err("attention needs rank-4 q, k and v".to_string());
    }
    let d = q[3];
    if d > MAX_D {
        return Err(format!(
            "head dim {d} over the attention kernels' maximum {MAX_D}"
        ));
    }
    if let Some(t) = (!class.cpu).then(|| Tiles::for_dim(d)).flatten()
        && (t.workgroup_bytes() > class.workgroup_bytes || GWG > class.max_invocations)
    {
        return Err(format!(
            "attention tiles need {} bytes of workgroup memory and {GWG} invocations; the \
             adapter has {} and {}",
            t.workgroup_bytes(),
            class.workgroup_bytes,
            class.max_invocations
        ));
    }
    // Row and workgroup indices are u32 in the kernels.
    let rows = super::count(q).saturating_mul(2);
    if u32::try_from(rows).is_err() {
        return Err(format!(
            "attention q {} over the kernels' u32 indices",
            crate::shape::fmt_dims(q)
        ));
    }
    fits(node, class, &[])
}

/// Bindings: q, k, v, lengths (q again without padding), out.
pub(super) fn plan(node: &NodeView<'_>, class: &Class) -> Result<Vec<Launch>> {
    let Op::Attention { padding, .. } = node.op else {
        return Err(Error::InvalidGraph(format!(
            "{} is not attention",
            node.op.name()
        )));
    };
    let (x, q) = node.input(0);
    let d = q.get(3).copied().unwrap_or(0);
    let kernel = node_kernel(node, class, d)
        .ok_or_else(|| Error::InvalidGraph(format!("attention head dim {d} has no kernel")))?;
    let lengths = Buf::Operand(if *padding { 3 } else { 0 });
    // Split-K where it measured faster for a few query rows: on GPUs, and on CPU-emulated
    // adapters in place of `attn_rows` (lavapipe decode 9×3×2048×64: 24 ms against 39 ms;
    // `attn_sg` takes 2.5–2.9 ms).
    if matches!(kernel, Kernel::Rows | Kernel::Tiles(_))
        && let Some(bytes) = split_scratch(q, class)
    {
        return Ok(vec![
            Launch {
                keys: vec![split_key(x)],
                params_size: std::mem::size_of::<AttentionParams>() as u64,
                bindings: vec![
                    Binding::read(Buf::Operand(0)),
                    Binding::read(Buf::Operand(1)),
                    Binding::read(Buf::Operand(2)),
                    Binding::read(lengths),
                    Binding::write(Buf::Scratch(bytes)),
                ],
            },
            Launch {
                keys: vec![merge_key(node.dtype, node.sr())],
                params_size: std::mem::size_of::<MergeParams>() as u64,
                bindings: vec![Binding::read(Buf::Scratch(bytes)), Binding::write(Buf::Out)],
            },
        ]);
    }
    Ok(vec![Launch {
        keys: vec![key(kernel, x, node.dtype, node.sr())],
        params_size: std::mem::size_of::<AttentionParams>() as u64,
        bindings: vec![
            Binding::read(Buf::Operand(0)),
            Binding::read(Buf::Operand(1)),
            Binding::read(Buf::Operand(2)),
            Binding::read(lengths),
            Binding::write(Buf::Out),
        ],
    }])
}

/// One `Go` per planned launch: two for split-K decode (the plan chose it), else one.
pub(super) fn bind(
    node: &NodeView<'_>,
    class: &Class,
    launches: usize,
    run: &RunValues<'_>,
) -> Result<Vec<Go>> {
    let ((xd, q), (_, k)) = (node.input(0), node.input(1));
    // The same checks as the CPU (keys read past Skv is an Err), before anything is skipped.
    let g = Geometry::new(node.op, q, k, run.bindings)?;
    if super::count(node.shape) == 0 {
        return Ok((0..launches).map(|_| Go::Skip).collect());
    }
    let base = AttentionParams {
        hq: g.hq as u32,
        hkv: g.hkv as u32,
        sq: g.sq as u32,
        skv: g.skv as u32,
        d: g.d as u32,
        in_pitch: geometry(xd, q).1 as u32,
        out_pitch: geometry(node.dtype, node.shape).1 as u32,
        keys: g.keys as u32,
        off: g.off as u32,
        causal: u32::from(g.causal),
        padding: u32::from(matches!(node.op, Op::Attention { padding: true, .. })),
        scale: g.scale as f32,
        qblocks: 0,
        blocks: 0,
        row_groups: 0,
        ka: run.keys[0],
        kb: run.keys[1],
        step: STEP,
        chunk: 0,
        pad: 0,
    };
    // `groups` workgroups per (batch row, head): query blocks, or key chunks for split-K.
    let grid = |groups: usize| -> Result<([u32; 3], AttentionParams)> {
        let blocks = groups * g.hq * g.b;
        let blocks = u32::try_from(blocks).map_err(|_| Error::InvalidArgument {
            op: "attention",
            msg: format!("{blocks} workgroups over the dispatch limit"),
        })?;
        let (grid, row_groups) = fold(blocks);
        Ok((
            grid,
            AttentionParams {
                qblocks: groups as u32,
                blocks,
                row_groups,
                ..base
            },
        ))
    };
    if launches == 2 {
        let (splits, chunk) = split_chunks(g.keys);
        let (sgrid, p) = grid(splits)?;
        let p = AttentionParams {
            chunk: chunk as u32,
            ..p
        };
        let words = super::words_of(node.dtype, node.shape);
        let (mgrid, per_row) = super::grid_of(words, 256);
        let m = MergeParams {
            d: base.d,
            out_pitch: base.out_pitch,
            splits: splits as u32,
            words,
            row_groups: per_row,
            ka: run.keys[0],
            kb: run.keys[1],
            pad: 0,
        };
        return Ok(vec![Go::new(0, &p, sgrid), Go::new(0, &m, mgrid)]);
    }
    let Some(kernel) = node_kernel(node, class, g.d) else {
        return Err(Error::InvalidGraph(format!(
            "attention head dim {} has no kernel",
            g.d
        )));
    };
    // Whole units are an even count of elements: the pitch is the head dim.
    debug_assert!(
        matches!(kernel, Kernel::Rows | Kernel::Tiles(_) | Kernel::Lse)
            || base.in_pitch as usize == g.d
    );
    let (grid, p) = grid(g.sq.div_ceil(kernel.block_rows() as usize))?;
    Ok(vec![Go::new(0, &p, grid)])
}
