//! Running a compiled program. Per run: the inputs and one params upload for every launch,
//! bind groups reused (rebuilt only when a weight or state buffer was replaced), every launch in
//! one compute pass (a state snapshot, a copy, splits it), one command buffer, and the outputs
//! read back by the completion hook. Nothing here looks at the op.

use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};

use super::WgpuBuffer;
use super::context::Pipeline;
use super::kernels::{self, Go, RunValues};
use super::layout::{device_bytes, from_device, to_device};
use super::program::{Res, RunState, Slot, Step, WgpuProgram, view};
use crate::backend::{DeviceBuffer, LaunchStat, Pending, Program, RunArgs, RunStats};
use crate::dtype::Rounding;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

fn lock<T>(m: &std::sync::Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl WgpuProgram {
    fn session_buffer<'a>(
        &self,
        map: &'a std::collections::HashMap<String, Arc<dyn DeviceBuffer>>,
        kind: &str,
        name: &str,
    ) -> Result<&'a wgpu::Buffer> {
        let buf = map.get(name).ok_or_else(|| Error::Device {
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
    }

    fn buffer<'a>(&'a self, res: &Res, args: &RunArgs<'a>) -> Result<&'a wgpu::Buffer> {
        match res {
            Res::State(name) => self.session_buffer(args.states, "state", name),
            Res::Buf(b) => self.bufs.get(*b).ok_or_else(|| {
                Error::InvalidGraph(format!("scratch buffer {b} of {} missing", self.bufs.len()))
            }),
            Res::Node(i) => match &self.slots[*i] {
                Slot::Buf(b) => Ok(&self.bufs[*b]),
                Slot::Weight(name) => self.session_buffer(args.weights, "weight", name),
                Slot::State(name) => self.session_buffer(args.states, "state", name),
                Slot::None => Err(Error::InvalidGraph(format!("%{i} has no buffer"))),
            },
        }
    }

    /// Launch `k`'s bind group, built on first use and again only when one of its buffers was
    /// replaced (`load_weight`, `set_state` with a new shape).
    fn bind_group<'s>(
        &self,
        k: usize,
        state: &'s mut RunState,
        args: &RunArgs<'_>,
        stats: &mut RunStats,
    ) -> Result<&'s wgpu::BindGroup> {
        let l = &self.launches[k];
        let bufs = l
            .resources
            .iter()
            .map(|(res, _)| self.buffer(res, args).cloned())
            .collect::<Result<Vec<wgpu::Buffer>>>()?;
        let slot = &mut state.bind_groups[k];
        if slot.as_ref().is_none_or(|(have, _)| *have != bufs) {
            let mut entries: Vec<wgpu::BindGroupEntry<'_>> = l
                .resources
                .iter()
                .zip(&bufs)
                .enumerate()
                .map(|(b, ((_, range), buf))| wgpu::BindGroupEntry {
                    binding: b as u32,
                    resource: match range {
                        Some((offset, size)) => {
                            wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                                buffer: buf,
                                offset: *offset,
                                size: std::num::NonZeroU64::new(*size),
                            })
                        }
                        None => buf.as_entire_binding(),
                    },
                })
                .collect();
            entries.push(wgpu::BindGroupEntry {
                binding: l.resources.len() as u32,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &self.params,
                    offset: l.params_offset,
                    size: std::num::NonZeroU64::new(l.params_size),
                }),
            });
            let bg = self
                .ctx
                .device
                .create_bind_group(&wgpu::BindGroupDescriptor {
                    label: None,
                    layout: &l.layout,
                    entries: &entries,
                });
            self.ctx.bind_groups_created.fetch_add(1, Ordering::Relaxed);
            stats.bind_groups_created += 1;
            *slot = Some((bufs, bg));
        }
        match slot {
            Some((_, bg)) => Ok(bg),
            None => Err(Error::InvalidGraph("bind group missing".to_string())),
        }
    }

    fn encode<'a>(
        &'a self,
        args: &RunArgs<'a>,
        state: &mut RunState,
        shapes: &[Vec<usize>],
        stats: &mut RunStats,
    ) -> Result<()> {
        let ctx = &self.ctx;
        let nodes = self.graph.nodes();
        // Every launch's params and grid under this run's sizes (the launch count is fixed).
        let mut gos: Vec<Option<Go>> = (0..self.launches.len()).map(|_| None).collect();
        for step in &self.steps {
            let Step::Kernel { node, range } = step else {
                continue;
            };
            let n = &nodes[*node];
            let keys = match n.rounding {
                Rounding::Stochastic { stream } => {
                    crate::rng::sr_keys(args.seed, stream, args.counter)
                }
                Rounding::NearestEven => [0, 0],
            };
            let run = RunValues {
                bindings: args.bindings,
                keys,
            };
            let planned = kernels::bind(
                &view(&self.graph, *node, shapes),
                &self.class,
                range.len(),
                &run,
            )?;
            if planned.len() != range.len() {
                return Err(Error::InvalidGraph(format!(
                    "%{node} ({}): {} launches planned, {} bound",
                    n.op.name(),
                    range.len(),
                    planned.len()
                )));
            }
            for (k, go) in range.clone().zip(planned) {
                if let Go::Dispatch { params, .. } = &go {
                    let at = self.launches[k].params_offset as usize;
                    state.params[at..at + params.len()].copy_from_slice(params);
                }
                gos[k] = Some(go);
            }
        }
        for step in &self.steps {
            if let Step::Upload { node, name } = step {
                let view = args.inputs.get(name).ok_or_else(|| Error::MissingInput {
                    name: name.clone(),
                    shape: nodes[*node].shape.to_string(),
                    dtype: nodes[*node].dtype,
                })?;
                if !view.data().is_empty() {
                    let image = to_device(view.data(), view.shape());
                    ctx.queue
                        .write_buffer(self.buffer(&Res::Node(*node), args)?, 0, &image);
                    stats.bytes_uploaded += image.len() as u64;
                }
            }
        }
        if !state.params.is_empty() {
            ctx.queue.write_buffer(&self.params, 0, &state.params);
            stats.bytes_uploaded += state.params.len() as u64;
        }
        let mut enc = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("run") });
        let mut pass: Option<wgpu::ComputePass<'static>> = None;
        let timer = self.timer.as_ref().filter(|_| args.gpu_timing);
        // The pipeline last set in the open pass (set again only when it changes).
        let mut current: Option<*const Pipeline> = None;
        for step in &self.steps {
            match step {
                Step::Upload { .. } => {}
                Step::Snapshot { node, name } => {
                    // A copy cannot sit inside a compute pass: end the current one.
                    drop(pass.take());
                    current = None;
                    let src = self.buffer(&Res::State(name.clone()), args)?;
                    let bytes = device_bytes(nodes[*node].dtype, &shapes[*node]);
                    enc.copy_buffer_to_buffer(
                        src,
                        0,
                        self.buffer(&Res::Node(*node), args)?,
                        0,
                        bytes,
                    );
                    stats.bytes_copied += bytes;
                }
                Step::Kernel { range, .. } => {
                    for k in range.clone() {
                        let Some(Go::Dispatch {
                            class,
                            grid,
                            state_elements,
                            ..
                        }) = gos[k].take()
                        else {
                            continue;
                        };
                        let l = &self.launches[k];
                        let (pipe, kernel) = l.pipelines.get(class).ok_or_else(|| {
                            Error::InvalidGraph(format!(
                                "launch {k}: kernel class {class} of {} planned",
                                l.pipelines.len()
                            ))
                        })?;
                        let bg = self.bind_group(k, state, args, stats)?;
                        let p = pass.get_or_insert_with(|| {
                            let at = 2 * stats.passes as u32;
                            stats.passes += 1;
                            enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                                label: Some("run"),
                                timestamp_writes: timer.map(|t| wgpu::ComputePassTimestampWrites {
                                    query_set: &t.set,
                                    beginning_of_pass_write_index: Some(at),
                                    end_of_pass_write_index: Some(at + 1),
                                }),
                            })
                            .forget_lifetime()
                        });
                        if current != Some(Arc::as_ptr(pipe)) {
                            p.set_pipeline(&pipe.pipeline);
                            current = Some(Arc::as_ptr(pipe));
                        }
                        p.set_bind_group(0, bg, &[]);
                        p.dispatch_workgroups(grid[0], grid[1], grid[2]);
                        stats.launch_count += 1;
                        stats.launches.push(LaunchStat {
                            kernel: kernel.clone(),
                            grid,
                        });
                        stats.state_elements_written += state_elements;
                    }
                }
            }
        }
        drop(pass);
        if let Some(t) = timer
            && stats.passes > 0
        {
            let n = 2 * stats.passes as u32;
            enc.resolve_query_set(&t.set, 0..n, &t.resolve, 0);
            enc.copy_buffer_to_buffer(&t.resolve, 0, &t.readback, 0, u64::from(n) * 8);
            stats.gpu_ns = Some(0);
        }
        for ((_, id), st) in self.graph.outputs().iter().zip(&self.staging) {
            let n: usize = shapes[id.0].iter().product();
            if n > 0 {
                let bytes = device_bytes(nodes[id.0].dtype, &shapes[id.0]);
                enc.copy_buffer_to_buffer(self.buffer(&Res::Node(id.0), args)?, 0, st, 0, bytes);
            }
        }
        ctx.queue.submit([enc.finish()]);
        Ok(())
    }
}

struct WgpuPending<'a> {
    program: &'a WgpuProgram,
    _running: MutexGuard<'a, RunState>,
    shapes: Vec<Vec<usize>>,
    stats: RunStats,
}

impl Pending for WgpuPending<'_> {
    fn wait(self: Box<Self>) -> Result<Vec<Tensor>> {
        let p = self.program;
        let outs = p.graph.outputs();
        let mut reads: Vec<(&wgpu::Buffer, u64)> = outs
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
        let mut stats = self.stats;
        stats.bytes_read_back = reads.iter().map(|(_, n)| n).sum();
        // The pass timestamps (recorded when `gpu_ns` was set at submit) come back last.
        let timed = match (&p.timer, stats.gpu_ns) {
            (Some(t), Some(_)) => {
                reads.push((&t.readback, stats.passes * 16));
                Some(t.period)
            }
            _ => None,
        };
        let mut data = p.ctx.read_back(&reads)?;
        if let Some(period) = timed {
            let stamps = data.pop().unwrap_or_default();
            let ticks: u64 = stamps
                .chunks_exact(16)
                .map(|c| {
                    let word = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
                    word(&c[8..]).saturating_sub(word(&c[..8]))
                })
                .sum();
            stats.gpu_ns = Some((ticks as f64 * period) as u64);
        }
        *lock(&p.stats) = stats;
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
        let mut running = lock(&self.running);
        let shapes: Vec<Vec<usize>> = self
            .graph
            .nodes()
            .iter()
            .map(|n| n.shape.resolve(args.bindings))
            .collect::<Result<_>>()?;
        let mut stats = RunStats::default();
        // A validation error this run causes comes back to this run.
        self.ctx
            .scoped(|| self.encode(&args, &mut running, &shapes, &mut stats))?;
        Ok(Box::new(WgpuPending {
            program: self,
            _running: running,
            shapes,
            stats,
        }))
    }

    fn stats(&self) -> RunStats {
        lock(&self.stats).clone()
    }
}
