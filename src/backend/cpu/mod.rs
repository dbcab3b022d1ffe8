//! The CPU backend, with two faces: a readable f64 **reference** (`reference.rs`) that every test
//! compares against, and the **fast** path users run (`fast.rs`: `gemm` for matmul, multi-threaded
//! elementwise and reductions, F16C conversions).
//!
//! A run borrows its inputs and the weights (no copies on the way in), evaluates the nodes in
//! order and frees each value after its last use. A state value (a `State` read, or a
//! `WriteState`'s result) borrows the state's buffer when no later write of that state follows
//! in the graph, else it is a snapshot (settled decision 13). Buffers and the in-place state
//! write live in `buffer.rs`.

pub(crate) mod attention;
mod buffer;
mod fast;
mod matmul;
mod reference;

/// The fast path's vectorised 2^x over a slice (exposed for its accuracy test).
#[doc(hidden)]
pub use attention::exp2_slice;
pub use buffer::CpuBuffer;
pub(crate) use buffer::{alias_lock, byte_len, checked_numel, cpu_buffer, write_state};

use std::cell::OnceCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use crate::backend::{
    Backend, DeviceBuffer, DeviceInfo, DeviceType, Limits, Pending, Program, RunArgs, RunStats,
};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ir::{Graph, NodeId, Offset, Op, Role};
use crate::shape::{Bindings, fmt_dims};
use crate::tensor::{Storage, StorageRef, Tensor, TensorView};

/// Threads for the fast path: `POLYTENSOR_NUM_THREADS`, else every core.
pub fn default_threads() -> usize {
    std::env::var("POLYTENSOR_NUM_THREADS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Fast,
    Reference,
}

/// The CPU backend.
pub struct CpuBackend {
    mode: Mode,
    threads: usize,
    pool: Option<Arc<rayon::ThreadPool>>,
}

impl CpuBackend {
    /// The fast path on `threads` threads.
    pub fn fast(threads: usize) -> CpuBackend {
        let threads = threads.max(1);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("polytensor-cpu-{i}"))
            .build()
            .ok()
            .map(Arc::new);
        CpuBackend {
            mode: Mode::Fast,
            threads,
            pool,
        }
    }

    /// The f64 reference path (single-threaded plain loops).
    pub fn reference() -> CpuBackend {
        CpuBackend {
            mode: Mode::Reference,
            threads: 1,
            pool: None,
        }
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

impl Backend for CpuBackend {
    fn info(&self) -> DeviceInfo {
        let (name, details) = match self.mode {
            Mode::Fast => (
                format!("CPU: {}", cpu_model()),
                vec![
                    ("threads".to_string(), self.threads.to_string()),
                    (
                        "matmul".to_string(),
                        "gemm crate (f16/bf16 via F16C block conversion)".to_string(),
                    ),
                ],
            ),
            Mode::Reference => (
                "CPU reference (f64 loops)".to_string(),
                vec![("threads".to_string(), "1".to_string())],
            ),
        };
        DeviceInfo {
            name,
            backend: "cpu".to_string(),
            api: "native".to_string(),
            device_type: DeviceType::Cpu,
            software: false,
            dtypes: DType::ALL.to_vec(),
            limits: Limits {
                max_buffer_bytes: isize::MAX as u64,
                max_binding_bytes: isize::MAX as u64,
            },
            details,
        }
    }

    fn supports(&self, graph: &Graph, node: NodeId) -> std::result::Result<(), String> {
        graph.node(node).map_err(|e| e.to_string())?;
        Ok(())
    }

    fn upload(&self, tensor: TensorView<'_>) -> Result<Arc<dyn DeviceBuffer>> {
        Ok(Arc::new(CpuBuffer {
            tensor: RwLock::new(tensor.to_tensor()),
        }))
    }

    fn zeros(&self, shape: &[usize], dtype: DType) -> Result<Arc<dyn DeviceBuffer>> {
        let numel = checked_numel(shape, dtype).ok_or_else(|| Error::InvalidArgument {
            op: "zeros",
            msg: format!(
                "a {dtype} tensor of shape {} has too many elements to address",
                fmt_dims(shape)
            ),
        })?;
        let storage = Storage::try_zeros(dtype, numel)?;
        Ok(Arc::new(CpuBuffer {
            tensor: RwLock::new(Tensor::from_storage(shape, storage)?),
        }))
    }

    fn compile(&self, graph: &Graph) -> Result<Box<dyn Program>> {
        for i in 0..graph.nodes().len() {
            if let Err(why) = self.supports(graph, NodeId(i)) {
                return Err(Error::Unsupported(format!(
                    "%{i} ({}) on the CPU: {why}",
                    graph.nodes()[i].op.name()
                )));
            }
        }
        Ok(Box::new(CpuProgram {
            plan: Plan::new(graph),
            mode: self.mode,
            threads: self.threads,
            pool: self.pool.clone(),
            stats: Mutex::new(RunStats::default()),
        }))
    }
}

/// What a run needs to know about the graph beyond its nodes.
pub(crate) struct Plan {
    pub graph: Graph,
    /// The last node that reads each node (or `usize::MAX` for outputs, kept to the end).
    pub last_use: Vec<usize>,
    /// For a `State` read or a `WriteState` value that no later write of the same state follows:
    /// the index (into `alias_states`) of the state whose storage the value borrows instead of
    /// copying (settled decision 13). Other nodes: `None`, and such a state value is a snapshot.
    pub alias: Vec<Option<usize>>,
    /// The states some value aliases, each once: a run holds one read lock on each, taken after
    /// the state's last write, so no write ever waits on a lock of the same run.
    pub alias_states: Vec<String>,
}

impl Plan {
    fn new(graph: &Graph) -> Plan {
        let n = graph.nodes().len();
        let mut last_use = vec![0; n];
        let mut last_write: HashMap<&str, usize> = HashMap::new();
        for (i, node) in graph.nodes().iter().enumerate() {
            last_use[i] = i;
            for &j in &node.inputs {
                last_use[j.0] = i;
            }
            if let Role::WriteState { name, .. } = node.op.role() {
                last_write.insert(name, i);
            }
        }
        for (_, id) in graph.outputs() {
            last_use[id.0] = usize::MAX;
        }
        let mut alias = vec![None; n];
        let mut alias_states: Vec<String> = Vec::new();
        for (i, node) in graph.nodes().iter().enumerate() {
            let name = match node.op.role() {
                Role::State(name) if last_write.get(name).is_none_or(|&w| w < i) => name,
                Role::WriteState { name, .. } if last_write.get(name) == Some(&i) => name,
                Role::Input(_)
                | Role::Weight(_)
                | Role::State(_)
                | Role::Constant(_)
                | Role::WriteState { .. }
                | Role::Compute => continue,
            };
            let slot = match alias_states.iter().position(|s| s == name) {
                Some(k) => k,
                None => {
                    alias_states.push(name.to_string());
                    alias_states.len() - 1
                }
            };
            alias[i] = Some(slot);
        }
        Plan {
            graph: graph.clone(),
            last_use,
            alias,
            alias_states,
        }
    }

    /// Every node's concrete shape under `bindings`.
    fn shapes(&self, bindings: &Bindings) -> Result<Vec<Vec<usize>>> {
        self.graph
            .nodes()
            .iter()
            .map(|n| n.shape.resolve(bindings))
            .collect()
    }
}

/// A value during a run: borrowed (an input or a weight) or computed.
pub(crate) enum Val<'a> {
    Ref(StorageRef<'a>),
    Own(Storage),
}

impl Val<'_> {
    fn get(&self) -> StorageRef<'_> {
        match self {
            Val::Ref(r) => *r,
            Val::Own(s) => s.as_ref(),
        }
    }
}

/// Splits `shape` around `axis` into (outer, axis length, inner) element counts.
pub(crate) fn split_axis(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    let outer = shape[..axis].iter().product();
    let inner = shape[axis + 1..].iter().product();
    (outer, shape[axis], inner)
}

fn resolve_offset(offset: &Offset, bindings: &Bindings) -> Result<usize> {
    match offset {
        Offset::Fixed(n) => Ok(*n),
        Offset::Sym(name) => bindings.get(name),
    }
}

struct CpuProgram {
    plan: Plan,
    mode: Mode,
    threads: usize,
    pool: Option<Arc<rayon::ThreadPool>>,
    /// The counts of the latest completed run.
    stats: Mutex<RunStats>,
}

struct Done(Vec<Tensor>);

impl Pending for Done {
    fn wait(self: Box<Self>) -> Result<Vec<Tensor>> {
        Ok(self.0)
    }
}

impl Program for CpuProgram {
    fn submit<'a>(&'a self, args: RunArgs<'a>) -> Result<Box<dyn Pending + 'a>> {
        // The CPU computes during submit: its "device" is the calling thread and the pool.
        let mut stats = RunStats::default();
        let out = match (self.mode, &self.pool) {
            (Mode::Fast, Some(pool)) => pool.install(|| self.run_fast(&args, &mut stats)),
            (Mode::Fast, None) => self.run_fast(&args, &mut stats),
            (Mode::Reference, _) => reference::run(&self.plan, &args, &mut stats),
        }?;
        *self.stats.lock().unwrap_or_else(|e| e.into_inner()) = stats;
        Ok(Box::new(Done(out)))
    }

    /// `state_elements_written`: elements stored by state writes; `bytes_copied`: bytes of
    /// state snapshots (a state value that a later write of the same state follows; other state
    /// values borrow the state); `bytes_read_back`: bytes copied into outputs from borrowed data
    /// (inputs, weights, states). Launches and passes stay empty: the CPU runs no kernels.
    fn stats(&self) -> RunStats {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl CpuProgram {
    fn run_fast(&self, args: &RunArgs<'_>, stats: &mut RunStats) -> Result<Vec<Tensor>> {
        let plan = &self.plan;
        let nodes = plan.graph.nodes();
        let shapes = plan.shapes(args.bindings)?;
        // Weights are borrowed for the whole run under read locks.
        let mut guards = Vec::new();
        for node in nodes {
            if let Role::Weight(name) = node.op.role() {
                let buf = args.weights.get(name).ok_or_else(|| Error::UnknownWeight {
                    name: name.to_string(),
                    known: String::new(),
                })?;
                guards.push(cpu_buffer(buf, name)?.read_lock());
            }
        }
        // One read lock per aliased state, taken at its first aliased value (after the state's
        // last write of the graph) and held to the end of the run.
        let state_guards: Vec<OnceCell<RwLockReadGuard<'_, Tensor>>> =
            plan.alias_states.iter().map(|_| OnceCell::new()).collect();
        let mut weights = guards.iter();
        let mut vals: Vec<Option<Val<'_>>> = Vec::with_capacity(nodes.len());
        for (i, node) in nodes.iter().enumerate() {
            let val = match node.op.role() {
                Role::Input(name) => {
                    let v = args.inputs.get(name).ok_or_else(|| Error::MissingInput {
                        name: name.to_string(),
                        shape: node.shape.to_string(),
                        dtype: node.dtype,
                    })?;
                    Val::Ref(v.data())
                }
                Role::Weight(_) => match weights.next() {
                    Some(g) => Val::Ref(g.storage().as_ref()),
                    None => return Err(Error::InvalidGraph("weight lock lost".to_string())),
                },
                Role::State(name) => {
                    let buf = self.state(args, name)?;
                    match plan.alias[i] {
                        Some(slot) => Val::Ref(alias_lock(&state_guards[slot], buf)),
                        None => {
                            // A later write follows: this read is a snapshot at its position.
                            let snapshot = buf.read_lock().storage().clone();
                            stats.bytes_copied += byte_len(snapshot.as_ref());
                            Val::Own(snapshot)
                        }
                    }
                }
                Role::WriteState { name, axis, offset } => {
                    let off = resolve_offset(offset, args.bindings)?;
                    let value = vals[node.inputs[0].0].as_ref().map(Val::get);
                    let value =
                        value.ok_or_else(|| Error::InvalidGraph(format!("%{i}: operand freed")))?;
                    let buf = self.state(args, name)?;
                    {
                        let mut t = buf.write_lock();
                        let vshape = &shapes[node.inputs[0].0];
                        write_state(name, &mut t, value, vshape, axis, off)?;
                    }
                    stats.state_elements_written += value.len() as u64;
                    if plan.last_use[i] == i {
                        // Nothing reads the state after the write.
                        Val::Own(Storage::zeros(node.dtype, 0))
                    } else if let Some(slot) = plan.alias[i] {
                        Val::Ref(alias_lock(&state_guards[slot], buf))
                    } else {
                        // A later write of the same state follows: copy this one's result.
                        let snapshot = buf.read_lock().storage().clone();
                        stats.bytes_copied += byte_len(snapshot.as_ref());
                        Val::Own(snapshot)
                    }
                }
                // A reshape shares its operand's storage: a borrowed operand stays borrowed, an
                // owned one is moved when this is its last reader, else copied.
                Role::Compute if matches!(node.op, Op::Reshape { .. }) => {
                    let j = node.inputs[0].0;
                    match vals[j].take() {
                        Some(Val::Ref(r)) => {
                            vals[j] = Some(Val::Ref(r));
                            Val::Ref(r)
                        }
                        Some(Val::Own(s)) if plan.last_use[j] == i => Val::Own(s),
                        Some(Val::Own(s)) => {
                            let copy = s.clone();
                            vals[j] = Some(Val::Own(s));
                            Val::Own(copy)
                        }
                        None => {
                            return Err(Error::InvalidGraph(format!("%{i}: operand %{j} freed")));
                        }
                    }
                }
                Role::Constant(_) | Role::Compute => {
                    let mut ins = Vec::with_capacity(node.inputs.len());
                    for j in &node.inputs {
                        let v = vals[j.0].as_ref().ok_or_else(|| {
                            Error::InvalidGraph(format!("%{i}: operand %{} freed", j.0))
                        })?;
                        ins.push((v.get(), shapes[j.0].as_slice()));
                    }
                    Val::Own(fast::eval(
                        node,
                        &ins,
                        &shapes[i],
                        self.threads,
                        args.seed,
                        args.counter,
                        args.bindings,
                    )?)
                }
            };
            vals.push(Some(val));
            for j in &node.inputs {
                if plan.last_use[j.0] == i {
                    vals[j.0] = None;
                }
            }
        }
        let outputs = plan.graph.outputs();
        let mut result = Vec::with_capacity(outputs.len());
        for (k, (_, id)) in outputs.iter().enumerate() {
            let last = !outputs[k + 1..].iter().any(|(_, o)| o == id);
            let storage = match vals[id.0].take() {
                Some(Val::Own(s)) if last => s,
                Some(v) => {
                    let s = v.get().to_owned();
                    if matches!(v, Val::Ref(_)) {
                        stats.bytes_read_back += byte_len(s.as_ref());
                    }
                    vals[id.0] = Some(v);
                    s
                }
                None => return Err(Error::InvalidGraph(format!("output %{} freed", id.0))),
            };
            result.push(Tensor::from_storage(&shapes[id.0], storage)?);
        }
        Ok(result)
    }

    fn state<'a>(&self, args: &RunArgs<'a>, name: &str) -> Result<&'a CpuBuffer> {
        let buf = args.states.get(name).ok_or_else(|| Error::UnknownState {
            name: name.to_string(),
            known: String::new(),
        })?;
        cpu_buffer(buf, name)
    }
}

/// Converts storage to `dtype` with the cast op's rules (used when loading weights).
pub fn cast_storage(x: StorageRef<'_>, to: DType) -> Storage {
    fast::cast(x, to)
}
