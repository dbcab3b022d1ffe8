//! The wgpu backend: one device per wgpu adapter on every API wgpu exposes (Vulkan, Metal, DX12,
//! GL), running WGSL kernels from `shaders/`. Devices are opened lazily, on the first upload or
//! compile, with the adapter's real limits and the features it has.

mod context;
mod kernels;
mod layout;
mod program;
mod run;

use std::any::Any;
use std::sync::{Arc, OnceLock};

use crate::backend::{Backend, Device, DeviceBuffer, DeviceInfo, DeviceType, Limits, Program};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ir::{Graph, NodeId, Op};
use crate::tensor::{Tensor, TensorView};

pub(crate) use context::Ctx;

/// One wgpu adapter as a polytensor backend.
pub struct WgpuBackend {
    adapter: wgpu::Adapter,
    info: DeviceInfo,
    ctx: OnceLock<std::result::Result<Arc<Ctx>, String>>,
    /// A lower binding limit than the adapter's, to exercise the limit paths in tests.
    binding_limit: u64,
    /// Features the device must be opened with, beyond those polytensor uses when present.
    extra_features: wgpu::Features,
    /// What the kernel planners know about the adapter.
    class: kernels::Class,
}

fn device_type(t: wgpu::DeviceType) -> DeviceType {
    match t {
        wgpu::DeviceType::DiscreteGpu => DeviceType::DiscreteGpu,
        wgpu::DeviceType::IntegratedGpu => DeviceType::IntegratedGpu,
        wgpu::DeviceType::VirtualGpu => DeviceType::VirtualGpu,
        wgpu::DeviceType::Cpu => DeviceType::Cpu,
        wgpu::DeviceType::Other => DeviceType::Other,
    }
}

fn api_name(b: wgpu::Backend) -> &'static str {
    match b {
        wgpu::Backend::Vulkan => "Vulkan",
        wgpu::Backend::Metal => "Metal",
        wgpu::Backend::Dx12 => "DX12",
        wgpu::Backend::Gl => "GL",
        wgpu::Backend::BrowserWebGpu => "WebGPU",
        wgpu::Backend::Noop => "noop",
    }
}

impl WgpuBackend {
    fn new(adapter: wgpu::Adapter, binding_limit: Option<u64>) -> WgpuBackend {
        let ai = adapter.get_info();
        let limits = adapter.limits();
        let features = adapter.features();
        let api = api_name(ai.backend);
        let has = |f| if features.contains(f) { "yes" } else { "no" };
        let binding = binding_limit.unwrap_or(limits.max_storage_buffer_binding_size);
        let details = vec![
            (
                "driver".to_string(),
                format!("{} {}", ai.driver, ai.driver_info)
                    .trim()
                    .to_string(),
            ),
            (
                "16-bit storage".to_string(),
                "packed two per u32, integer encode/decode (every adapter)".to_string(),
            ),
            (
                "native f16 math".to_string(),
                format!(
                    "{} (SHADER_F16; not used: compute is f32)",
                    has(wgpu::Features::SHADER_F16)
                ),
            ),
            (
                "subgroups".to_string(),
                if features.contains(wgpu::Features::SUBGROUP) {
                    format!(
                        "yes, size {}..{}",
                        ai.subgroup_min_size, ai.subgroup_max_size
                    )
                } else {
                    "no".to_string()
                },
            ),
            (
                "timestamp queries".to_string(),
                has(wgpu::Features::TIMESTAMP_QUERY).to_string(),
            ),
            (
                "workgroup".to_string(),
                format!(
                    "{} invocations, {} KiB shared",
                    limits.max_compute_invocations_per_workgroup,
                    limits.max_compute_workgroup_storage_size / 1024
                ),
            ),
        ];
        let software = ai.device_type == wgpu::DeviceType::Cpu;
        let info = DeviceInfo {
            name: format!("{} [{api}]", ai.name),
            backend: "wgpu".to_string(),
            api: api.to_string(),
            device_type: device_type(ai.device_type),
            software,
            dtypes: DType::ALL.to_vec(),
            limits: Limits {
                max_buffer_bytes: limits.max_buffer_size,
                max_binding_bytes: binding,
            },
            details,
        };
        let class = kernels::Class {
            cpu: software && !kernels_override().unwrap_or(false),
            subgroups: features
                .contains(wgpu::Features::SUBGROUP)
                .then_some((ai.subgroup_min_size, ai.subgroup_max_size)),
            max_invocations: limits.max_compute_invocations_per_workgroup,
            workgroup_bytes: limits.max_compute_workgroup_storage_size,
            binding_limit: binding,
            offset_align: u64::from(limits.min_storage_buffer_offset_alignment),
            compile_lock: ai.backend == wgpu::Backend::Gl,
        };
        WgpuBackend {
            adapter,
            info,
            ctx: OnceLock::new(),
            binding_limit: binding,
            extra_features: wgpu::Features::empty(),
            class,
        }
    }

    /// The opened device (opened on first use).
    pub(crate) fn ctx(&self) -> Result<Arc<Ctx>> {
        self.ctx
            .get_or_init(|| {
                kernels_override()?;
                Ctx::new(&self.adapter, &self.info.name, self.extra_features)
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            })
            .clone()
            .map_err(|msg| Error::Device {
                device: self.info.name.clone(),
                msg,
            })
    }

    /// The same adapter as a new device whose storage-binding limit is `bytes` (tests use a small
    /// limit to exercise the over-limit paths without allocating 128 MiB).
    pub fn with_binding_limit(&self, bytes: u64) -> WgpuBackend {
        WgpuBackend::new(self.adapter.clone(), Some(bytes))
    }
}

/// Every wgpu adapter as a device (cached: enumeration is slow). `POLYTENSOR_WGPU=0` disables
/// the backend.
pub fn devices() -> Vec<Device> {
    static LIST: OnceLock<Vec<Device>> = OnceLock::new();
    LIST.get_or_init(|| {
        if std::env::var("POLYTENSOR_WGPU").is_ok_and(|v| v == "0") {
            return Vec::new();
        }
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
        adapters
            .into_iter()
            .map(|a| Device::new(Arc::new(WgpuBackend::new(a, None))))
            .collect()
    })
    .clone()
}

/// A tensor in device memory, in the device layout (`layout.rs`).
pub struct WgpuBuffer {
    pub(crate) buffer: wgpu::Buffer,
    shape: Vec<usize>,
    dtype: DType,
    ctx: Arc<Ctx>,
}

impl DeviceBuffer for WgpuBuffer {
    fn shape(&self) -> Vec<usize> {
        self.shape.clone()
    }
    fn dtype(&self) -> DType {
        self.dtype
    }
    fn read(&self) -> Result<Tensor> {
        let bytes = layout::device_bytes(self.dtype, &self.shape);
        let staging = self.ctx.staging(bytes);
        self.ctx.scoped(|| {
            let mut enc = self.ctx.device.create_command_encoder(&Default::default());
            enc.copy_buffer_to_buffer(&self.buffer, 0, &staging, 0, bytes);
            self.ctx.queue.submit([enc.finish()]);
            Ok(())
        })?;
        let data = self.ctx.read_back(&[(&staging, bytes)])?;
        layout::from_device(&data[0], self.dtype, &self.shape)
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn write(&self, tensor: TensorView<'_>) -> Result<bool> {
        if tensor.shape() != self.shape.as_slice() || tensor.dtype() != self.dtype {
            return Ok(false);
        }
        // Every device call in an error scope: its errors come back here (decision 7).
        self.ctx.scoped(|| {
            let image = layout::to_device(tensor.data(), tensor.shape());
            if !image.is_empty() {
                self.ctx.queue.write_buffer(&self.buffer, 0, &image);
            }
            Ok(true)
        })
    }
    fn clear(&self) -> Result<bool> {
        self.ctx.scoped(|| {
            let mut enc = self.ctx.device.create_command_encoder(&Default::default());
            enc.clear_buffer(&self.buffer, 0, None);
            self.ctx.queue.submit([enc.finish()]);
            Ok(true)
        })
    }
}

impl Backend for WgpuBackend {
    fn info(&self) -> DeviceInfo {
        self.info.clone()
    }

    fn supports(&self, graph: &Graph, node: NodeId) -> std::result::Result<(), String> {
        let n = graph.node(node).map_err(|e| e.to_string())?;
        // The maxima of this node and its operands only (placement asks for every node).
        let mut maxima: Vec<Vec<usize>> = vec![Vec::new(); graph.nodes().len()];
        for &j in n.inputs.iter().chain(std::iter::once(&node)) {
            maxima[j.0] = graph.node(j).map_err(|e| e.to_string())?.shape.max_dims();
        }
        kernels::supports(&program::view(graph, node.0, &maxima), &self.class)
    }

    fn upload(&self, tensor: TensorView<'_>) -> Result<Arc<dyn DeviceBuffer>> {
        let ctx = self.ctx()?;
        let bytes = layout::device_bytes(tensor.dtype(), tensor.shape());
        let buffer = ctx.scoped(|| {
            let buffer = ctx.storage(bytes, "tensor")?;
            let image = layout::to_device(tensor.data(), tensor.shape());
            if !image.is_empty() {
                ctx.queue.write_buffer(&buffer, 0, &image);
            }
            Ok(buffer)
        })?;
        Ok(Arc::new(WgpuBuffer {
            buffer,
            shape: tensor.shape().to_vec(),
            dtype: tensor.dtype(),
            ctx,
        }))
    }

    fn as_any(&self) -> Option<&dyn Any> {
        Some(self)
    }

    fn zeros(&self, shape: &[usize], dtype: DType) -> Result<Arc<dyn DeviceBuffer>> {
        let ctx = self.ctx()?;
        let count = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let bytes = count.and_then(|n| n.checked_mul(dtype.size_of()).map(|_| n));
        if bytes.is_none() {
            return Err(Error::LimitExceeded {
                what: format!("state {dtype}{} elements", crate::shape::fmt_dims(shape)),
                value: u64::MAX,
                limit: ctx.limits.max_buffer_size,
                device: self.info.name.clone(),
            });
        }
        // wgpu zero-fills new buffers: no host tensor, no upload.
        let buffer = ctx.scoped(|| ctx.storage(layout::device_bytes(dtype, shape), "state"))?;
        Ok(Arc::new(WgpuBuffer {
            buffer,
            shape: shape.to_vec(),
            dtype,
            ctx,
        }))
    }

    fn compile(&self, graph: &Graph) -> Result<Box<dyn Program>> {
        for i in 0..graph.nodes().len() {
            if let Err(why) = self.supports(graph, NodeId(i)) {
                return Err(Error::Unsupported(format!(
                    "%{i} ({}) on {}: {why}",
                    graph.nodes()[i].op.name(),
                    self.info.name
                )));
            }
        }
        let ctx = self.ctx()?;
        // On CPU-emulated adapters with 8-wide subgroups the f32 subgroup kernel beats every
        // 16-bit one (each 16-bit element would be decoded once per use): widen the operands
        // once, multiply in f32, and round the result once with the node's own rounding.
        let widened;
        let graph = if self.class.cpu && self.class.subgroups == Some((8, 8)) {
            widened = widen_16bit_matmuls(graph, self.binding_limit)?;
            &widened
        } else {
            graph
        };
        let program = ctx.scoped(|| program::WgpuProgram::new(ctx.clone(), graph, self.class))?;
        Ok(Box::new(program))
    }
}

/// The opened wgpu device behind `device` (for the test hooks).
fn opened(device: &Device) -> Result<Arc<Ctx>> {
    device
        .backend()
        .as_any()
        .and_then(|b| b.downcast_ref::<WgpuBackend>())
        .ok_or_else(|| Error::Unsupported("not a wgpu device".to_string()))?
        .ctx()
}

/// Test hook: makes wgpu report a validation error inside a run's error scope on `device`'s
/// wgpu device (a bind group missing its entries), and returns what that scope caught. Other
/// sessions on the device must not see the error.
#[doc(hidden)]
pub fn validation_error_in_a_run(device: &Device) -> Result<()> {
    let ctx = opened(device)?;
    ctx.scoped(|| {
        let layout = ctx.layout(&vec![true]);
        let _ = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("deliberately invalid"),
            layout: &layout,
            entries: &[],
        });
        Ok(())
    })
}

/// Test hook: a readback of two buffers where the second cannot map (it is mapped already)
/// must fail and leave the first unmapped, so that it reads again. Returns the second,
/// successful read of the first buffer.
#[doc(hidden)]
pub fn readback_after_a_failed_map(device: &Device) -> Result<Vec<u8>> {
    let ctx = opened(device)?;
    let (first, second) = (ctx.staging(16), ctx.staging(16));
    ctx.read_back(&[(&second, 16)])?;
    // Map `second` and keep it mapped: the next readback of it fails.
    second.map_async(wgpu::MapMode::Read, 0..16, |_| {});
    ctx.device
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| Error::Device {
            device: ctx.name.clone(),
            msg: e.to_string(),
        })?;
    if ctx.read_back(&[(&first, 16), (&second, 16)]).is_ok() {
        return Err(Error::Device {
            device: ctx.name.clone(),
            msg: "mapping a mapped buffer succeeded".to_string(),
        });
    }
    second.unmap();
    ctx.read_back(&[(&first, 16)]).map(|mut v| v.remove(0))
}

/// `POLYTENSOR_KERNELS`: `gpu` forces the kernel classes meant for real GPUs (workgroup
/// memory) on CPU-emulated adapters too; unset, empty or `auto` chooses by adapter.
fn kernels_override() -> std::result::Result<bool, String> {
    match std::env::var("POLYTENSOR_KERNELS") {
        Ok(v) if v == "gpu" => Ok(true),
        Ok(v) if v.is_empty() || v == "auto" => Ok(false),
        Ok(v) => Err(format!("POLYTENSOR_KERNELS={v}: expected `auto` or `gpu`")),
        Err(_) => Ok(false),
    }
}

/// Rewrites each f16/bf16 matmul as cast-to-f32 operands → f32 matmul → cast back with the
/// matmul's rounding: the same f32 accumulation of the same exactly widened values, stored with
/// one rounding, so results are unchanged. Skipped when a widened operand would exceed `limit`.
fn widen_16bit_matmuls(graph: &Graph, limit: u64) -> Result<Graph> {
    use crate::ir::Node;
    let fits = |n: &Node| layout::device_bytes(DType::F32, &n.shape.max_dims()) <= limit;
    if !graph
        .nodes()
        .iter()
        .any(|n| matches!(n.op, Op::MatMul { .. }) && n.dtype.size_of() == 2)
    {
        return Ok(graph.clone());
    }
    let mut out = Graph::new();
    let mut map: Vec<NodeId> = Vec::with_capacity(graph.nodes().len());
    for node in graph.nodes() {
        let ins: Vec<NodeId> = node.inputs.iter().map(|j| map[j.0]).collect();
        let operands_fit = node
            .inputs
            .iter()
            .all(|j| graph.nodes().get(j.0).is_some_and(fits));
        // Decode's matrix-vector products (at most 4 output rows) keep the 16-bit kernel: it
        // reads the weight once as stored, where widening would write it out again in f32 every
        // call (lavapipe, SmolLM2-shaped bf16 decode: 1.72 → 1.94 tok/s, 1418 → 785 launches).
        let dims = node.shape.max_dims();
        let rows: usize = dims[..dims.len().saturating_sub(1)].iter().product();
        let id = if matches!(node.op, Op::MatMul { .. })
            && node.dtype.size_of() == 2
            && rows > 4
            && fits(node)
            && operands_fit
        {
            let a = out.cast(ins[0], DType::F32)?;
            let b = out.cast(ins[1], DType::F32)?;
            let m = out.op(node.op.clone(), vec![a, b])?;
            out.cast_with(m, node.dtype, node.rounding)?
        } else {
            out.push(Node {
                inputs: ins,
                ..node.clone()
            })
        };
        map.push(id);
    }
    for (name, id) in graph.outputs() {
        out.output(name, map[id.0])?;
    }
    Ok(out)
}

/// Every wgpu adapter again, as devices whose storage-binding limit is `bytes` (for tests of
/// the over-limit paths with small tensors).
pub fn devices_with_binding_limit(bytes: u64) -> Vec<Device> {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()))
        .into_iter()
        .map(|a| Device::new(Arc::new(WgpuBackend::new(a, Some(bytes)))))
        .collect()
}

/// Every wgpu adapter again, as devices that must be opened with `features` (beyond those
/// polytensor uses when present). Opening happens at the first upload or compile; an adapter that
/// refuses gives `Error::Device` naming it there, and other devices are unaffected.
pub fn devices_requiring(features: wgpu::Features) -> Vec<Device> {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()))
        .into_iter()
        .map(|a| {
            let mut b = WgpuBackend::new(a, None);
            b.extra_features = features;
            Device::new(Arc::new(b))
        })
        .collect()
}

/// One specialisation of a shader, for validation with naga in tests.
pub struct ShaderVariant {
    /// `shader/entry`.
    pub label: String,
    /// The full WGSL.
    pub source: String,
    pub entry: &'static str,
    /// Override constants.
    pub constants: Vec<(&'static str, f64)>,
    /// Uses subgroup operations (validated with that capability; not for GL).
    pub subgroups: bool,
}

/// Exactly the pipeline keys the kernel planners draw from (every family's `all_keys()`), so a
/// test can validate each with naga without a GPU.
pub fn shader_variants() -> Vec<ShaderVariant> {
    kernels::all_keys()
        .into_iter()
        .map(|k| ShaderVariant {
            label: format!("{}/{}", k.shader.name, k.entry),
            source: k.shader.source(),
            entry: k.entry,
            constants: k
                .constants
                .iter()
                .map(|&(n, v)| (n, f64::from(v)))
                .collect(),
            subgroups: k.shader.subgroups,
        })
        .collect()
}
