//! One wgpu device: its queue, limits and features, the pipeline cache (keyed by a typed key:
//! shader, entry point, override constants), buffers, readback, and wgpu errors turned into
//! polytensor `Error`s (an uncaptured-error handler and error scopes: wgpu's default handler
//! panics).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

/// The shader families in `shaders/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Shader {
    Elementwise,
    Matmul,
    MatmulCpu,
    MatmulSg,
    Reduce,
    State,
    Widen,
}

const PRELUDE: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/prelude.wgsl"));
const MATMUL_PARAMS: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/shaders/matmul_params.wgsl"
));

impl Shader {
    /// Every family (for the naga test).
    pub(crate) const ALL: [Shader; 7] = [
        Shader::Elementwise,
        Shader::Matmul,
        Shader::MatmulCpu,
        Shader::MatmulSg,
        Shader::Reduce,
        Shader::State,
        Shader::Widen,
    ];

    fn body(self) -> &'static str {
        match self {
            Shader::Elementwise => include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/shaders/elementwise.wgsl"
            )),
            Shader::Matmul => {
                include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/matmul.wgsl"))
            }
            Shader::MatmulCpu => {
                include_str!(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/shaders/matmul_cpu.wgsl"
                ))
            }
            Shader::MatmulSg => {
                include_str!(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/shaders/matmul_sg.wgsl"
                ))
            }
            Shader::Reduce => {
                include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/reduce.wgsl"))
            }
            Shader::State => {
                include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/state.wgsl"))
            }
            Shader::Widen => {
                include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/widen.wgsl"))
            }
        }
    }

    /// The full WGSL: the dtype prelude, then the family's kernels.
    pub(crate) fn source(self) -> String {
        match self {
            Shader::Matmul | Shader::MatmulCpu | Shader::MatmulSg => {
                format!("{PRELUDE}\n{MATMUL_PARAMS}\n{}", self.body())
            }
            Shader::Elementwise | Shader::Reduce | Shader::State | Shader::Widen => {
                format!("{PRELUDE}\n{}", self.body())
            }
        }
    }

    /// Bindings: (read-only storage count, then one read-write storage, then the params uniform).
    fn read_only(self) -> u32 {
        match self {
            Shader::Elementwise | Shader::Matmul | Shader::MatmulCpu | Shader::MatmulSg => 2,
            Shader::Reduce | Shader::State | Shader::Widen => 1,
        }
    }
}

/// The pipeline cache key: never exact sizes (settled decision 2).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct PipelineKey {
    pub shader: Shader,
    pub entry: &'static str,
    pub constants: Vec<(&'static str, u32)>,
}

pub(crate) struct Pipeline {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
}

pub(crate) struct Ctx {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub limits: wgpu::Limits,
    pub name: String,
    /// The adapter runs shaders on CPU cores (lavapipe, llvmpipe, WARP).
    pub software: bool,
    /// Subgroup operations with a fixed subgroup size of 8 (matmul_sg.wgsl assumes it).
    pub subgroup8: bool,
    errors: Arc<Mutex<Vec<String>>>,
    modules: Mutex<HashMap<Shader, Arc<wgpu::ShaderModule>>>,
    pipelines: Mutex<HashMap<PipelineKey, Arc<Pipeline>>>,
    debug: bool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Ctx {
    /// Opens the adapter's device with its real limits, the features polytensor uses that it
    /// has, and `extra` features a caller requires (an Err naming the adapter if refused).
    pub(crate) fn new(adapter: &wgpu::Adapter, name: &str, extra: wgpu::Features) -> Result<Ctx> {
        let want =
            wgpu::Features::SHADER_F16 | wgpu::Features::SUBGROUP | wgpu::Features::TIMESTAMP_QUERY;
        let desc = wgpu::DeviceDescriptor {
            label: Some("polytensor"),
            required_features: (adapter.features() & want) | extra,
            required_limits: adapter.limits(),
            ..Default::default()
        };
        let (device, queue) =
            pollster::block_on(adapter.request_device(&desc)).map_err(|e| Error::Device {
                device: name.to_string(),
                msg: format!("request_device failed: {e}"),
            })?;
        let errors = Arc::new(Mutex::new(Vec::new()));
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            lock(&sink).push(e.to_string())
        }));
        let lost = errors.clone();
        device.set_device_lost_callback(move |reason, msg| {
            lock(&lost).push(format!("device lost ({reason:?}): {msg}"))
        });
        let info = adapter.get_info();
        let subgroup8 = device.features().contains(wgpu::Features::SUBGROUP)
            && info.subgroup_min_size == 8
            && info.subgroup_max_size == 8;
        Ok(Ctx {
            limits: device.limits(),
            subgroup8,
            device,
            queue,
            name: name.to_string(),
            software: adapter.get_info().device_type == wgpu::DeviceType::Cpu,
            errors,
            modules: Mutex::new(HashMap::new()),
            pipelines: Mutex::new(HashMap::new()),
            debug: std::env::var("POLYTENSOR_DEBUG").is_ok_and(|v| v != "0"),
        })
    }

    fn err(&self, msg: String) -> Error {
        Error::Device {
            device: self.name.clone(),
            msg,
        }
    }

    /// The first error wgpu reported since the last check, as an `Err`.
    pub(crate) fn check(&self) -> Result<()> {
        let mut errs = lock(&self.errors);
        if errs.is_empty() {
            return Ok(());
        }
        let all = errs.join("; ");
        errs.clear();
        Err(self.err(all))
    }

    fn module(&self, shader: Shader) -> Result<Arc<wgpu::ShaderModule>> {
        if let Some(m) = lock(&self.modules).get(&shader) {
            return Ok(m.clone());
        }
        let src = shader.source();
        if self.debug {
            eprintln!("[polytensor] WGSL for {shader:?}:\n{src}");
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(&format!("{shader:?}")),
                source: wgpu::ShaderSource::Wgsl(src.into()),
            });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(self.err(format!("shader {shader:?} failed to compile: {e}")));
        }
        let module = Arc::new(module);
        lock(&self.modules).insert(shader, module.clone());
        Ok(module)
    }

    /// The pipeline for `key`, built once and cached.
    pub(crate) fn pipeline(&self, key: &PipelineKey) -> Result<Arc<Pipeline>> {
        if let Some(p) = lock(&self.pipelines).get(key) {
            return Ok(p.clone());
        }
        if self.debug {
            eprintln!("[polytensor] pipeline {key:?}");
        }
        let module = self.module(key.shader)?;
        let storage = |binding, read_only| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage { read_only },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        };
        let ro = key.shader.read_only();
        let mut entries: Vec<_> = (0..ro).map(|i| storage(i, true)).collect();
        entries.push(storage(ro, false));
        entries.push(wgpu::BindGroupLayoutEntry {
            binding: ro + 1,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Uniform,
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        });
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let layout = self
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: None,
                entries: &entries,
            });
        let pl = self
            .device
            .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: None,
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
        let constants: Vec<(&str, f64)> = key
            .constants
            .iter()
            .map(|&(k, v)| (k, f64::from(v)))
            .collect();
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(key.entry),
                layout: Some(&pl),
                module: &module,
                entry_point: Some(key.entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &constants,
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(self.err(format!("pipeline {key:?} failed: {e}")));
        }
        let p = Arc::new(Pipeline { pipeline, layout });
        lock(&self.pipelines).insert(key.clone(), p.clone());
        Ok(p)
    }

    /// A storage buffer of at least `bytes` bytes (checked against the device limits).
    pub(crate) fn storage(&self, bytes: u64, label: &str) -> Result<wgpu::Buffer> {
        if bytes > self.limits.max_buffer_size {
            return Err(Error::LimitExceeded {
                what: format!("buffer `{label}` bytes"),
                value: bytes,
                limit: self.limits.max_buffer_size,
                device: self.name.clone(),
            });
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes.max(16).div_ceil(16) * 16,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(self.err(format!("allocating {bytes} bytes for `{label}`: {e}")));
        }
        Ok(buf)
    }

    /// A uniform buffer for one kernel's params.
    pub(crate) fn uniform(&self, bytes: u64) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("params"),
            size: bytes.div_ceil(16) * 16,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// A host-mappable staging buffer for readback.
    pub(crate) fn staging(&self, bytes: u64) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: bytes.max(16).div_ceil(16) * 16,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// Maps `bufs` (each with the byte count to read), waits for the device, and copies them out.
    /// This is the completion hook: the only place a run waits.
    pub(crate) fn read_back(&self, bufs: &[(&wgpu::Buffer, u64)]) -> Result<Vec<Vec<u8>>> {
        let (tx, rx) = std::sync::mpsc::channel();
        for (i, (buf, n)) in bufs.iter().enumerate() {
            if *n == 0 {
                continue;
            }
            let tx = tx.clone();
            buf.map_async(wgpu::MapMode::Read, 0..*n, move |r| {
                let _ = tx.send((i, r));
            });
        }
        drop(tx);
        let polled = self
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| self.err(format!("waiting for the device: {e}")));
        // Every buffer that mapped is unmapped on every error path, so the next run can map it
        // again.
        let mut mapped = Vec::new();
        let mut failed = polled.err();
        for (i, r) in rx.iter() {
            match r {
                Ok(()) => mapped.push(i),
                Err(e) => failed = Some(self.err(format!("mapping a readback buffer: {e}"))),
            }
        }
        if let Err(e) = self.check() {
            failed.get_or_insert(e);
        }
        if let Some(e) = failed {
            for i in mapped {
                bufs[i].0.unmap();
            }
            return Err(e);
        }
        let mut out = Vec::with_capacity(bufs.len());
        for (buf, n) in bufs {
            if *n == 0 {
                out.push(Vec::new());
                continue;
            }
            let bytes = buf
                .get_mapped_range(0..*n)
                .map_err(|e| self.err(format!("reading a mapped buffer: {e}")))?
                .to_vec();
            buf.unmap();
            out.push(bytes);
        }
        Ok(out)
    }
}
