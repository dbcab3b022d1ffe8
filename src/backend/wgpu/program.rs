//! A graph compiled for one wgpu device: buffers planned once at the symbols' maxima with
//! liveness-based reuse, every node's launches planned by its kernel family, pipelines built
//! once, and one params uniform for all launches at fixed offsets (`run.rs` runs it). Nothing
//! here looks at the op: the families say what to launch and what to bind.

use std::ops::Range;
use std::sync::{Arc, Mutex};

use super::context::{Ctx, Pipeline, Signature};
use super::kernels::{self, Buf, Class, NodeView};
use super::layout::{device_bytes, to_device};
use crate::backend::RunStats;
use crate::error::Result;
use crate::ir::{Graph, Node, Role};
use crate::tensor::constant_storage;

/// Where a node's value lives during a run.
#[derive(Clone, Debug)]
pub(super) enum Slot {
    /// Nothing reads it.
    None,
    /// A buffer of the program.
    Buf(usize),
    /// A session weight, bound directly.
    Weight(String),
    /// A session state, bound directly (aliased: no later write in this graph changes it).
    State(String),
}

pub(super) enum Step {
    /// Write an input into its buffer (before the command buffer runs).
    Upload { node: usize, name: String },
    /// Copy a state into the node's buffer (a snapshot: a later write changes the state).
    Snapshot { node: usize, name: String },
    /// The launches `range` (into `WgpuProgram::launches`) of node `node`.
    Kernel { node: usize, range: Range<usize> },
}

/// A buffer a binding resolves to at run time.
#[derive(Clone, Debug)]
pub(super) enum Res {
    /// The value of node `i` (its slot).
    Node(usize),
    /// A session state by name.
    State(String),
    /// Buffer `b` of the program (a node's scratch).
    Buf(usize),
}

/// One planned launch, ready to bind and dispatch.
pub(super) struct Planned {
    /// The candidate pipelines (kernel classes), all with `layout`, with their names.
    pub pipelines: Vec<(Arc<Pipeline>, Arc<str>)>,
    pub layout: Arc<wgpu::BindGroupLayout>,
    /// Each storage binding: the buffer and an optional byte range.
    pub resources: Vec<(Res, Option<(u64, u64)>)>,
    /// Where this launch's params sit in the program's uniform buffer.
    pub params_offset: u64,
    pub params_size: u64,
}

/// Mutable state of the one run in flight (a program runs one at a time).
pub(super) struct RunState {
    /// Each launch's bind group with the buffers it was built for (rebuilt when a weight or
    /// state buffer is replaced).
    pub bind_groups: Vec<Option<(Vec<wgpu::Buffer>, wgpu::BindGroup)>>,
    /// The params of every launch, uploaded at once.
    pub params: Vec<u8>,
}

pub(crate) struct WgpuProgram {
    pub(super) ctx: Arc<Ctx>,
    pub(super) graph: Graph,
    pub(super) class: Class,
    pub(super) slots: Vec<Slot>,
    pub(super) bufs: Vec<wgpu::Buffer>,
    pub(super) steps: Vec<Step>,
    pub(super) launches: Vec<Planned>,
    /// The params uniform of every launch.
    pub(super) params: wgpu::Buffer,
    /// Readback buffer of each graph output.
    pub(super) staging: Vec<wgpu::Buffer>,
    /// Pass timestamps, where the device has timestamp queries.
    pub(super) timer: Option<Timer>,
    /// Held from submit until the outputs are read: one set of buffers serves one run at a time.
    pub(super) running: Mutex<RunState>,
    /// The counts of the latest run (before any: of the compile).
    pub(super) stats: Mutex<RunStats>,
}

/// The program's buffers, with best-fit reuse of released ones.
#[derive(Default)]
struct BufPool {
    bufs: Vec<wgpu::Buffer>,
    sizes: Vec<u64>,
    free: Vec<usize>,
    /// Buffers never given back (inputs, constants).
    pinned: Vec<bool>,
}

impl BufPool {
    fn pinned(&mut self, buf: wgpu::Buffer, bytes: u64) -> usize {
        self.bufs.push(buf);
        self.sizes.push(bytes);
        self.pinned.push(true);
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
        let b = self.pinned(ctx.storage(bytes, "intermediate")?, bytes);
        self.pinned[b] = false;
        Ok(b)
    }

    fn release(&mut self, b: usize) {
        if !self.pinned[b] && !self.free.contains(&b) {
            self.free.push(b);
        }
    }
}

/// Node `i` as its family's planner sees it, with `shapes` (maxima at compile, bound at run).
pub(super) fn view<'a>(graph: &'a Graph, i: usize, shapes: &'a [Vec<usize>]) -> NodeView<'a> {
    let nodes = graph.nodes();
    let node: &Node = &nodes[i];
    NodeView {
        op: &node.op,
        dtype: node.dtype,
        rounding: node.rounding,
        shape: &shapes[i],
        inputs: node
            .inputs
            .iter()
            .map(|j| (nodes[j.0].dtype, shapes[j.0].as_slice()))
            .collect(),
        fixed: node
            .inputs
            .iter()
            .map(|j| nodes[j.0].shape.is_fixed())
            .collect(),
    }
}

impl WgpuProgram {
    pub(crate) fn new(ctx: Arc<Ctx>, graph: &Graph, class: Class) -> Result<WgpuProgram> {
        let built_before = ctx
            .pipelines_built
            .load(std::sync::atomic::Ordering::Relaxed);
        let nodes = graph.nodes();
        let n = nodes.len();
        let maxima: Vec<Vec<usize>> = nodes.iter().map(|n| n.shape.max_dims()).collect();
        let mut last_use: Vec<usize> = (0..n).collect();
        for (i, node) in nodes.iter().enumerate() {
            for j in &node.inputs {
                last_use[j.0] = i;
            }
        }
        for (_, id) in graph.outputs() {
            last_use[id.0] = usize::MAX;
        }
        // Whether a write to state `name` follows node i (then a value of the state read at i
        // must be a snapshot; otherwise it aliases the state's buffer).
        let written_after = |name: &str, i: usize| {
            nodes[i + 1..]
                .iter()
                .any(|m| matches!(m.op.role(), Role::WriteState { name: w, .. } if w == name))
        };
        let align = u64::from(ctx.limits.min_uniform_buffer_offset_alignment).max(16);
        let mut slots = vec![Slot::None; n];
        let mut pool = BufPool::default();
        let mut steps = Vec::new();
        let mut launches: Vec<Planned> = Vec::new();
        let mut params_bytes = 0u64;
        for (i, node) in nodes.iter().enumerate() {
            let bytes = device_bytes(node.dtype, &maxima[i]);
            let used = last_use[i] > i;
            let mut snapshot = None;
            match node.op.role() {
                Role::Input(name) => {
                    slots[i] = Slot::Buf(pool.pinned(ctx.storage(bytes, name)?, bytes));
                    steps.push(Step::Upload {
                        node: i,
                        name: name.to_string(),
                    });
                }
                Role::Weight(name) => slots[i] = Slot::Weight(name.to_string()),
                Role::State(name) => {
                    if written_after(name, i) && used {
                        slots[i] = Slot::Buf(pool.alloc(&ctx, bytes)?);
                        steps.push(Step::Snapshot {
                            node: i,
                            name: name.to_string(),
                        });
                    } else {
                        slots[i] = Slot::State(name.to_string());
                    }
                }
                Role::Constant(values) => {
                    let dims = &maxima[i];
                    // The CPU's exact rule: integers never pass through f32.
                    let storage = constant_storage(values, node.dtype, dims.iter().product())?;
                    let image = to_device(storage.as_ref(), dims);
                    let buf = ctx.storage(bytes, "constant")?;
                    if !image.is_empty() {
                        ctx.queue.write_buffer(&buf, 0, &image);
                    }
                    slots[i] = Slot::Buf(pool.pinned(buf, bytes));
                }
                Role::Compute => slots[i] = Slot::Buf(pool.alloc(&ctx, bytes)?),
                Role::WriteState { name, .. } => {
                    if used && written_after(name, i) {
                        slots[i] = Slot::Buf(pool.alloc(&ctx, bytes)?);
                        snapshot = Some(name.to_string());
                    } else if used {
                        slots[i] = Slot::State(name.to_string());
                    }
                }
            }
            let planned = kernels::plan(&view(graph, i, &maxima), &class)?;
            // The node's scratch, if it asks for one: allocated after its output (never the
            // same buffer), given back after the node.
            let scratch_bytes = planned
                .iter()
                .flat_map(|l| &l.bindings)
                .filter_map(|b| match b.buf {
                    Buf::Scratch(bytes) => Some(bytes),
                    _ => None,
                })
                .max();
            let scratch = match scratch_bytes {
                Some(bytes) => Some(pool.alloc(&ctx, bytes.max(4))?),
                None => None,
            };
            let first = launches.len();
            for l in planned {
                let sig: Signature = l.bindings.iter().map(|b| b.read_only).collect();
                let pipelines = l
                    .keys
                    .iter()
                    .map(|k| {
                        let aligned = k.constants.contains(&("ALIGNED", 1));
                        let name = format!(
                            "{}/{}{}",
                            k.shader.name,
                            k.entry,
                            if aligned { "+aligned" } else { "" }
                        );
                        Ok((ctx.pipeline(k, &sig)?, Arc::from(name)))
                    })
                    .collect::<Result<Vec<_>>>()?;
                let resources = l
                    .bindings
                    .iter()
                    .map(|b| {
                        let res = match &b.buf {
                            Buf::Operand(k) => Res::Node(node.inputs[*k].0),
                            Buf::Out => Res::Node(i),
                            Buf::State(name) => Res::State(name.clone()),
                            Buf::Scratch(_) => Res::Buf(scratch.unwrap_or(usize::MAX)),
                        };
                        (res, b.range)
                    })
                    .collect();
                launches.push(Planned {
                    pipelines,
                    layout: ctx.layout(&sig),
                    resources,
                    params_offset: params_bytes,
                    params_size: l.params_size.div_ceil(16) * 16,
                });
                params_bytes += l.params_size.div_ceil(align) * align;
            }
            if launches.len() > first {
                steps.push(Step::Kernel {
                    node: i,
                    range: first..launches.len(),
                });
            }
            if let Some(name) = snapshot {
                steps.push(Step::Snapshot { node: i, name });
            }
            if let Some(b) = scratch {
                pool.release(b);
            }
            // Operands whose last reader is this node give their buffers back (after this
            // node's output was allocated, so a kernel never reads and writes one buffer).
            for j in &node.inputs {
                if last_use[j.0] == i
                    && let Slot::Buf(b) = slots[j.0]
                {
                    pool.release(b);
                }
            }
        }
        let staging = graph
            .outputs()
            .iter()
            .map(|(_, id)| ctx.staging(device_bytes(nodes[id.0].dtype, &maxima[id.0])))
            .collect();
        let params = ctx.uniform(params_bytes.max(16));
        // Timestamps of each compute pass (a run opens one more pass after each snapshot).
        let timer = ctx
            .device
            .features()
            .contains(wgpu::Features::TIMESTAMP_QUERY)
            .then(|| {
                let passes = 1 + steps
                    .iter()
                    .filter(|s| matches!(s, Step::Snapshot { .. }))
                    .count() as u32;
                Timer::new(&ctx, passes)
            });
        let built = ctx
            .pipelines_built
            .load(std::sync::atomic::Ordering::Relaxed)
            - built_before;
        Ok(WgpuProgram {
            running: Mutex::new(RunState {
                bind_groups: (0..launches.len()).map(|_| None).collect(),
                params: vec![0; params_bytes as usize],
            }),
            stats: Mutex::new(RunStats {
                pipelines_built: built,
                ..RunStats::default()
            }),
            ctx,
            graph: graph.clone(),
            class,
            slots,
            bufs: pool.bufs,
            steps,
            launches,
            params,
            staging,
            timer,
        })
    }
}

/// GPU timestamps at the beginning and end of each compute pass of a run.
pub(crate) struct Timer {
    pub set: wgpu::QuerySet,
    /// Where the queries resolve (8 bytes each), then copied to `readback`.
    pub resolve: wgpu::Buffer,
    pub readback: wgpu::Buffer,
    /// Nanoseconds per timestamp tick.
    pub period: f64,
}

impl Timer {
    fn new(ctx: &Ctx, passes: u32) -> Timer {
        let bytes = u64::from(passes) * 16;
        Timer {
            set: ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("pass timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count: 2 * passes,
            }),
            resolve: ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("timestamps"),
                size: bytes,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            }),
            readback: ctx.staging(bytes),
            period: f64::from(ctx.queue.get_timestamp_period()),
        }
    }
}
