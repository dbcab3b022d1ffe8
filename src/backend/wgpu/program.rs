//! A graph compiled for one wgpu device: buffers planned once at the symbols' maxima with
//! liveness-based reuse, pipelines built once (`run.rs` runs it).

use std::sync::Arc;

use super::context::{Ctx, Pipeline};
use super::kernels::{self, Ew, Tiles};
use super::layout::{device_bytes, to_device};
use crate::dtype::{DType, Rounding};
use crate::error::{Error, Result};
use crate::ir::{Graph, Op};
use crate::tensor::Storage;

/// Where a node's value lives during a run.
#[derive(Clone, Debug)]
pub(super) enum Slot {
    /// Nothing reads it.
    None,
    /// A buffer of the program.
    Buf(usize),
    /// A session weight, bound directly.
    Weight(String),
    /// A session state, bound directly (no later write in this graph changes it).
    State(String),
}

pub(super) enum Step {
    /// Write an input into its buffer (before the command buffer runs).
    Upload { node: usize, name: String },
    /// Copy a state into the node's buffer (a snapshot, since a later write changes it).
    Snapshot { node: usize, name: String },
    /// One kernel launch.
    Kernel {
        node: usize,
        /// The pipeline for each kernel class (kernels::CLASS_*).
        pipelines: Vec<Arc<Pipeline>>,
        /// One params buffer per launch (several when a weight is split over bindings).
        params: Vec<wgpu::Buffer>,
        /// Rows of the (transposed) matmul weight per binding, when it exceeds the limit.
        split: Option<usize>,
    },
}

pub(crate) struct WgpuProgram {
    pub(super) ctx: Arc<Ctx>,
    pub(super) graph: Graph,
    pub(super) slots: Vec<Slot>,
    pub(super) bufs: Vec<wgpu::Buffer>,
    pub(super) steps: Vec<Step>,
    /// Readback buffer of each graph output.
    pub(super) staging: Vec<wgpu::Buffer>,
    pub(super) tiles: Tiles,
    /// Held from submit until the outputs are read: one set of buffers serves one run at a time.
    pub(super) running: std::sync::Mutex<()>,
}

/// Tile shape per adapter class.
fn tiles_for(ctx: &Ctx) -> Tiles {
    if ctx.software {
        return Tiles {
            sg8: ctx.subgroup8,
            ..Tiles::direct(64)
        };
    }
    let max = ctx.limits.max_compute_invocations_per_workgroup;
    if max >= 256 && ctx.limits.max_compute_workgroup_storage_size >= 16 * 1024 {
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

fn pipelines_for(
    ctx: &Ctx,
    graph: &Graph,
    i: usize,
    tiles: Tiles,
) -> Result<Option<Vec<Arc<Pipeline>>>> {
    let node = &graph.nodes()[i];
    let dt = |j: usize| graph.nodes()[node.inputs[j].0].dtype;
    let sr = matches!(node.rounding, Rounding::Stochastic { .. });
    let key = match &node.op {
        Op::Unary(u) => kernels::elementwise_key(Ew::Unary(*u), dt(0), dt(0), node.dtype, sr),
        Op::Binary(b) => kernels::elementwise_key(Ew::Binary(*b), dt(0), dt(1), node.dtype, sr),
        Op::Cast { .. } if dt(0).size_of() == 2 && node.dtype == DType::F32 => {
            // Class 1: the vectorised widen for contiguous shapes (chosen per run).
            let general = ctx.pipeline(&kernels::elementwise_key(
                Ew::Cast,
                dt(0),
                dt(0),
                node.dtype,
                sr,
            ))?;
            let widen = ctx.pipeline(&kernels::widen_key(dt(0)))?;
            return Ok(Some(vec![general, widen]));
        }
        Op::Cast { .. } => kernels::elementwise_key(Ew::Cast, dt(0), dt(0), node.dtype, sr),
        Op::Reduce { op, .. } => kernels::reduce_key(*op, dt(0), node.dtype, sr),
        Op::WriteState { .. } => kernels::state_key(node.dtype),
        Op::MatMul { .. } => {
            let (a, b, o) = (dt(0), dt(1), node.dtype);
            let general = ctx.pipeline(&kernels::matmul_key(tiles, a, b, o, false, sr))?;
            // CPU adapters: the "aligned" class is the vectorised 16-bit kernel of
            // matmul_cpu.wgsl (f32 keeps the direct kernel for both classes).
            let aligned = if tiles.is_direct() && o.size_of() == 2 {
                ctx.pipeline(&kernels::matmul_vec_key(tiles, a, b, o, sr))?
            } else if tiles.is_direct() {
                general.clone()
            } else {
                ctx.pipeline(&kernels::matmul_key(tiles, a, b, o, true, sr))?
            };
            let subgroup = if tiles.sg8 && o == DType::F32 {
                ctx.pipeline(&kernels::matmul_sg_key(tiles, a, b, o, sr))?
            } else {
                general.clone()
            };
            return Ok(Some(vec![general, aligned, subgroup]));
        }
        Op::Input { .. } | Op::Weight { .. } | Op::State { .. } | Op::Constant { .. } => {
            return Ok(None);
        }
    };
    Ok(Some(vec![ctx.pipeline(&key)?]))
}

/// The program's buffers, with best-fit reuse of released ones.
#[derive(Default)]
struct BufPool {
    bufs: Vec<wgpu::Buffer>,
    sizes: Vec<u64>,
    free: Vec<usize>,
}

impl BufPool {
    fn pinned(&mut self, buf: wgpu::Buffer, bytes: u64) -> usize {
        self.bufs.push(buf);
        self.sizes.push(bytes);
        self.bufs.len() - 1
    }

    fn alloc(&mut self, ctx: &Ctx, bytes: u64) -> Result<usize> {
        let best = self
            .free
            .iter()
            .enumerate()
            .filter(|(_, b)| self.sizes[**b] >= bytes)
            .min_by_key(|(_, b)| self.sizes[**b])
            .map(|(k, _)| k);
        if let Some(k) = best {
            return Ok(self.free.swap_remove(k));
        }
        Ok(self.pinned(ctx.storage(bytes, "intermediate")?, bytes))
    }

    fn release(&mut self, b: usize) {
        if !self.free.contains(&b) {
            self.free.push(b);
        }
    }
}

impl WgpuProgram {
    pub(crate) fn new(ctx: Arc<Ctx>, graph: &Graph, binding_limit: u64) -> Result<WgpuProgram> {
        let nodes = graph.nodes();
        let n = nodes.len();
        let tiles = tiles_for(&ctx);
        let mut last_use: Vec<usize> = (0..n).collect();
        for (i, node) in nodes.iter().enumerate() {
            for j in &node.inputs {
                last_use[j.0] = i;
            }
        }
        for (_, id) in graph.outputs() {
            last_use[id.0] = usize::MAX;
        }
        let written_after = |name: &str, i: usize| {
            nodes[i + 1..]
                .iter()
                .any(|m| matches!(&m.op, Op::WriteState { name: w, .. } if w == name))
        };
        let mut slots = vec![Slot::None; n];
        let mut pool = BufPool::default();
        let mut steps = Vec::new();
        for (i, node) in nodes.iter().enumerate() {
            let bytes = device_bytes(node.dtype, &node.shape.max_dims());
            let used = last_use[i] > i;
            match &node.op {
                Op::Input { name } => {
                    slots[i] = Slot::Buf(pool.pinned(ctx.storage(bytes, name)?, bytes));
                    steps.push(Step::Upload {
                        node: i,
                        name: name.clone(),
                    });
                }
                Op::Weight { name } => slots[i] = Slot::Weight(name.clone()),
                Op::State { name } => {
                    if written_after(name, i) && used {
                        let b = pool.alloc(&ctx, bytes)?;
                        slots[i] = Slot::Buf(b);
                        steps.push(Step::Snapshot {
                            node: i,
                            name: name.clone(),
                        });
                    } else {
                        slots[i] = Slot::State(name.clone());
                    }
                }
                Op::Constant { values } => {
                    let dims = node.shape.max_dims();
                    let count: usize = dims.iter().product();
                    let v: Vec<f32> = if values.len() == 1 {
                        vec![values[0] as f32; count]
                    } else {
                        values.iter().map(|&x| x as f32).collect()
                    };
                    let storage = Storage::from_f32(node.dtype, v);
                    let image = to_device(storage.as_ref(), &dims);
                    let buf = ctx.storage(bytes, "constant")?;
                    if !image.is_empty() {
                        ctx.queue.write_buffer(&buf, 0, &image);
                    }
                    slots[i] = Slot::Buf(pool.pinned(buf, bytes));
                }
                Op::WriteState { name, .. } => {
                    let pipelines = pipelines_for(&ctx, graph, i, tiles)?.ok_or_else(|| {
                        Error::InvalidGraph("write_state without a kernel".to_string())
                    })?;
                    steps.push(Step::Kernel {
                        node: i,
                        pipelines,
                        params: vec![
                            ctx.uniform(std::mem::size_of::<kernels::StateParams>() as u64),
                        ],
                        split: None,
                    });
                    if used {
                        let b = pool.alloc(&ctx, bytes)?;
                        slots[i] = Slot::Buf(b);
                        steps.push(Step::Snapshot {
                            node: i,
                            name: name.clone(),
                        });
                    }
                }
                Op::MatMul { .. }
                | Op::Unary(_)
                | Op::Binary(_)
                | Op::Reduce { .. }
                | Op::Cast { .. } => {
                    let pipelines = pipelines_for(&ctx, graph, i, tiles)?
                        .ok_or_else(|| Error::InvalidGraph("op without a kernel".to_string()))?;
                    let b = pool.alloc(&ctx, bytes)?;
                    slots[i] = Slot::Buf(b);
                    let psize = match &node.op {
                        // Room for either the cast or the widen params.
                        Op::Cast { .. } => std::mem::size_of::<kernels::EwParams>(),
                        Op::MatMul { .. } => std::mem::size_of::<kernels::MatmulParams>(),
                        Op::Reduce { .. } => std::mem::size_of::<kernels::ReduceParams>(),
                        _ => std::mem::size_of::<kernels::EwParams>(),
                    };
                    // A transposed weight over the binding limit: bound in row ranges, one launch
                    // per range (supports() accepted it only when such a split exists).
                    let split = match &node.op {
                        Op::MatMul {
                            transpose_b: true, ..
                        } => {
                            let b = &nodes[node.inputs[1].0];
                            let dims = b.shape.max_dims();
                            let bytes = device_bytes(b.dtype, &dims);
                            if bytes > binding_limit && dims.len() == 2 {
                                let align =
                                    u64::from(ctx.limits.min_storage_buffer_offset_alignment);
                                kernels::split_rows(b.dtype, dims[1], dims[0], binding_limit, align)
                            } else {
                                None
                            }
                        }
                        _ => None,
                    };
                    let launches = match split {
                        Some(rows) => nodes[node.inputs[1].0].shape.max_dims()[0].div_ceil(rows),
                        None => 1,
                    };
                    steps.push(Step::Kernel {
                        node: i,
                        pipelines,
                        params: (0..launches).map(|_| ctx.uniform(psize as u64)).collect(),
                        split,
                    });
                }
            }
            // Operands whose last reader is this node give their buffers back (after this
            // node's output was allocated, so a kernel never reads and writes one buffer).
            for j in &node.inputs {
                if last_use[j.0] == i
                    && let Slot::Buf(b) = slots[j.0]
                    && !matches!(nodes[j.0].op, Op::Input { .. } | Op::Constant { .. })
                {
                    pool.release(b);
                }
            }
        }
        let staging = graph
            .outputs()
            .iter()
            .map(|(_, id)| {
                let node = &nodes[id.0];
                ctx.staging(device_bytes(node.dtype, &node.shape.max_dims()))
            })
            .collect();
        ctx.check()?;
        Ok(WgpuProgram {
            ctx,
            graph: graph.clone(),
            slots,
            bufs: pool.bufs,
            steps,
            staging,
            tiles,
            running: std::sync::Mutex::new(()),
        })
    }
}
