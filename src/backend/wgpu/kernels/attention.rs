//! Fused attention (attention.wgsl): an online softmax over key tiles, f32 accumulation, the
//! scores never in device memory. Two kernel classes, chosen per adapter class as matmul's are:
//!
//! - CPU-emulated adapters (`class.cpu`, lavapipe and llvmpipe by default) run `attn_rows`: one
//!   invocation per query row, no workgroup memory or barriers (a barrier splits a lavapipe
//!   shader into coroutines), keys walked in steps of 8 with workgroup-uniform key/value
//!   addresses, so the emulator loads each once per SIMD batch instead of once per lane;
//! - GPUs (and lavapipe/llvmpipe under `POLYTENSOR_KERNELS=gpu`) run `attn_tiles`: a workgroup of
//!   64 per (query block, head, batch) with the q block and each key/value tile in workgroup
//!   memory, in three tile classes by head dim (D ≤ 64, ≤ 128, ≤ 256), each under 16 KiB of
//!   workgroup memory (WebGPU's minimum). No subgroup operations: correct at any subgroup size
//!   and on GL as is.
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

pub(crate) static SHADER: Shader = Shader {
    name: "attention",
    parts: &[
        PRELUDE,
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/shaders/attention.wgsl"
        )),
    ],
    subgroups: false,
};

/// `attn_split` (attention_split.wgsl): split-K decode, partial softmaxes into a scratch buffer.
pub(crate) static SPLIT: Shader = Shader {
    name: "attention_split",
    parts: &[
        PRELUDE,
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
    pad: [u32; 3],
}

/// attention_split.wgsl's `Params`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct SplitParams {
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
    splits: u32,
    chunk: u32,
    blocks: u32,
    row_groups: u32,
    ka: u32,
    kb: u32,
    pad: [u32; 2],
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
    if class.cpu
        || sq > SPLIT_SQ
        || d > MAX_D
        || class.workgroup_bytes < 5120
        || class.max_invocations < 64
    {
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

/// Which kernel a node runs: `None` is `attn_rows`.
fn tiles_for(class: &Class, d: usize) -> Option<Tiles> {
    if class.cpu { None } else { Tiles::for_dim(d) }
}

fn key(tiles: Option<Tiles>, x: DType, out: DType, sr: bool) -> PipelineKey {
    let mut constants = vec![
        ("DT_IN", code(x)),
        ("DT_OUT", code(out)),
        ("ROUND", super::round_code(out, sr)),
    ];
    match tiles {
        None => {
            constants.push(("SWG", SWG));
            PipelineKey {
                shader: &SHADER,
                entry: "attn_rows",
                constants,
            }
        }
        Some(t) => {
            constants.extend([
                ("BQ", t.bq),
                ("BK", t.bk),
                ("DMAX", t.dmax),
                ("Q_TILE", t.bq * t.dmax),
                ("KV_TILE", t.bk * t.dmax),
                ("S_TILE", t.bq * t.bk),
            ]);
            PipelineKey {
                shader: &SHADER,
                entry: "attn_tiles",
                constants,
            }
        }
    }
}

pub(super) fn all_keys() -> Vec<PipelineKey> {
    let mut keys = Vec::new();
    for sr in [false, true] {
        for d in DType::FLOATS {
            keys.push(key(None, d, d, sr));
            for t in TILES {
                keys.push(key(Some(t), d, d, sr));
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
    if let Some(t) = tiles_for(class, d)
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
    let lengths = Buf::Operand(if *padding { 3 } else { 0 });
    if let Some(bytes) = split_scratch(q, class) {
        return Ok(vec![
            Launch {
                keys: vec![split_key(x)],
                params_size: std::mem::size_of::<SplitParams>() as u64,
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
    let d = q.get(3).copied().unwrap_or(0);
    Ok(vec![Launch {
        keys: vec![key(tiles_for(class, d), x, node.dtype, node.sr())],
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
    let padding = u32::from(matches!(node.op, Op::Attention { padding: true, .. }));
    let in_pitch = geometry(xd, q).1 as u32;
    let out_pitch = geometry(node.dtype, node.shape).1 as u32;
    if launches == 2 {
        let (splits, chunk) = split_chunks(g.keys);
        let blocks = u32::try_from(splits * g.hq * g.b).map_err(|_| Error::InvalidArgument {
            op: "attention",
            msg: format!(
                "{splits} key chunks of {} heads over the dispatch limit",
                g.hq * g.b
            ),
        })?;
        let (grid, row_groups) = fold(blocks);
        let p = SplitParams {
            hq: g.hq as u32,
            hkv: g.hkv as u32,
            sq: g.sq as u32,
            skv: g.skv as u32,
            d: g.d as u32,
            in_pitch,
            out_pitch,
            keys: g.keys as u32,
            off: g.off as u32,
            causal: u32::from(g.causal),
            padding,
            scale: g.scale as f32,
            splits: splits as u32,
            chunk: chunk as u32,
            blocks,
            row_groups,
            ka: run.keys[0],
            kb: run.keys[1],
            pad: [0; 2],
        };
        let words = super::words_of(node.dtype, node.shape);
        let (mgrid, per_row) = super::grid_of(words, 256);
        let m = MergeParams {
            d: g.d as u32,
            out_pitch,
            splits: splits as u32,
            words,
            row_groups: per_row,
            ka: run.keys[0],
            kb: run.keys[1],
            pad: 0,
        };
        return Ok(vec![Go::new(0, &p, grid), Go::new(0, &m, mgrid)]);
    }
    one(class, run, &g, (in_pitch, out_pitch, padding)).map(|g| vec![g])
}

/// The one launch of the single-kernel classes.
fn one(
    class: &Class,
    run: &RunValues<'_>,
    g: &Geometry,
    (in_pitch, out_pitch, padding): (u32, u32, u32),
) -> Result<Go> {
    let tiles = tiles_for(class, g.d);
    let bq = tiles.map_or(SWG, |t| t.bq);
    let qblocks = g.sq.div_ceil(bq as usize);
    let blocks = qblocks * g.hq * g.b;
    let blocks = u32::try_from(blocks).map_err(|_| Error::InvalidArgument {
        op: "attention",
        msg: format!("{blocks} workgroups over the dispatch limit"),
    })?;
    let (grid, row_groups) = fold(blocks);
    let p = AttentionParams {
        hq: g.hq as u32,
        hkv: g.hkv as u32,
        sq: g.sq as u32,
        skv: g.skv as u32,
        d: g.d as u32,
        in_pitch,
        out_pitch,
        keys: g.keys as u32,
        off: g.off as u32,
        causal: u32::from(g.causal),
        padding,
        scale: g.scale as f32,
        qblocks: qblocks as u32,
        blocks,
        row_groups,
        ka: run.keys[0],
        kb: run.keys[1],
        pad: [0; 3],
    };
    Ok(Go::new(0, &p, grid))
}
