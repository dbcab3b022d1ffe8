//! A session: one device, its named weights and persistent state, and the programs compiled for
//! it. Compile once, run many times with named inputs and bound symbolic dimensions.
//!
//! Weights are uploaded once, in the storage dtype chosen at load (rounded to nearest even).
//! States outlive runs and are shared by every program compiled in the session (a prefill and a
//! decode program share one KV cache). A run checks every input, weight and state against the
//! graph and returns an `Err` naming the mismatch; it never panics. An input the graph declared
//! but dead-node elimination removed is accepted (and checked), so one input set serves several
//! programs. Run statistics ([`Session::last_run_stats`], [`Session::total_stats`]) sum what
//! the segments' programs counted, so tests assert cost without timing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::backend::{Device, DeviceBuffer, RunArgs, RunStats};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ir::passes::{Precision, dce, precision, validate};
use crate::ir::{Graph, Op};
use crate::placement::{FallbackPolicy, Placement, Segment, Src, place};
use crate::shape::{Bindings, Dim, Shape, fmt_dims};
use crate::tensor::{StorageRef, Tensor, TensorView};

/// A graph compiled for a session's device. Reusable across runs and bound lengths.
pub struct Compiled {
    graph: Graph,
    /// Every input of the graph as given to `compile` (name, shape, dtype), dead or alive: one
    /// input set may serve several programs, so a run accepts (and checks) an input that
    /// dead-node elimination removed.
    declared: Vec<(String, Shape, DType)>,
    segments: Vec<Segment>,
    placement: Placement,
    /// Per-run scalars used as write offsets (bound like symbolic dims).
    scalars: Vec<String>,
    /// Every symbolic dimension of the graph with its maximum, once each.
    symbols: Vec<(String, usize)>,
}

impl Compiled {
    /// The graph as compiled (after validation and dead-node elimination).
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Where each op runs (every run of this program runs them there).
    pub fn placement(&self) -> &Placement {
        &self.placement
    }
}

/// The outputs of one run, by name, in the graph's output order.
#[derive(Debug, Clone)]
pub struct Outputs(Vec<(String, Tensor)>);

impl Outputs {
    /// The output `name`.
    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t)
            .ok_or_else(|| {
                Error::InvalidGraph(format!(
                    "no output `{name}`; outputs: {}",
                    self.0
                        .iter()
                        .map(|(n, _)| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })
    }

    /// Every output, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.0.iter().map(|(n, t)| (n.as_str(), t))
    }

    /// Consumes the outputs.
    pub fn into_vec(self) -> Vec<(String, Tensor)> {
        self.0
    }
}

/// A device with its weights, states, run counter and run statistics.
pub struct Session {
    device: Device,
    weights: HashMap<String, Arc<dyn DeviceBuffer>>,
    states: HashMap<String, Arc<dyn DeviceBuffer>>,
    /// Host copies of weights for CPU-fallback segments, made on first need.
    cpu_weights: HashMap<String, Arc<dyn DeviceBuffer>>,
    fallback: FallbackPolicy,
    precision: Option<Precision>,
    seed: u64,
    counter: u64,
    gpu_timing: bool,
    /// The counts of the latest completed run, summed over its segments.
    last: RunStats,
    /// Everything since the session was created: every compile and every run. Behind a mutex
    /// because `compile` takes `&self`.
    totals: Mutex<RunStats>,
}

fn names<V>(m: &HashMap<String, V>) -> String {
    let mut v: Vec<&str> = m.keys().map(String::as_str).collect();
    v.sort_unstable();
    if v.is_empty() {
        "(none)".to_string()
    } else {
        v.join(", ")
    }
}

fn check_buffer(
    kind: &'static str,
    name: &str,
    buf: &dyn DeviceBuffer,
    shape: &Shape,
    dtype: DType,
) -> Result<()> {
    let want = shape.max_dims();
    if buf.shape() != want || buf.dtype() != dtype {
        return Err(Error::TensorMismatch {
            kind,
            name: name.to_string(),
            expected: format!("{dtype}{shape}"),
            got: format!("{}{}", buf.dtype(), fmt_dims(&buf.shape())),
        });
    }
    Ok(())
}

impl Session {
    /// A session on `device`, with no weights or states, seed 0 and run counter 0.
    pub fn new(device: &Device) -> Session {
        Session {
            device: device.clone(),
            weights: HashMap::new(),
            states: HashMap::new(),
            cpu_weights: HashMap::new(),
            fallback: FallbackPolicy::Allow,
            precision: None,
            seed: 0,
            counter: 0,
            gpu_timing: false,
            last: RunStats::default(),
            totals: Mutex::new(RunStats::default()),
        }
    }

    /// The counts of the latest completed run: the sum over its segments of each program's
    /// [`Program::stats`](crate::backend::Program::stats). Zero before any run.
    pub fn last_run_stats(&self) -> RunStats {
        self.last.clone()
    }

    /// Everything counted since the session was created: each compile's program statistics
    /// (taken right after `Backend::compile`) plus every completed run's.
    pub fn total_stats(&self) -> RunStats {
        self.totals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn add_totals(&self, stats: &RunStats) {
        self.totals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add_counts(stats);
    }

    /// The session's device.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Uploads weight `name` once, stored as `dtype` (converted with round to nearest even).
    /// Loading the same name again replaces it.
    pub fn load_weight(&mut self, name: &str, tensor: TensorView<'_>, dtype: DType) -> Result<()> {
        let buf = if tensor.dtype() == dtype {
            self.device.backend().upload(tensor)?
        } else {
            let converted = convert(tensor, dtype)?;
            self.device.backend().upload(converted.view())?
        };
        self.weights.insert(name.to_string(), buf);
        self.cpu_weights.remove(name);
        Ok(())
    }

    /// Sets a precision policy that `compile` applies to every graph (`None`: as built), e.g.
    /// `Precision { dtype: DType::BF16, stochastic: true }` runs an f32 graph in bf16 storage
    /// with stochastic rounding; reductions and keep-f32 nodes stay f32.
    pub fn set_precision(&mut self, policy: Option<Precision>) {
        self.precision = policy;
    }

    /// Sets what `compile` does with ops the device cannot run (default: `Allow`, on the CPU).
    pub fn set_fallback(&mut self, policy: FallbackPolicy) {
        self.fallback = policy;
    }

    /// The existing state `name` when it has exactly this shape and dtype (so it can be
    /// overwritten in place).
    fn same_state(
        &self,
        name: &str,
        shape: &[usize],
        dtype: DType,
    ) -> Option<&Arc<dyn DeviceBuffer>> {
        self.states
            .get(name)
            .filter(|b| b.dtype() == dtype && b.shape() == shape)
    }

    /// Creates (or resets) the persistent state `name`, filled with zeros. A shape whose element
    /// count or byte size overflows, or that exceeds the device's buffer limit, is an `Err`
    /// naming it, checked before anything is allocated. Resetting a state of the same shape and
    /// dtype clears it in place where the backend can.
    pub fn create_state(&mut self, name: &str, shape: &[usize], dtype: DType) -> Result<()> {
        let info = self.device.info();
        let what = || format!("state `{name}` {dtype}{}", fmt_dims(shape));
        let bytes = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .and_then(|n| n.checked_mul(dtype.size_of()))
            .ok_or_else(|| Error::InvalidArgument {
                op: "create_state",
                msg: format!("{}: its element count or byte size overflows", what()),
            })?;
        if bytes as u64 > info.limits.max_buffer_bytes {
            return Err(Error::LimitExceeded {
                what: format!("{} in bytes", what()),
                value: bytes as u64,
                limit: info.limits.max_buffer_bytes,
                device: info.name.clone(),
            });
        }
        if let Some(buf) = self.same_state(name, shape, dtype)
            && buf.clear()?
        {
            return Ok(());
        }
        let buf = self.device.backend().zeros(shape, dtype)?;
        self.states.insert(name.to_string(), buf);
        Ok(())
    }

    /// Replaces the contents of state `name` (creating it when new). A state of the same shape
    /// and dtype is overwritten in place where the backend can.
    pub fn set_state(&mut self, name: &str, tensor: TensorView<'_>) -> Result<()> {
        if let Some(buf) = self.same_state(name, tensor.shape(), tensor.dtype())
            && buf.write(tensor)?
        {
            return Ok(());
        }
        let buf = self.device.backend().upload(tensor)?;
        self.states.insert(name.to_string(), buf);
        Ok(())
    }

    /// Copies state `name` back to the host.
    pub fn read_state(&self, name: &str) -> Result<Tensor> {
        self.states
            .get(name)
            .ok_or_else(|| Error::UnknownState {
                name: name.to_string(),
                known: names(&self.states),
            })?
            .read()
    }

    /// Whether runs record the device time of their compute passes with GPU timestamp queries
    /// ([`RunStats::gpu_ns`] of [`Session::last_run_stats`]); off by default (it costs a query
    /// resolve and a small readback per run). Devices without timestamp queries leave it `None`.
    pub fn set_gpu_timing(&mut self, on: bool) {
        self.gpu_timing = on;
    }

    /// Pins the stochastic-rounding seed and run counter (to reproduce a run). The counter
    /// advances by one at every run.
    pub fn set_seed(&mut self, seed: u64, counter: u64) {
        self.seed = seed;
        self.counter = counter;
    }

    /// The run counter the next run will use.
    pub fn counter(&self) -> u64 {
        self.counter
    }

    /// Validates `graph`, removes dead nodes and compiles it for the session's device.
    pub fn compile(&self, graph: &Graph) -> Result<Compiled> {
        validate(graph)?;
        let declared = graph
            .nodes()
            .iter()
            .filter_map(|n| match &n.op {
                Op::Input { name } => Some((name.clone(), n.shape.clone(), n.dtype)),
                _ => None,
            })
            .collect();
        let graph = match self.precision {
            Some(p) => dce(&precision(graph, p)?),
            None => dce(graph),
        };
        let (segments, placement) = place(&graph, &self.device, self.fallback)?;
        for seg in &segments {
            self.add_totals(&seg.program.stats());
        }
        let mut scalars = Vec::new();
        for node in graph.nodes() {
            if let Some(s) = node.op.run_scalar()
                && !scalars.iter().any(|x| x == s)
            {
                scalars.push(s.to_string());
            }
        }
        let mut symbols: Vec<(String, usize)> = Vec::new();
        for node in graph.nodes() {
            for (sym, max) in node.shape.symbols() {
                if !symbols.iter().any(|(s, m)| s == sym && *m == max) {
                    symbols.push((sym.to_string(), max));
                }
            }
        }
        Ok(Compiled {
            graph,
            declared,
            segments,
            placement,
            scalars,
            symbols,
        })
    }

    /// Runs `program` with named `inputs` (borrowed: the CPU reads them in place, a GPU copies
    /// each once into device memory) and `bindings` for symbolic dimensions and per-run scalars.
    /// Symbolic dimensions of inputs are bound from the inputs' shapes; `bindings` may give them
    /// too, and must give every other symbol. Advances the run counter.
    pub fn run(
        &mut self,
        program: &Compiled,
        inputs: &[(&str, TensorView<'_>)],
        bindings: &[(&str, usize)],
    ) -> Result<Outputs> {
        let graph = &program.graph;
        let mut bound = Bindings::new();
        for &(name, value) in bindings {
            bound.bind(name, value)?;
        }
        let mut by_name: HashMap<String, TensorView<'_>> = HashMap::with_capacity(inputs.len());
        let declared: Vec<(&str, &crate::ir::Node)> = graph
            .nodes()
            .iter()
            .filter_map(|n| match &n.op {
                Op::Input { name } => Some((name.as_str(), n)),
                _ => None,
            })
            .collect();
        for &(name, view) in inputs {
            if let Some(&(_, node)) = declared.iter().find(|(n, _)| *n == name) {
                bind_input(name, view, &node.shape, node.dtype, &mut bound)?;
                by_name.insert(name.to_string(), view);
                continue;
            }
            // An input of the graph as given to `compile` that dead-node elimination removed:
            // checked (dtype, rank, sizes) but not used, and its symbols bind nothing.
            let Some((_, shape, dtype)) = program.declared.iter().find(|(n, ..)| n == name) else {
                return Err(Error::UnknownInput {
                    name: name.to_string(),
                    known: program
                        .declared
                        .iter()
                        .map(|(n, ..)| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            };
            bind_input(name, view, shape, *dtype, &mut Bindings::new())?;
        }
        for (name, node) in &declared {
            if !by_name.contains_key(*name) {
                return Err(Error::MissingInput {
                    name: name.to_string(),
                    shape: node.shape.to_string(),
                    dtype: node.dtype,
                });
            }
        }
        // Every symbol of the graph must be bound, within its maximum.
        for (sym, max) in &program.symbols {
            let value = bound.get(sym)?;
            if value > *max {
                return Err(Error::DimOverMax {
                    name: sym.clone(),
                    value,
                    max: *max,
                });
            }
        }
        for s in &program.scalars {
            bound.get(s)?;
        }
        check_gather_indices(graph, &by_name, &bound)?;
        for node in graph.nodes() {
            match &node.op {
                Op::Weight { name } => {
                    let buf = self.weights.get(name).ok_or_else(|| Error::UnknownWeight {
                        name: name.clone(),
                        known: names(&self.weights),
                    })?;
                    check_buffer("weight", name, buf.as_ref(), &node.shape, node.dtype)?;
                }
                // A write's node has the state's shape and dtype: check it even when no node
                // reads the state (dead-node elimination removes an unread `state` node).
                Op::State { name } | Op::WriteState { name, .. } => {
                    let buf = self.states.get(name).ok_or_else(|| Error::UnknownState {
                        name: name.clone(),
                        known: names(&self.states),
                    })?;
                    check_buffer("state", name, buf.as_ref(), &node.shape, node.dtype)?;
                }
                _ => {}
            }
        }
        let tensors = if let [seg] = program.segments.as_slice()
            && !seg.fallback
        {
            let args = RunArgs {
                inputs: &by_name,
                bindings: &bound,
                weights: &self.weights,
                states: &self.states,
                seed: self.seed,
                counter: self.counter,
                gpu_timing: self.gpu_timing,
            };
            let out = seg.program.submit(args)?.wait()?;
            self.last = seg.program.stats();
            out
        } else {
            self.run_segments(program, &by_name, &bound)?
        };
        self.add_totals(&self.last);
        self.counter = self.counter.wrapping_add(1);
        Ok(Outputs(
            graph
                .outputs()
                .iter()
                .map(|(n, _)| n.clone())
                .zip(tensors)
                .collect(),
        ))
    }

    /// Runs a graph split over the device and the CPU fallback, moving values through the host.
    fn run_segments(
        &mut self,
        program: &Compiled,
        user: &HashMap<String, TensorView<'_>>,
        bound: &Bindings,
    ) -> Result<Vec<Tensor>> {
        let mut values: HashMap<usize, Tensor> = HashMap::new();
        let mut stats = RunStats::default();
        for seg in &program.segments {
            if seg.fallback {
                // Only the weights this segment reads come to the host, once per load.
                for name in &seg.weights {
                    if !self.cpu_weights.contains_key(name)
                        && let Some(w) = self.weights.get(name)
                    {
                        let host = w.read()?;
                        let buf = seg.device.backend().upload(host.view())?;
                        self.cpu_weights.insert(name.clone(), buf);
                    }
                }
            }
            let mut inputs: HashMap<String, TensorView<'_>> = HashMap::new();
            for (name, src) in &seg.inputs {
                let view = match src {
                    Src::User(n) => user.get(n).copied(),
                    Src::Value(j) => values.get(j).map(Tensor::view),
                };
                let view = view.ok_or_else(|| {
                    Error::InvalidGraph(format!("segment input `{name}` missing"))
                })?;
                inputs.insert(name.clone(), view);
            }
            let args = RunArgs {
                inputs: &inputs,
                bindings: bound,
                weights: if seg.fallback {
                    &self.cpu_weights
                } else {
                    &self.weights
                },
                states: &self.states,
                seed: self.seed,
                counter: self.counter,
                gpu_timing: self.gpu_timing,
            };
            let out = seg.program.submit(args)?.wait()?;
            stats.add(&seg.program.stats());
            drop(inputs);
            for (j, t) in seg.exports.iter().zip(out) {
                values.insert(*j, t);
            }
        }
        let out = program
            .graph
            .outputs()
            .iter()
            .map(|(_, id)| {
                values.get(&id.0).cloned().ok_or_else(|| {
                    Error::InvalidGraph(format!("output %{} was not computed", id.0))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        self.last = stats;
        Ok(out)
    }
}

/// Checks an input view against its declaration and binds the symbols it determines.
fn bind_input(
    name: &str,
    view: TensorView<'_>,
    shape: &Shape,
    dtype: DType,
    bound: &mut Bindings,
) -> Result<()> {
    let mismatch = || Error::TensorMismatch {
        kind: "input",
        name: name.to_string(),
        expected: format!("{dtype}{shape}"),
        got: format!("{}{}", view.dtype(), fmt_dims(view.shape())),
    };
    if view.dtype() != dtype || view.shape().len() != shape.rank() {
        return Err(mismatch());
    }
    for (d, &got) in shape.dims().iter().zip(view.shape()) {
        match d {
            Dim::Fixed(n) if *n != got => return Err(mismatch()),
            Dim::Fixed(_) => {}
            Dim::Sym(sym, max) => {
                if got > *max {
                    return Err(Error::DimOverMax {
                        name: sym.clone(),
                        value: got,
                        max: *max,
                    });
                }
                bound.bind(sym, got)?;
            }
        }
    }
    Ok(())
}

/// Every index a gather reads from a host input must select a row of its table: an index
/// outside `0..V` is an `Err` naming it and the table size, before any device runs (kernels
/// never read out of bounds either way: they write zeros for such rows).
fn check_gather_indices(
    graph: &Graph,
    inputs: &HashMap<String, TensorView<'_>>,
    bound: &Bindings,
) -> Result<()> {
    for node in graph.nodes() {
        let (Op::Gather, [table, idx]) = (&node.op, node.inputs.as_slice()) else {
            continue;
        };
        let Op::Input { name } = &graph.node(*idx)?.op else {
            continue;
        };
        let Some(view) = inputs.get(name) else {
            continue;
        };
        let rows = graph.node(*table)?.shape.dims()[0].resolve(bound)?;
        let bad = |pos: usize, i: i64| Error::InvalidArgument {
            op: "gather",
            msg: format!(
                "index {i} at position {pos} of input `{name}` is outside the table's {rows} rows"
            ),
        };
        match view.data() {
            StorageRef::U32(v) => {
                if let Some(pos) = v.iter().position(|&i| i as usize >= rows) {
                    return Err(bad(pos, i64::from(v[pos])));
                }
            }
            StorageRef::I32(v) => {
                if let Some(pos) = v
                    .iter()
                    .position(|&i| usize::try_from(i).map_or(true, |u| u >= rows))
                {
                    return Err(bad(pos, i64::from(v[pos])));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Converts a host tensor to `dtype` (floats round to nearest even).
fn convert(t: TensorView<'_>, dtype: DType) -> Result<Tensor> {
    let storage = crate::backend::cpu::cast_storage(t.data(), dtype);
    Tensor::from_storage(t.shape(), storage)
}
