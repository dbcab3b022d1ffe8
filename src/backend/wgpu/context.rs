//! One wgpu device: its queue, limits and features, the pipeline cache (keyed by a typed key:
//! shader, entry point, override constants), buffers, readback, and wgpu errors turned into
//! polytensor `Error`s (an uncaptured-error handler and error scopes: wgpu's default handler
//! panics).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

/// One WGSL source: a family's kernels after the preludes it needs. Families define theirs as
/// `static`s (`kernels/<family>.rs`); modules are cached by `name`.
#[derive(Debug)]
pub(crate) struct Shader {
    pub name: &'static str,
    /// The pieces, concatenated in order (preludes first).
    pub parts: &'static [&'static str],
    /// Uses subgroup operations (built only where the adapter has them).
    pub subgroups: bool,
}

/// prelude.wgsl: dtype codes, 16-bit integer encode/decode, stochastic rounding.
pub(crate) const PRELUDE: &str =
    include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/prelude.wgsl"));

impl Shader {
    /// The full WGSL.
    pub(crate) fn source(&self) -> String {
        self.parts.join("\n")
    }
}

/// The pipeline cache key: never exact sizes (settled decision 2).
#[derive(Clone, Debug)]
pub(crate) struct PipelineKey {
    pub shader: &'static Shader,
    pub entry: &'static str,
    pub constants: Vec<(&'static str, u32)>,
}

impl PartialEq for PipelineKey {
    fn eq(&self, o: &PipelineKey) -> bool {
        self.shader.name == o.shader.name && self.entry == o.entry && self.constants == o.constants
    }
}
impl Eq for PipelineKey {}
impl std::hash::Hash for PipelineKey {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.shader.name.hash(h);
        self.entry.hash(h);
        self.constants.hash(h);
    }
}

/// A bind-group layout's shape: one entry per storage binding (true = read-only), then the
/// params uniform. Derived from a launch's binding list, never from the op.
pub(crate) type Signature = Vec<bool>;

pub(crate) struct Pipeline {
    pub pipeline: wgpu::ComputePipeline,
}

pub(crate) struct Ctx {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub limits: wgpu::Limits,
    pub name: String,
    /// Subgroup sizes (min, max) when the device has subgroup operations.
    pub subgroups: Option<(u32, u32)>,
    errors: Arc<Mutex<Vec<String>>>,
    modules: Mutex<HashMap<&'static str, Arc<wgpu::ShaderModule>>>,
    layouts: Mutex<HashMap<Signature, Arc<wgpu::BindGroupLayout>>>,
    pipelines: Mutex<HashMap<(PipelineKey, Signature), Arc<Pipeline>>>,
    /// Pipelines built and bind groups created on this device so far (run statistics).
    pub pipelines_built: AtomicU64,
    pub bind_groups_created: AtomicU64,
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
        let subgroups = device
            .features()
            .contains(wgpu::Features::SUBGROUP)
            .then_some((info.subgroup_min_size, info.subgroup_max_size));
        Ok(Ctx {
            limits: device.limits(),
            subgroups,
            device,
            queue,
            name: name.to_string(),
            errors,
            modules: Mutex::new(HashMap::new()),
            layouts: Mutex::new(HashMap::new()),
            pipelines: Mutex::new(HashMap::new()),
            pipelines_built: AtomicU64::new(0),
            bind_groups_created: AtomicU64::new(0),
            debug: std::env::var("POLYTENSOR_DEBUG").is_ok_and(|v| v != "0"),
        })
    }

    /// Runs `f` inside validation and out-of-memory error scopes, so an error it causes reaches
    /// this caller (scopes are per thread), never whichever session checks the device next.
    pub(crate) fn scoped<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let invalid = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let r = f();
        let e1 = pollster::block_on(invalid.pop());
        let e2 = pollster::block_on(oom.pop());
        let r = r?;
        match e1.or(e2) {
            Some(e) => Err(self.err(e.to_string())),
            None => Ok(r),
        }
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

    fn module(&self, shader: &'static Shader) -> Result<Arc<wgpu::ShaderModule>> {
        if let Some(m) = lock(&self.modules).get(shader.name) {
            return Ok(m.clone());
        }
        let src = shader.source();
        if self.debug {
            eprintln!("[polytensor] WGSL for {}:\n{src}", shader.name);
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(shader.name),
                source: wgpu::ShaderSource::Wgsl(src.into()),
            });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(self.err(format!("shader {} failed to compile: {e}", shader.name)));
        }
        let module = Arc::new(module);
        lock(&self.modules).insert(shader.name, module.clone());
        Ok(module)
    }

    /// The bind-group layout of `sig` (created once).
    pub(crate) fn layout(&self, sig: &Signature) -> Arc<wgpu::BindGroupLayout> {
        if let Some(l) = lock(&self.layouts).get(sig) {
            return l.clone();
        }
        let entry = |binding, ty| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty,
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        };
        let mut entries: Vec<_> = sig
            .iter()
            .enumerate()
            .map(|(i, &read_only)| entry(i as u32, wgpu::BufferBindingType::Storage { read_only }))
            .collect();
        entries.push(entry(sig.len() as u32, wgpu::BufferBindingType::Uniform));
        let layout = Arc::new(self.device.create_bind_group_layout(
            &wgpu::BindGroupLayoutDescriptor {
                label: None,
                entries: &entries,
            },
        ));
        lock(&self.layouts).insert(sig.clone(), layout.clone());
        layout
    }

    /// The pipeline for `key` with the bind-group layout `sig`, built once and cached.
    pub(crate) fn pipeline(&self, key: &PipelineKey, sig: &Signature) -> Result<Arc<Pipeline>> {
        let cache_key = (key.clone(), sig.clone());
        if let Some(p) = lock(&self.pipelines).get(&cache_key) {
            return Ok(p.clone());
        }
        if self.debug {
            eprintln!(
                "[polytensor] pipeline {}/{} {:?}",
                key.shader.name, key.entry, key.constants
            );
        }
        if key.shader.subgroups && self.subgroups.is_none() {
            return Err(self.err(format!(
                "pipeline {}/{} needs subgroups, which the device lacks",
                key.shader.name, key.entry
            )));
        }
        let module = self.module(key.shader)?;
        let layout = self.layout(sig);
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
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
            return Err(self.err(format!(
                "pipeline {}/{} {:?} failed: {e}",
                key.shader.name, key.entry, key.constants
            )));
        }
        self.pipelines_built.fetch_add(1, Ordering::Relaxed);
        let p = Arc::new(Pipeline { pipeline });
        lock(&self.pipelines).insert(cache_key, p.clone());
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

    /// A uniform buffer for the params of every launch of a program, at offsets.
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
        // After a successful poll every callback runs (perhaps on another thread's poll, a
        // moment later): wait for them. After a failed poll one may never run: take what came.
        let mut mapped = Vec::new();
        let mut refused = Vec::new();
        let results: Vec<(usize, std::result::Result<(), wgpu::BufferAsyncError>)> =
            if polled.is_ok() {
                rx.iter().collect()
            } else {
                rx.try_iter().collect()
            };
        let mut failed = polled.err();
        for (i, r) in results {
            match r {
                Ok(()) => mapped.push(i),
                Err(e) => {
                    refused.push(i);
                    failed = Some(self.err(format!("mapping a readback buffer: {e}")));
                }
            }
        }
        if let Err(e) = self.check() {
            failed.get_or_insert(e);
        }
        if let Some(e) = failed {
            // Unmap what mapped, and cancel what is still pending (an unmap does both).
            for (i, (buf, n)) in bufs.iter().enumerate() {
                if *n > 0 && !refused.contains(&i) {
                    buf.unmap();
                }
            }
            return Err(e);
        }
        if mapped.len() + refused.len() < bufs.iter().filter(|(_, n)| *n > 0).count() {
            for (i, (buf, n)) in bufs.iter().enumerate() {
                if *n > 0 && !refused.contains(&i) {
                    buf.unmap();
                }
            }
            return Err(self.err("a readback buffer never mapped".to_string()));
        }
        let mut out = Vec::with_capacity(bufs.len());
        let mut failed = None;
        for (buf, n) in bufs {
            if *n == 0 {
                out.push(Vec::new());
                continue;
            }
            // Every mapped buffer is unmapped, even after a failed read of another.
            if failed.is_none() {
                match buf.get_mapped_range(0..*n) {
                    Ok(view) => out.push(view.to_vec()),
                    Err(e) => failed = Some(self.err(format!("reading a mapped buffer: {e}"))),
                }
            }
            buf.unmap();
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }
}
