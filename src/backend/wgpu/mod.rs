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
        WgpuBackend {
            adapter,
            info,
            ctx: OnceLock::new(),
            binding_limit: binding,
            extra_features: wgpu::Features::empty(),
        }
    }

    /// The opened device (opened on first use).
    pub(crate) fn ctx(&self) -> Result<Arc<Ctx>> {
        self.ctx
            .get_or_init(|| {
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

    /// Whether operand b of matmul node `n` (shape `b`) can be bound in row ranges.
    fn splits(&self, n: &crate::ir::Node, b: &crate::shape::Shape, dtype: DType) -> bool {
        let dims = b.max_dims();
        matches!(
            n.op,
            Op::MatMul {
                transpose_b: true,
                ..
            }
        ) && dims.len() == 2
            && kernels::split_rows(
                dtype,
                dims[1],
                dims[0],
                self.binding_limit,
                u64::from(self.adapter.limits().min_storage_buffer_offset_alignment),
            )
            .is_some()
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
        let mut enc = self.ctx.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(&self.buffer, 0, &staging, 0, bytes);
        self.ctx.queue.submit([enc.finish()]);
        let data = self.ctx.read_back(&[(&staging, bytes)])?;
        layout::from_device(&data[0], self.dtype, &self.shape)
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Backend for WgpuBackend {
    fn info(&self) -> DeviceInfo {
        self.info.clone()
    }

    fn supports(&self, graph: &Graph, node: NodeId) -> std::result::Result<(), String> {
        let n = graph.node(node).map_err(|e| e.to_string())?;
        let limit = self.binding_limit;
        let mut shapes = vec![(&n.shape, n.dtype)];
        for &i in &n.inputs {
            let x = graph.node(i).map_err(|e| e.to_string())?;
            shapes.push((&x.shape, x.dtype));
        }
        for (k, (shape, dtype)) in shapes.iter().enumerate() {
            let bytes = layout::device_bytes(*dtype, &shape.max_dims());
            // A transposed rank-2 matmul weight [N, K] may exceed the limit: it is bound in row
            // ranges, one launch each (settled decision 5).
            if bytes > limit && k == 2 && self.splits(n, shape, *dtype) {
                continue;
            }
            if bytes > limit {
                return Err(format!(
                    "a {dtype}{shape} tensor needs {bytes} bytes, over the storage binding limit {limit}"
                ));
            }
            if shape.rank() > 8 {
                return Err(format!("rank {} over the kernels' maximum 8", shape.rank()));
            }
        }
        match &n.op {
            Op::Cast { to, .. } => {
                let from = shapes[1].1;
                if from.is_float() != to.is_float() {
                    return Err(format!(
                        "cast {from}→{to} between integer and float (WGSL's conversion may round either way)"
                    ));
                }
                Ok(())
            }
            Op::MatMul { .. } => {
                if n.shape.rank() > 6 {
                    return Err("matmul with more than 4 batch dimensions".to_string());
                }
                // Every grid dimension stays under the 65535-workgroup limit (the smallest
                // tiles cover 4 rows and 4 columns; the batch is the z dimension).
                let d = n.shape.max_dims();
                let (m, cols) = (d[d.len() - 2], d[d.len() - 1]);
                let batch: usize = d[..d.len() - 2].iter().product();
                if m.div_ceil(4) > 65535 || cols.div_ceil(4) > 65535 || batch > 65535 {
                    return Err(format!(
                        "matmul output {} over the dispatch grid limits",
                        n.shape
                    ));
                }
                let (a, b) = (&shapes[1].0, &shapes[2].0);
                if a.rank().max(b.rank()) > 6 {
                    return Err("matmul with more than 4 batch dimensions".to_string());
                }
                Ok(())
            }
            Op::Input { .. }
            | Op::Weight { .. }
            | Op::State { .. }
            | Op::Constant { .. }
            | Op::WriteState { .. }
            | Op::Unary(_)
            | Op::Binary(_)
            | Op::Reduce { .. } => Ok(()),
        }
    }

    fn upload(&self, tensor: TensorView<'_>) -> Result<Arc<dyn DeviceBuffer>> {
        let ctx = self.ctx()?;
        let bytes = layout::device_bytes(tensor.dtype(), tensor.shape());
        let buffer = ctx.storage(bytes, "tensor")?;
        let image = layout::to_device(tensor.data(), tensor.shape());
        if !image.is_empty() {
            ctx.queue.write_buffer(&buffer, 0, &image);
        }
        ctx.check()?;
        Ok(Arc::new(WgpuBuffer {
            buffer,
            shape: tensor.shape().to_vec(),
            dtype: tensor.dtype(),
            ctx,
        }))
    }

    fn compile(&self, graph: &Graph) -> Result<Box<dyn Program>> {
        let ctx = self.ctx()?;
        // On CPU-emulated adapters with 8-wide subgroups the f32 subgroup kernel beats every
        // 16-bit one (each 16-bit element would be decoded once per use): widen the operands
        // once, multiply in f32, and round the result once with the node's own rounding.
        let widened;
        let graph = if ctx.software && ctx.subgroup8 {
            widened = widen_16bit_matmuls(graph, self.binding_limit)?;
            &widened
        } else {
            graph
        };
        Ok(Box::new(program::WgpuProgram::new(
            ctx,
            graph,
            self.binding_limit,
        )?))
    }
}

/// Every shader family's full source (prelude + kernels), for validation with naga in tests.
pub fn shader_sources() -> Vec<(String, String)> {
    context::Shader::ALL
        .iter()
        .map(|s| (format!("{s:?}"), s.source()))
        .collect()
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
        let id = if matches!(node.op, Op::MatMul { .. })
            && node.dtype.size_of() == 2
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

/// One specialisation of a shader: (label, WGSL source, entry point, override constants).
pub type ShaderVariant = (String, String, &'static str, Vec<(&'static str, f64)>);

/// Every pipeline variant the backend can build (dtype × op × tile config × alignment), so a
/// test can validate each with naga without a GPU.
pub fn shader_variants() -> Vec<ShaderVariant> {
    use crate::ir::{BinaryOp, ReduceOp, UnaryOp};
    use kernels::{Ew, Tiles};
    let mut keys = Vec::new();
    for sr in [false, true] {
        for d in DType::FLOATS {
            for u in UnaryOp::ALL {
                keys.push(kernels::elementwise_key(Ew::Unary(u), d, d, d, sr));
            }
            for b in BinaryOp::ALL {
                keys.push(kernels::elementwise_key(Ew::Binary(b), d, d, d, sr));
            }
            for r in [ReduceOp::Sum, ReduceOp::Max, ReduceOp::Mean] {
                keys.push(kernels::reduce_key(r, d, d, sr));
            }
            let configs = [
                Tiles {
                    wx: 16,
                    wy: 16,
                    bk: 16,
                    sg8: false,
                },
                Tiles {
                    wx: 8,
                    wy: 8,
                    bk: 8,
                    sg8: false,
                },
                Tiles::direct(64),
            ];
            for tiles in configs {
                for aligned in [false, true] {
                    keys.push(kernels::matmul_key(tiles, d, d, d, aligned, sr));
                }
            }
            if d.size_of() == 2 {
                keys.push(kernels::matmul_vec_key(Tiles::direct(64), d, d, d, sr));
            }
            let sg = Tiles {
                sg8: true,
                ..Tiles::direct(64)
            };
            if d == DType::F32 {
                keys.push(kernels::matmul_sg_key(sg, d, d, d, sr));
            }
        }
        for from in DType::ALL {
            for to in DType::ALL {
                if from.is_float() == to.is_float() {
                    keys.push(kernels::elementwise_key(Ew::Cast, from, from, to, sr));
                }
            }
        }
    }
    for d in DType::ALL {
        keys.push(kernels::state_key(d));
    }
    keys.push(kernels::widen_key(DType::F16));
    keys.push(kernels::widen_key(DType::BF16));
    keys.into_iter()
        .map(|k| {
            let consts = k
                .constants
                .iter()
                .map(|&(n, v)| (n, f64::from(v)))
                .collect();
            (
                format!("{:?}/{}", k.shader, k.entry),
                k.shader.source(),
                k.entry,
                consts,
            )
        })
        .collect()
}
