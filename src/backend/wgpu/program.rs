//! A graph compiled for one wgpu device: buffers planned once at the symbols' maxima with
//! liveness-based reuse, pipelines built once, and per run only params writes, bind groups and
//! dispatches — all kernels in one command buffer, outputs read back at the end.

use std::sync::Arc;

use super::WgpuBuffer;
use super::context::{Ctx, Pipeline};
use super::kernels::{self, Ew, Tiles};
use super::layout::{device_bytes, from_device, to_device};
use crate::backend::{DeviceBuffer, Pending, Program, RunArgs};
use crate::dtype::{DType, Rounding};
use crate::error::{Error, Result};
use crate::ir::{Graph, Offset, Op};
use crate::shape::Bindings;
use crate::tensor::{Storage, Tensor};

/// Where a node's value lives during a run.
#[derive(Clone, Debug)]
enum Slot {
    /// Nothing reads it.
    None,
    /// A buffer of the program.
    Buf(usize),
    /// A session weight, bound directly.
    Weight(String),
    /// A session state, bound directly (no later write in this graph changes it).
    State(String),
}

enum Step {
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
    ctx: Arc<Ctx>,
    graph: Graph,
    slots: Vec<Slot>,
    bufs: Vec<wgpu::Buffer>,
    steps: Vec<Step>,
    /// Readback buffer of each graph output.
    staging: Vec<wgpu::Buffer>,
    tiles: Tiles,
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
            let subgroup = if tiles.sg8 && o == DType::F16 {
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
        })
    }

    fn buffer<'a>(&'a self, node: usize, args: &RunArgs<'a>) -> Result<&'a wgpu::Buffer> {
        let from = |buf: Option<&'a Arc<dyn DeviceBuffer>>,
                    kind: &str,
                    name: &str|
         -> Result<&'a wgpu::Buffer> {
            let buf = buf.ok_or_else(|| Error::Device {
                device: self.ctx.name.clone(),
                msg: format!("{kind} `{name}` missing"),
            })?;
            buf.as_any()
                .downcast_ref::<WgpuBuffer>()
                .map(|b| &b.buffer)
                .ok_or_else(|| Error::Device {
                    device: self.ctx.name.clone(),
                    msg: format!("{kind} `{name}` lives on another device"),
                })
        };
        match &self.slots[node] {
            Slot::Buf(b) => Ok(&self.bufs[*b]),
            Slot::Weight(name) => from(args.weights.get(name), "weight", name),
            Slot::State(name) => from(args.states.get(name), "state", name),
            Slot::None => Err(Error::InvalidGraph(format!("%{node} has no buffer"))),
        }
    }

    /// Params bytes, grid and alignment class of kernel `i` under `shapes`; `None` when the
    /// output is empty (nothing to dispatch).
    fn launch(
        &self,
        i: usize,
        shapes: &[Vec<usize>],
        bindings: &Bindings,
        seed: u64,
        counter: u64,
        split: Option<usize>,
    ) -> Result<Vec<Launch>> {
        let node = &self.graph.nodes()[i];
        let ins: Vec<(DType, &[usize])> = node
            .inputs
            .iter()
            .map(|j| (self.graph.nodes()[j.0].dtype, shapes[j.0].as_slice()))
            .collect();
        let out = (node.dtype, shapes[i].as_slice());
        let keys = match node.rounding {
            Rounding::Stochastic { stream } => crate::rng::sr_keys(seed, stream, counter),
            Rounding::NearestEven => [0, 0],
        };
        let count = |s: &[usize]| s.iter().product::<usize>();
        let r = match &node.op {
            Op::WriteState { axis, offset, name } => {
                let off = match offset {
                    Offset::Fixed(n) => *n,
                    Offset::Sym(s) => bindings.get(s)?,
                };
                let (state, value) = (out.1, ins[0].1);
                if off + value[*axis] > state[*axis] {
                    return Err(Error::StateWriteOutOfRange {
                        name: name.clone(),
                        axis: *axis,
                        offset: off,
                        len: value[*axis],
                        size: state[*axis],
                    });
                }
                if count(value) == 0 {
                    return Ok(vec![]);
                }
                let (p, g) = kernels::state_params(node.dtype, state, value, *axis, off);
                (bytemuck::bytes_of(&p).to_vec(), g, 0, None)
            }
            _ if count(out.1) == 0 => return Ok(vec![]),
            Op::MatMul {
                transpose_a,
                transpose_b,
            } => {
                let (ta, tb) = (*transpose_a, *transpose_b);
                let Some(rows) = split else {
                    let (p, g, class) =
                        kernels::matmul_params(self.tiles, ins[0], ins[1], out, ta, tb, keys, None);
                    return Ok(vec![(bytemuck::bytes_of(&p).to_vec(), g, class, None)]);
                };
                // Weight [N, K] bound `rows` rows at a time; each launch fills its columns.
                let (bd, bs) = ins[1];
                let row_bytes = (kernels::row_bytes(bd, bs[1])) as u64;
                let mut launches = Vec::new();
                for n0 in (0..bs[0]).step_by(rows) {
                    let nc = rows.min(bs[0] - n0);
                    let chunk = [nc, bs[1]];
                    let (p, g, class) = kernels::matmul_params(
                        self.tiles,
                        ins[0],
                        (bd, &chunk),
                        out,
                        ta,
                        tb,
                        keys,
                        Some((n0, nc)),
                    );
                    let range = (
                        n0 as u64 * row_bytes,
                        (nc as u64 * row_bytes).div_ceil(4) * 4,
                    );
                    launches.push((bytemuck::bytes_of(&p).to_vec(), g, class, Some(range)));
                }
                return Ok(launches);
            }
            Op::Unary(_) | Op::Cast { .. } => {
                let (p, g) = kernels::elementwise_params(ins[0], None, out, keys);
                (bytemuck::bytes_of(&p).to_vec(), g, 0, None)
            }
            Op::Binary(_) => {
                let (p, g) = kernels::elementwise_params(ins[0], Some(ins[1]), out, keys);
                (bytemuck::bytes_of(&p).to_vec(), g, 0, None)
            }
            Op::Reduce { axis, .. } => {
                let (p, g) = kernels::reduce_params(ins[0], out, *axis, keys);
                (bytemuck::bytes_of(&p).to_vec(), g, 0, None)
            }
            Op::Input { .. } | Op::Weight { .. } | Op::State { .. } | Op::Constant { .. } => {
                return Ok(vec![]);
            }
        };
        Ok(vec![r])
    }
}

/// One kernel launch of a run: params bytes, grid, kernel class, and the byte range of operand
/// b to bind (a split weight), else all of it.
type Launch = (Vec<u8>, [u32; 3], usize, Option<(u64, u64)>);

struct WgpuPending<'a> {
    program: &'a WgpuProgram,
    shapes: Vec<Vec<usize>>,
}

impl Pending for WgpuPending<'_> {
    fn wait(self: Box<Self>) -> Result<Vec<Tensor>> {
        let p = self.program;
        let outs = p.graph.outputs();
        let reads: Vec<(&wgpu::Buffer, u64)> = outs
            .iter()
            .zip(&p.staging)
            .map(|((_, id), st)| {
                let node = &p.graph.nodes()[id.0];
                let n: usize = self.shapes[id.0].iter().product();
                let bytes = if n == 0 {
                    0
                } else {
                    device_bytes(node.dtype, &self.shapes[id.0])
                };
                (st, bytes)
            })
            .collect();
        let data = p.ctx.read_back(&reads)?;
        outs.iter()
            .zip(data)
            .map(|((_, id), bytes)| {
                from_device(&bytes, p.graph.nodes()[id.0].dtype, &self.shapes[id.0])
            })
            .collect()
    }
}

impl Program for WgpuProgram {
    fn submit<'a>(&'a self, args: RunArgs<'a>) -> Result<Box<dyn Pending + 'a>> {
        let ctx = &self.ctx;
        let nodes = self.graph.nodes();
        let shapes: Vec<Vec<usize>> = nodes
            .iter()
            .map(|n| n.shape.resolve(args.bindings))
            .collect::<Result<_>>()?;
        let mut enc = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("run") });
        for step in &self.steps {
            match step {
                Step::Upload { node, name } => {
                    let view = args.inputs.get(name).ok_or_else(|| Error::MissingInput {
                        name: name.clone(),
                        shape: nodes[*node].shape.to_string(),
                        dtype: nodes[*node].dtype,
                    })?;
                    let image = to_device(view.data(), view.shape());
                    if !view.data().is_empty() {
                        ctx.queue
                            .write_buffer(self.buffer(*node, &args)?, 0, &image);
                    }
                }
                Step::Snapshot { node, name } => {
                    let src = args.states.get(name).ok_or_else(|| Error::UnknownState {
                        name: name.clone(),
                        known: String::new(),
                    })?;
                    let src =
                        src.as_any()
                            .downcast_ref::<WgpuBuffer>()
                            .ok_or_else(|| Error::Device {
                                device: ctx.name.clone(),
                                msg: format!("state `{name}` lives on another device"),
                            })?;
                    let bytes = device_bytes(nodes[*node].dtype, &shapes[*node]);
                    enc.copy_buffer_to_buffer(&src.buffer, 0, self.buffer(*node, &args)?, 0, bytes);
                }
                Step::Kernel {
                    node,
                    pipelines,
                    params,
                    split,
                } => {
                    let launches = self.launch(
                        *node,
                        &shapes,
                        args.bindings,
                        args.seed,
                        args.counter,
                        *split,
                    )?;
                    let n = &nodes[*node];
                    // A matmul with an empty reduction is all zeros: clear instead of dispatching.
                    if let Op::MatMul { transpose_a, .. } = n.op {
                        let a = &shapes[n.inputs[0].0];
                        let k = if transpose_a {
                            a[a.len() - 2]
                        } else {
                            a[a.len() - 1]
                        };
                        if k == 0 && !launches.is_empty() {
                            enc.clear_buffer(self.buffer(*node, &args)?, 0, None);
                            continue;
                        }
                    }
                    for ((bytes, grid, class, b_range), params) in launches.into_iter().zip(params)
                    {
                        ctx.queue.write_buffer(params, 0, &bytes);
                        let pipe = &pipelines[class.min(pipelines.len() - 1)];
                        let whole = |buf: &'a wgpu::Buffer| buf.as_entire_binding();
                        let resources: Vec<wgpu::BindingResource<'_>> = match n.op {
                            Op::WriteState { ref name, .. } => {
                                let st = args
                                    .states
                                    .get(name)
                                    .and_then(|s| s.as_any().downcast_ref::<WgpuBuffer>());
                                let st = st.ok_or_else(|| Error::UnknownState {
                                    name: name.clone(),
                                    known: String::new(),
                                })?;
                                vec![
                                    whole(self.buffer(n.inputs[0].0, &args)?),
                                    whole(&st.buffer),
                                    whole(params),
                                ]
                            }
                            Op::Reduce { .. } => vec![
                                whole(self.buffer(n.inputs[0].0, &args)?),
                                whole(self.buffer(*node, &args)?),
                                whole(params),
                            ],
                            _ => {
                                let a = self.buffer(n.inputs[0].0, &args)?;
                                let b = match n.inputs.get(1) {
                                    Some(j) => self.buffer(j.0, &args)?,
                                    None => a,
                                };
                                let b = match b_range {
                                    Some((offset, size)) => {
                                        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                                            buffer: b,
                                            offset,
                                            size: std::num::NonZeroU64::new(size),
                                        })
                                    }
                                    None => whole(b),
                                };
                                vec![
                                    whole(a),
                                    b,
                                    whole(self.buffer(*node, &args)?),
                                    whole(params),
                                ]
                            }
                        };
                        let entries: Vec<wgpu::BindGroupEntry<'_>> = resources
                            .into_iter()
                            .enumerate()
                            .map(|(k, resource)| wgpu::BindGroupEntry {
                                binding: k as u32,
                                resource,
                            })
                            .collect();
                        let bg = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
                            label: None,
                            layout: &pipe.layout,
                            entries: &entries,
                        });
                        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                            label: Some(n.op.name()),
                            timestamp_writes: None,
                        });
                        pass.set_pipeline(&pipe.pipeline);
                        pass.set_bind_group(0, &bg, &[]);
                        pass.dispatch_workgroups(grid[0], grid[1], grid[2]);
                    }
                }
            }
        }
        for ((_, id), st) in self.graph.outputs().iter().zip(&self.staging) {
            let n: usize = shapes[id.0].iter().product();
            if n > 0 {
                let bytes = device_bytes(nodes[id.0].dtype, &shapes[id.0]);
                enc.copy_buffer_to_buffer(self.buffer(id.0, &args)?, 0, st, 0, bytes);
            }
        }
        ctx.queue.submit([enc.finish()]);
        ctx.check()?;
        Ok(Box::new(WgpuPending {
            program: self,
            shapes,
        }))
    }
}
