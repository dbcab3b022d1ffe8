//! Running a compiled program: per launch only a params write, a bind group and a dispatch; all
//! kernels go into one command buffer, and the outputs are read back by the completion hook.

use std::sync::Arc;

use super::WgpuBuffer;
use super::kernels;
use super::layout::{device_bytes, from_device, to_device};
use super::program::{Slot, Step, WgpuProgram};
use crate::backend::{DeviceBuffer, Pending, Program, RunArgs};
use crate::dtype::{DType, Rounding};
use crate::error::{Error, Result};
use crate::ir::{Offset, Op};
use crate::shape::Bindings;
use crate::tensor::Tensor;

impl WgpuProgram {
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
                if off
                    .checked_add(value[*axis])
                    .is_none_or(|end| end > state[*axis])
                {
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
            Op::Cast { .. } if kernels::widens(ins[0].0, node.dtype, out.1) => {
                let (p, g) = kernels::widen_params(out.1);
                (bytemuck::bytes_of(&p).to_vec(), g, 1, None)
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
    _running: std::sync::MutexGuard<'a, ()>,
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
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
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
                            Op::Reduce { .. } | Op::Cast { .. }
                                if class == 1 || matches!(n.op, Op::Reduce { .. }) =>
                            {
                                vec![
                                    whole(self.buffer(n.inputs[0].0, &args)?),
                                    whole(self.buffer(*node, &args)?),
                                    whole(params),
                                ]
                            }
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
            _running: running,
            shapes,
        }))
    }
}
