//! The measured roofline of a device: peak f32 FMA throughput (a register-resident kernel) and
//! copy/triad bandwidth, measured on the device itself. The CPU's are native Rust on every
//! thread; a wgpu adapter's are WGSL kernels on a raw wgpu device opened on the same adapter
//! (matched by name and API), which also gives the submit+wait floor of the overhead suite.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::{Device, Error, Result};

/// A device's measured peaks.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Roofline {
    /// f32 fused multiply-add throughput, GFLOP/s (an FMA counts 2).
    pub peak_gflops: f64,
    /// Copy bandwidth (bytes read + written), GB/s.
    pub copy_gbps: f64,
    /// Triad `a = b + s·c` bandwidth (3 streams), GB/s.
    pub triad_gbps: f64,
    /// `wall` (host clock around a full sync).
    pub timing: String,
}

impl Roofline {
    /// The bandwidth rows are judged against: the better of copy and triad.
    pub fn bandwidth(&self) -> f64 {
        self.copy_gbps.max(self.triad_gbps)
    }

    /// Attainable GFLOP/s at `intensity` FLOP/byte: min(peak, intensity × bandwidth).
    pub fn attainable(&self, intensity: f64) -> f64 {
        self.peak_gflops.min(intensity * self.bandwidth())
    }
}

/// Best seconds of `reps` calls of `f`.
fn best_of(reps: usize, mut f: impl FnMut()) -> f64 {
    (0..reps.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// The CPU's roofline: FMA chains on every thread, then copy and triad over `bytes`-sized
/// arrays (past the caches).
pub fn cpu(bytes: usize) -> Roofline {
    use rayon::prelude::*;
    let threads = crate::backend::cpu::default_threads().max(1);
    // The best of 7 runs of ~40 ms: this kind of machine is shared and its clock varies.
    let iters = 1 << 23;
    let secs = best_of(7, || {
        (0..threads).into_par_iter().for_each(|t| {
            std::hint::black_box(fma_chains(iters, t as f32));
        })
    });
    let peak = threads as f64 * iters as f64 * FMA_FLOPS_PER_ITER / secs / 1e9;
    let n = bytes / 4;
    let src = vec![1.0f32; n];
    let src2 = vec![2.0f32; n];
    let mut dst = vec![0.0f32; n];
    let copy = best_of(4, || {
        dst.par_chunks_mut(1 << 16)
            .zip(src.par_chunks(1 << 16))
            .for_each(|(d, s)| d.copy_from_slice(s))
    });
    let triad = best_of(4, || {
        dst.par_chunks_mut(1 << 16)
            .zip(src.par_chunks(1 << 16).zip(src2.par_chunks(1 << 16)))
            .for_each(|(d, (b, c))| {
                for ((o, &x), &y) in d.iter_mut().zip(b).zip(c) {
                    *o = x + 3.0 * y;
                }
            })
    });
    std::hint::black_box(&dst);
    Roofline {
        peak_gflops: peak,
        copy_gbps: 2.0 * (n * 4) as f64 / copy / 1e9,
        triad_gbps: 3.0 * (n * 4) as f64 / triad / 1e9,
        timing: "wall".to_string(),
    }
}

/// FLOPs per iteration of [`fma_chains`]: 12 chains of 8-lane FMAs.
const FMA_FLOPS_PER_ITER: f64 = 12.0 * 8.0 * 2.0;

/// `iters` iterations of 12 independent 8-lane FMA chains (AVX2+FMA where present).
fn fma_chains(iters: usize, seed: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA (checked above).
        return unsafe { fma_chains_avx2(iters, seed) };
    }
    let mut acc = [[seed; 8]; 12];
    for _ in 0..iters {
        for a in acc.iter_mut() {
            for x in a.iter_mut() {
                *x = x.mul_add(0.999_999, 1e-7);
            }
        }
    }
    acc.iter().flatten().sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_chains_avx2(iters: usize, seed: f32) -> f32 {
    use std::arch::x86_64::*;
    let m = _mm256_set1_ps(0.999_999);
    let c = _mm256_set1_ps(1e-7);
    let mut acc = [_mm256_set1_ps(seed); 12];
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = _mm256_fmadd_ps(*a, m, c);
        }
    }
    let mut sum = _mm256_setzero_ps();
    for a in acc {
        sum = _mm256_add_ps(sum, a);
    }
    let mut lanes = [0f32; 8];
    // SAFETY: `lanes` holds 8 f32.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), sum) };
    lanes.iter().sum()
}

const KERNELS: &str = include_str!("roofline.wgsl");

/// The (x, y) workgroup grid for `groups` workgroups under the 65535-per-dimension limit: at
/// least `groups` of them (exactly `groups` up to 65535).
fn grid(groups: u32) -> (u32, u32) {
    let gy = groups.div_ceil(65535).max(1);
    (groups.div_ceil(gy), gy)
}

/// A raw wgpu device on the adapter behind a polytensor wgpu [`Device`], with the roofline
/// kernels compiled.
pub struct RawGpu {
    device: wgpu::Device,
    queue: wgpu::Queue,
    module: wgpu::ShaderModule,
    layout: wgpu::BindGroupLayout,
    pipeline_layout: wgpu::PipelineLayout,
    /// wgpu errors reported by the device (validation, out of memory), turned into `Err`s.
    errors: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    name: String,
}

impl RawGpu {
    /// Opens the adapter whose name and API match `device` (a wgpu device of polytensor).
    pub fn open(device: &Device) -> Result<RawGpu> {
        let info = device.info();
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
        let adapter = adapters
            .into_iter()
            .find(|a| {
                let ai = a.get_info();
                info.name == format!("{} [{}]", ai.name, info.api)
                    && format!("{:?}", ai.backend).eq_ignore_ascii_case(&info.api)
            })
            .ok_or_else(|| Error::Device {
                device: info.name.clone(),
                msg: "no wgpu adapter with this name and API for the roofline kernels".into(),
            })?;
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("polytensor bench"),
            required_limits: limits,
            ..Default::default()
        }))
        .map_err(|e| Error::Device {
            device: info.name.clone(),
            msg: format!("opening a raw device for the roofline: {e}"),
        })?;
        let errors = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = errors.clone();
        device.on_uncaptured_error(std::sync::Arc::new(move |e: wgpu::Error| {
            if let Ok(mut v) = sink.lock() {
                v.push(e.to_string());
            }
        }));
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("roofline"),
            source: wgpu::ShaderSource::Wgsl(KERNELS.into()),
        });
        let entry = |binding: u32, read_only: bool| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage { read_only },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        };
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: None,
            entries: &[entry(0, true), entry(1, true), entry(2, false)],
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: None,
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        Ok(RawGpu {
            device,
            queue,
            module,
            layout,
            pipeline_layout,
            errors,
            name: info.name.clone(),
        })
    }

    fn pipeline(&self, entry: &str, iters: u32) -> wgpu::ComputePipeline {
        let constants = [("ITERS", f64::from(iters))];
        self.device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: Some(&self.pipeline_layout),
                module: &self.module,
                entry_point: Some(entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &constants,
                    ..Default::default()
                },
                cache: None,
            })
    }

    fn buffer(&self, bytes: u64) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: bytes.max(16),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// Seconds of one submission of `groups` workgroups of `entry`, waited for.
    fn time(
        &self,
        pipeline: &wgpu::ComputePipeline,
        bufs: [&wgpu::Buffer; 3],
        groups: u32,
    ) -> Result<f64> {
        let bind = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &self.layout,
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: bufs[0].as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: bufs[1].as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 2,
                    resource: bufs[2].as_entire_binding(),
                },
            ],
        });
        let (gx, gy) = grid(groups);
        let t = Instant::now();
        let mut enc = self.device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, &bind, &[]);
            pass.dispatch_workgroups(gx, gy, 1);
        }
        self.queue.submit([enc.finish()]);
        let fail = |msg: String| Error::Device {
            device: self.name.clone(),
            msg: format!("roofline kernel: {msg}"),
        };
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| fail(e.to_string()))?;
        let secs = t.elapsed().as_secs_f64();
        if let Some(e) = self.errors.lock().ok().and_then(|mut v| v.pop()) {
            return Err(fail(e));
        }
        Ok(secs)
    }

    /// The roofline: the fastest of three FMA-chain kernels (8 vec4 chains with `fma`, the same
    /// with multiply-add, 32 scalar chains: compilers differ on which runs best — lavapipe
    /// 15/15/75 GFLOP/s, llvmpipe GL 71/73/84 on the same 2-core CPU), each sized until one
    /// launch takes ≥ 50 ms, then copy and triad over `bytes` (capped by the binding limit).
    pub fn roofline(&self, bytes: u64) -> Result<Roofline> {
        let limit = self.device.limits().max_storage_buffer_binding_size;
        // Whole 64-byte units, so `copy4` moves every byte counted.
        let bytes = bytes.min(limit).min(self.device.limits().max_buffer_size) / 64 * 64;
        let small = [
            self.buffer(1 << 16),
            self.buffer(1 << 16),
            self.buffer(1 << 16),
        ];
        let small = [&small[0], &small[1], &small[2]];
        let iters = 256u32;
        let mut peak: f64 = 0.0;
        // (entry, invocations per workgroup, FLOPs per invocation and iteration)
        for (entry, wg, per) in [
            ("fma_peak", 64.0, 64.0),
            ("mad_peak", 64.0, 64.0),
            ("mad_scalar32", 64.0, 64.0),
        ] {
            let kernel = self.pipeline(entry, iters);
            let mut groups = 64u32;
            let mut secs = self.time(&kernel, small, groups)?;
            while secs < 0.05 && groups < (1 << 22) {
                groups *= 4;
                secs = self.time(&kernel, small, groups)?;
            }
            secs = secs.min(self.time(&kernel, small, groups)?);
            // Every dispatched workgroup runs the chains (the grid may round `groups` up).
            let (gx, gy) = grid(groups);
            let flops = f64::from(gx) * f64::from(gy) * wg * f64::from(iters) * per;
            if std::env::var_os("POLYTENSOR_BENCH_DEBUG").is_some() {
                eprintln!("{}: {entry} {:.1} GFLOP/s", self.name, flops / secs / 1e9);
            }
            peak = peak.max(flops / secs / 1e9);
        }
        let (a, b, c) = (self.buffer(bytes), self.buffer(bytes), self.buffer(bytes));
        let groups = u32::try_from((bytes / 16).div_ceil(64)).unwrap_or(u32::MAX);
        let copy_p = self.pipeline("copy", 1);
        let copy4_p = self.pipeline("copy4", 1);
        let triad_p = self.pipeline("triad", 1);
        self.time(&copy_p, [&a, &b, &c], groups)?;
        let mut copy = f64::INFINITY;
        let mut triad = f64::INFINITY;
        for _ in 0..3 {
            copy = copy.min(self.time(&copy_p, [&a, &b, &c], groups)?);
            copy = copy.min(self.time(&copy4_p, [&a, &b, &c], groups.div_ceil(4))?);
            triad = triad.min(self.time(&triad_p, [&a, &b, &c], groups)?);
        }
        Ok(Roofline {
            peak_gflops: peak,
            copy_gbps: 2.0 * bytes as f64 / copy / 1e9,
            triad_gbps: 3.0 * bytes as f64 / triad / 1e9,
            timing: "wall".to_string(),
        })
    }

    /// Median seconds of `runs` submissions of one tiny dispatch, each waited for: the floor
    /// any runtime's launch-and-sync pays on this adapter.
    pub fn submit_wait_floor(&self, runs: usize) -> Result<Vec<f64>> {
        let small = [self.buffer(256), self.buffer(256), self.buffer(256)];
        let small = [&small[0], &small[1], &small[2]];
        let tiny = self.pipeline("tiny", 1);
        self.time(&tiny, small, 1)?;
        (0..runs).map(|_| self.time(&tiny, small, 1)).collect()
    }
}
