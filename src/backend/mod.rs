//! The backend plugin trait and the device registry.
//!
//! A backend is an object-safe trait, so a crate outside polytensor can implement it and register
//! its devices at run time with [`register_device`]. [`Device::list`] enumerates every usable
//! device; [`Device::auto`] picks the best one, and `POLYTENSOR_DEVICE` overrides the choice.

pub mod cpu;
pub mod wgpu;

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock, RwLock};

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ir::{Graph, NodeId};
use crate::shape::Bindings;
use crate::tensor::{Tensor, TensorView};

/// What kind of processor a device is. Ranked by `Device::auto` in this order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeviceType {
    DiscreteGpu,
    IntegratedGpu,
    VirtualGpu,
    /// A CPU: polytensor's own CPU backend, or a GPU API emulated on the CPU (see
    /// [`DeviceInfo::software`]).
    Cpu,
    Other,
}

impl fmt::Display for DeviceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeviceType::DiscreteGpu => "discrete GPU",
            DeviceType::IntegratedGpu => "integrated GPU",
            DeviceType::VirtualGpu => "virtual GPU",
            DeviceType::Cpu => "CPU",
            DeviceType::Other => "other",
        })
    }
}

/// Limits a backend checks in `supports` and reports in `polytensor devices`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest single buffer, in bytes.
    pub max_buffer_bytes: u64,
    /// Largest range one kernel binding may cover, in bytes.
    pub max_binding_bytes: u64,
}

/// A device's description.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceInfo {
    /// Human-readable name (adapter or CPU model).
    pub name: String,
    /// The backend that drives it (`cpu`, `wgpu`, or a third party's name).
    pub backend: String,
    /// The API under the backend (`native`, `Vulkan`, `GL`, `Metal`, ...).
    pub api: String,
    pub device_type: DeviceType,
    /// A GPU API implemented in software on the CPU (lavapipe, llvmpipe, WARP): listed and
    /// selectable, never picked by `auto` over the CPU backend.
    pub software: bool,
    /// Storage dtypes the device runs.
    pub dtypes: Vec<DType>,
    pub limits: Limits,
    /// Backend-specific facts for `polytensor devices` (threads, features, driver, ...).
    pub details: Vec<(String, String)>,
}

impl DeviceInfo {
    /// `auto`'s preference: higher is better. Software GPU adapters rank below the CPU backend.
    pub fn rank(&self) -> u32 {
        if self.software {
            return 0;
        }
        match self.device_type {
            DeviceType::DiscreteGpu => 4,
            DeviceType::IntegratedGpu => 3,
            DeviceType::VirtualGpu => 2,
            DeviceType::Cpu => 1,
            DeviceType::Other => 0,
        }
    }
}

/// A device memory buffer holding one tensor (a weight or a state).
pub trait DeviceBuffer: Send + Sync + Any {
    /// The tensor's shape.
    fn shape(&self) -> Vec<usize>;
    /// The tensor's dtype.
    fn dtype(&self) -> DType;
    /// Copies the contents back to the host. May fail when the device is lost.
    fn read(&self) -> Result<Tensor>;
    /// For the owning backend's downcast.
    fn as_any(&self) -> &dyn Any;
    /// Overwrites the contents in place with a tensor of the same shape and dtype (the caller
    /// checks them). `Ok(false)` when the backend cannot, and the caller uploads a new buffer.
    fn write(&self, tensor: TensorView<'_>) -> Result<bool> {
        let _ = tensor;
        Ok(false)
    }
    /// Sets every element to zero in place. `Ok(false)` when the backend cannot.
    fn clear(&self) -> Result<bool> {
        Ok(false)
    }
}

/// One kernel launch of a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchStat {
    /// `shader/entry`, with `+aligned` for an aligned variant.
    pub kernel: Arc<str>,
    /// Workgroups dispatched in x, y, z.
    pub grid: [u32; 3],
}

/// What a compile or a run did, counted (not timed): tests assert cost with these, benchmarks
/// time it. Backends fill what applies to them; the rest stays zero.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunStats {
    /// Pipelines (shader specialisations) built.
    pub pipelines_built: u64,
    /// Bind groups created.
    pub bind_groups_created: u64,
    /// Kernel launches of a run, in order: which kernel and its grid of workgroups (empty in
    /// totals over many runs, which keep only `launch_count`).
    pub launches: Vec<LaunchStat>,
    /// Kernel launches, counted.
    pub launch_count: u64,
    /// Compute passes recorded.
    pub passes: u64,
    /// Bytes a run wrote from the host into device memory (inputs, params).
    pub bytes_uploaded: u64,
    /// Bytes copied from one device buffer to another (snapshots, state reads that copy).
    pub bytes_copied: u64,
    /// Bytes read back to the host.
    pub bytes_read_back: u64,
    /// Elements written into persistent states by `write_state`.
    pub state_elements_written: u64,
    /// Device time of the run's compute passes in ns, from GPU timestamp queries: set when the
    /// session asked for it ([`Session::set_gpu_timing`](crate::Session::set_gpu_timing)) and
    /// the device has timestamp queries; `None` otherwise.
    pub gpu_ns: Option<u64>,
}

impl RunStats {
    /// Adds `other` to these: counts, and `other`'s launches after these (the segments of one
    /// run).
    pub fn add(&mut self, other: &RunStats) {
        self.launches.extend_from_slice(&other.launches);
        self.add_counts(other);
    }

    /// Adds `other`'s counts only, not its list of launches (totals over many runs stay small).
    pub fn add_counts(&mut self, other: &RunStats) {
        self.pipelines_built += other.pipelines_built;
        self.bind_groups_created += other.bind_groups_created;
        self.launch_count += other.launch_count;
        self.passes += other.passes;
        self.bytes_uploaded += other.bytes_uploaded;
        self.bytes_copied += other.bytes_copied;
        self.bytes_read_back += other.bytes_read_back;
        self.state_elements_written += other.state_elements_written;
        self.gpu_ns = match (self.gpu_ns, other.gpu_ns) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
    }
}

/// Everything one run of a program needs.
pub struct RunArgs<'a> {
    /// Input views by name, already checked against the graph's declared shapes and dtypes.
    pub inputs: &'a HashMap<String, TensorView<'a>>,
    /// Values of every symbolic dimension and per-run scalar of the graph.
    pub bindings: &'a Bindings,
    /// The session's weights, by name, already checked against the graph.
    pub weights: &'a HashMap<String, Arc<dyn DeviceBuffer>>,
    /// The session's persistent states, by name, already checked against the graph.
    pub states: &'a HashMap<String, Arc<dyn DeviceBuffer>>,
    /// Stochastic-rounding seed and run counter for this run.
    pub seed: u64,
    pub counter: u64,
    /// Record the device time of this run's compute passes (GPU timestamps) in its
    /// [`RunStats::gpu_ns`], where the device can.
    pub gpu_timing: bool,
}

/// A compiled graph, ready to run many times.
pub trait Program: Send + Sync {
    /// Starts a run without waiting for it (a GPU backend encodes and submits; the CPU backend
    /// computes here). Fails on a buffer from another backend or a device error.
    fn submit<'a>(&'a self, args: RunArgs<'a>) -> Result<Box<dyn Pending + 'a>>;
    /// The counts of the latest completed run (before any run: of the compile).
    fn stats(&self) -> RunStats {
        RunStats::default()
    }
}

/// A submitted run.
pub trait Pending {
    /// The completion hook: waits for the device and reads the outputs back, in the order of
    /// the graph's outputs.
    fn wait(self: Box<Self>) -> Result<Vec<Tensor>>;
}

/// A compute backend: one device's capabilities, its buffers and its compiler.
///
/// Object-safe, so a third-party crate can implement it and add a device with
/// [`register_device`].
pub trait Backend: Send + Sync {
    /// The device's description. Required; never fails.
    fn info(&self) -> DeviceInfo;
    /// Whether this device can run node `node` of `graph` (dtypes, shapes against its
    /// limits). `Err` holds the reason. Called on validated graphs only.
    fn supports(&self, graph: &Graph, node: NodeId) -> std::result::Result<(), String>;
    /// Copies a host tensor into a new device buffer (weights and state). Fails on a tensor over
    /// a device limit or out of device memory.
    fn upload(&self, tensor: TensorView<'_>) -> Result<Arc<dyn DeviceBuffer>>;
    /// A new zero-filled buffer (a fresh state). Checks sizes against the device limits before
    /// allocating. The default uploads a host tensor of zeros.
    fn zeros(&self, shape: &[usize], dtype: DType) -> Result<Arc<dyn DeviceBuffer>> {
        self.upload(Tensor::zeros(shape, dtype).view())
    }
    /// Compiles a validated graph whose every node this backend supports.
    fn compile(&self, graph: &Graph) -> Result<Box<dyn Program>>;
    /// The backend itself, for a downcast by code that knows its type (tests, tools).
    fn as_any(&self) -> Option<&dyn Any> {
        None
    }
}

/// A device: a backend and its description. Cheap to clone.
#[derive(Clone)]
pub struct Device {
    backend: Arc<dyn Backend>,
    info: DeviceInfo,
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Device({} [{}/{}])",
            self.info.name, self.info.backend, self.info.api
        )
    }
}

fn registered() -> &'static RwLock<Vec<Device>> {
    static REGISTERED: OnceLock<RwLock<Vec<Device>>> = OnceLock::new();
    REGISTERED.get_or_init(|| RwLock::new(Vec::new()))
}

/// Adds a device driven by a third-party backend; `Device::list` includes it from now on.
pub fn register_device(backend: Arc<dyn Backend>) -> Device {
    let device = Device::new(backend);
    let mut list = registered().write().unwrap_or_else(|e| e.into_inner());
    list.push(device.clone());
    device
}

impl Device {
    /// Wraps a backend as a device (without registering it).
    pub fn new(backend: Arc<dyn Backend>) -> Device {
        let info = backend.info();
        Device { backend, info }
    }

    /// polytensor's fast CPU backend (threads from `POLYTENSOR_NUM_THREADS`, default: all).
    pub fn cpu() -> Device {
        static CPU: OnceLock<Device> = OnceLock::new();
        CPU.get_or_init(|| Device::new(Arc::new(cpu::CpuBackend::fast(cpu::default_threads()))))
            .clone()
    }

    /// The CPU reference backend: plain f64 loops that every test compares against. Never in
    /// `list`; slow by design.
    pub fn reference() -> Device {
        Device::new(Arc::new(cpu::CpuBackend::reference()))
    }

    /// Every usable device: the CPU backend, every wgpu adapter, then registered third-party
    /// devices.
    pub fn list() -> Vec<Device> {
        let mut out = vec![Device::cpu()];
        out.extend(self::wgpu::devices());
        let reg = registered().read().unwrap_or_else(|e| e.into_inner());
        out.extend(reg.iter().cloned());
        out
    }

    /// The best device, or the one `POLYTENSOR_DEVICE` names (`cpu`, an index into `list`, or
    /// a case-insensitive name substring). An unknown name is an `Err` listing the devices.
    pub fn auto() -> Result<Device> {
        let query = std::env::var("POLYTENSOR_DEVICE").ok();
        Device::select(&Device::list(), query.as_deref())
    }

    /// `auto`'s rule over a given list: the device `query` names, or else the highest
    /// [`DeviceInfo::rank`] (the first of equals).
    pub fn select(devices: &[Device], query: Option<&str>) -> Result<Device> {
        let unknown = |q: &str| Error::UnknownDevice {
            query: q.to_string(),
            available: describe(devices),
        };
        match query.map(str::trim).filter(|q| !q.is_empty()) {
            Some(q) => {
                if let Ok(i) = q.parse::<usize>() {
                    return devices.get(i).cloned().ok_or_else(|| unknown(q));
                }
                let ql = q.to_lowercase();
                if let Some(d) = devices
                    .iter()
                    .find(|d| ql == "cpu" && d.info.backend == "cpu")
                {
                    return Ok(d.clone());
                }
                devices
                    .iter()
                    .find(|d| d.info.name.to_lowercase().contains(&ql))
                    .cloned()
                    .ok_or_else(|| unknown(q))
            }
            None => {
                let mut best: Option<&Device> = None;
                for d in devices {
                    if best.is_none_or(|b| d.info.rank() > b.info.rank()) {
                        best = Some(d);
                    }
                }
                best.cloned().ok_or_else(|| unknown("(auto: no devices)"))
            }
        }
    }

    /// The device's description.
    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// The backend behind the device.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }
}

/// One line per device: index, name, backend/API, type.
pub fn describe(devices: &[Device]) -> String {
    devices
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let i2 = &d.info;
            format!(
                "  [{i}] {} ({}/{}, {})",
                i2.name, i2.backend, i2.api, i2.device_type
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}
