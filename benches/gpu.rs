//! wgpu backend benchmark on every adapter: matmul GFLOP/s (f32, f16, bf16; n = 256…2048), the
//! first call of a new shape (cold: first pipeline build in the process; warm: pipelines cached),
//! and the overhead of a one-op `Session::run` with readback next to a raw wgpu submit-and-wait of
//! the same tiny kernel, measured in the same run; and the cost per launch: 256 dependent tiny
//! adds in one `Session::run` against raw wgpu doing 256 dependent dispatches of an add pipeline
//! in one pass and one submission, in the same run.
//!
//! With `-- attention`: causal attention 1×8×512×64 (f32 and bf16 storage) as effective GFLOP/s
//! over the unmasked half (269 MFLOP), next to our f32 matmul at n = 512 on the same adapter,
//! timed in alternation in the same run (`POLYTENSOR_KERNELS=gpu` runs the GPU kernel class on
//! lavapipe/llvmpipe). Then decode: 1 query row, 9 query heads over 3 KV heads, D = 64, against a
//! 2048-token f32 cache per layer, 30 layers in one run (each its own K and V session states,
//! ≈ 94 MB, so they cannot sit in L3), as µs per layer and GB/s of K and V read, next to the CPU
//! running the same program in the same run.
//!
//! Run: `cargo bench --bench gpu` (`-- 1024` for one size, `-- launch` for the launch-cost rows
//! only; `POLYTENSOR_BENCH_SECS` per point).
//! A custom harness rather than criterion: one lavapipe matmul at n = 2048 takes seconds.

use std::time::{Duration, Instant};

use polytensor::bench::problems::{Problem, data};
use polytensor::{DType, Device, FallbackPolicy, Graph, Session, Tensor};

/// Median seconds of `f` over runs filling `budget` (at least 3 runs).
fn median(budget: Duration, mut f: impl FnMut()) -> f64 {
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < 3 || (start.elapsed() < budget && times.len() < 200) {
        let t = Instant::now();
        f();
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// `polytensor bench`'s square matmul problem.
fn matmul_graph(n: usize, dtype: DType) -> Graph {
    Problem::MatMul {
        m: n,
        k: n,
        n,
        tb: false,
    }
    .graph(dtype)
    .expect("matmul")
}

const TINY: &str = r#"
@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    if (g.x < arrayLength(&c)) { c[g.x] = a[g.x] + b[g.x]; }
}
"#;

/// A raw wgpu device on `adapter` with the tiny add pipeline.
fn tiny_pipeline(adapter: &wgpu::Adapter) -> (wgpu::Device, wgpu::Queue, wgpu::ComputePipeline) {
    let (device, queue) =
        pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor::default()))
            .expect("device");
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: None,
        source: wgpu::ShaderSource::Wgsl(TINY.into()),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: None,
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    (device, queue, pipeline)
}

/// Medians of `fs`, timed in alternation (one call of each per round) so that drift on a shared
/// machine hits every candidate alike.
fn alternate(budget: Duration, fs: &mut [&mut dyn FnMut()]) -> Vec<f64> {
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); fs.len()];
    let start = Instant::now();
    while times[0].len() < 5 || (start.elapsed() < budget && times[0].len() < 400) {
        for (f, t) in fs.iter_mut().zip(&mut times) {
            let t0 = Instant::now();
            f();
            t.push(t0.elapsed().as_secs_f64());
        }
    }
    times
        .into_iter()
        .map(|mut t| {
            t.sort_by(f64::total_cmp);
            t[t.len() / 2]
        })
        .collect()
}

/// Raw wgpu: `chain` dependent dispatches of a 64-element add (c = a + b, ping-ponging two
/// buffers) in one compute pass and one submission, then a readback: one run per call.
fn raw_chain(adapter: &wgpu::Adapter, chain: usize) -> impl FnMut() {
    let (device, queue, pipeline) = tiny_pipeline(adapter);
    let mk = |usage| {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: 256,
            usage,
            mapped_at_creation: false,
        })
    };
    let st =
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC;
    let (x, p0, p1) = (mk(st), mk(st), mk(st));
    let staging = mk(wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST);
    let bind = |from: &wgpu::Buffer, to: &wgpu::Buffer| {
        device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: from.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: x.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 2,
                    resource: to.as_entire_binding(),
                },
            ],
        })
    };
    let groups = [bind(&p0, &p1), bind(&p1, &p0)];
    let ones = vec![1f32; 64];
    move || {
        queue.write_buffer(&x, 0, bytemuck::cast_slice(&ones));
        queue.write_buffer(&p0, 0, bytemuck::cast_slice(&ones));
        let mut enc = device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            pass.set_pipeline(&pipeline);
            for i in 0..chain {
                pass.set_bind_group(0, &groups[i % 2], &[]);
                pass.dispatch_workgroups(1, 1, 1);
            }
        }
        let last = if chain % 2 == 1 { &p1 } else { &p0 };
        enc.copy_buffer_to_buffer(last, 0, &staging, 0, 256);
        queue.submit([enc.finish()]);
        staging.map_async(wgpu::MapMode::Read, .., |r| r.expect("map"));
        device
            .poll(wgpu::PollType::wait_indefinitely())
            .expect("poll");
        let out: Vec<f32> =
            bytemuck::pod_collect_to_vec(&staging.get_mapped_range(..).expect("range"));
        staging.unmap();
        assert_eq!(out[0], 1.0 + chain as f32);
    }
}

/// polytensor: `chain` dependent adds (y = y + x) in one graph, one `Session::run` with readback
/// per call.
fn session_chain(device: &Device, chain: usize) -> impl FnMut() {
    let x = Tensor::new(&[64], vec![1f32; 64]).expect("x");
    let mut g = Graph::new();
    let xi = g.input("x", [64], DType::F32);
    let mut y = xi;
    for _ in 0..chain {
        y = g.add(y, xi).expect("add");
    }
    g.output("y", y).expect("out");
    let mut s = Session::new(device);
    s.set_fallback(FallbackPolicy::Deny);
    let p = s.compile(&g).expect("compile");
    move || {
        let out = s.run(&p, &[("x", x.view())], &[]).expect("run");
        assert_eq!(out.get("y").expect("y").to_f32_vec()[0], 1.0 + chain as f32);
    }
}

/// A raw wgpu submit-and-wait of a 64-element add: write the inputs, dispatch, copy to a
/// staging buffer, map, wait, read. The floor any runtime on this adapter pays per run.
fn raw_submit_and_wait(adapter: &wgpu::Adapter, budget: Duration) -> f64 {
    let (device, queue, pipeline) = tiny_pipeline(adapter);
    let mk = |usage| {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: 256,
            usage,
            mapped_at_creation: false,
        })
    };
    let st =
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC;
    let (a, b, c) = (mk(st), mk(st), mk(st));
    let staging = mk(wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST);
    let bg = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[
            wgpu::BindGroupEntry {
                binding: 0,
                resource: a.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 1,
                resource: b.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 2,
                resource: c.as_entire_binding(),
            },
        ],
    });
    let input = vec![1f32; 64];
    median(budget, || {
        queue.write_buffer(&a, 0, bytemuck::cast_slice(&input));
        queue.write_buffer(&b, 0, bytemuck::cast_slice(&input));
        let mut enc = device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bg, &[]);
            pass.dispatch_workgroups(1, 1, 1);
        }
        enc.copy_buffer_to_buffer(&c, 0, &staging, 0, 256);
        queue.submit([enc.finish()]);
        staging.map_async(wgpu::MapMode::Read, .., |r| r.expect("map"));
        device
            .poll(wgpu::PollType::wait_indefinitely())
            .expect("poll");
        let out: Vec<f32> =
            bytemuck::pod_collect_to_vec(&staging.get_mapped_range(..).expect("range"));
        staging.unmap();
        assert_eq!(out[0], 2.0);
    })
}

/// Causal attention [1, 8, 512, 64] in `dtype`, scale 1/8: `polytensor bench`'s problem.
fn attention_graph(dtype: DType) -> Graph {
    Problem::Attention {
        heads: 8,
        kv_heads: 8,
        q_len: 512,
        kv_len: 512,
        d: 64,
    }
    .graph(dtype)
    .expect("attention")
}

/// Causal attention 1×8×512×64 against our f32 matmul at n = 512, alternating, per adapter.
fn attention_rows(gpus: &[Device], budget: Duration) {
    // 8 heads × (QKᵀ + PV) × 2 flop × D × the 512·513/2 unmasked (query, key) pairs.
    let flop = 8.0 * 2.0 * 2.0 * 64.0 * (512.0 * 513.0 / 2.0);
    println!("| device | kernel | median (ms) | GFLOP/s | f32 matmul n=512 GFLOP/s | ratio |");
    println!("|---|---|---|---|---|---|");
    for device in gpus {
        let name = device.info().name.clone();
        let n = 512;
        let a = Tensor::from_f32(&[n, n], data(n * n, 1), DType::F32).expect("a");
        let b = Tensor::from_f32(&[n, n], data(n * n, 2), DType::F32).expect("b");
        let mut sm = Session::new(device);
        sm.set_fallback(FallbackPolicy::Deny);
        let pm = sm.compile(&matmul_graph(n, DType::F32)).expect("matmul");
        for dtype in [DType::F32, DType::BF16] {
            let t: Vec<Tensor> = (0..3)
                .map(|i| Tensor::from_f32(&[1, 8, 512, 64], data(n * 64 * 8, 3 + i), dtype))
                .collect::<Result<_, _>>()
                .expect("qkv");
            let mut sa = Session::new(device);
            sa.set_fallback(FallbackPolicy::Deny);
            let pa = sa.compile(&attention_graph(dtype)).expect("attention");
            let ins = [("q", t[0].view()), ("k", t[1].view()), ("v", t[2].view())];
            let mins = [("a", a.view()), ("b", b.view())];
            let (mut fa, mut fm) = (
                || {
                    sa.run(&pa, &ins, &[]).expect("attention run");
                },
                || {
                    sm.run(&pm, &mins, &[]).expect("matmul run");
                },
            );
            let m = alternate(budget, &mut [&mut fa, &mut fm]);
            let (ga, gm) = (flop / m[0] / 1e9, 2.0 * 512f64.powi(3) / m[1] / 1e9);
            println!(
                "| {name} | causal 1×8×512×64 {dtype} | {:.2} | {ga:.2} | {gm:.2} | {:.2} |",
                m[0] * 1e3,
                ga / gm
            );
        }
    }
}

/// Decode: 30 layers' attention of one query row over their own 2048-token K/V states.
fn decode_graph() -> Graph {
    let mut g = Graph::new();
    let q = g.input("q", [1, DEC_HQ, 1, 64], DType::F32);
    for l in 0..DEC_LAYERS {
        let shape = [1, DEC_HKV, DEC_LEN, 64];
        let k = g.state(&format!("k{l}"), shape, DType::F32);
        let v = g.state(&format!("v{l}"), shape, DType::F32);
        let y = g
            .attention(q, k, v, None, 0.125, false, None)
            .expect("attention");
        g.output(&format!("y{l}"), y).expect("output");
    }
    g
}

const DEC_HQ: usize = 9;
const DEC_HKV: usize = 3;
const DEC_LEN: usize = 2048;
const DEC_LAYERS: usize = 30;

/// The decode rows: every adapter and the CPU, timed in alternation.
fn decode_rows(gpus: &[Device], budget: Duration) {
    let per_layer = (2 * DEC_HKV * DEC_LEN * 64 * 4) as f64;
    println!(
        "\ndecode: 1 row, 9 q heads / 3 KV heads, {DEC_LEN} keys, D = 64, f32, {DEC_LAYERS} layers' \
         caches per run (K and V bytes counted once)"
    );
    println!(
        "| device | kernels | µs per layer | GB/s | CPU µs per layer (same run) | ratio to the CPU |"
    );
    println!("|---|---|---|---|---|---|");
    let g = decode_graph();
    let q = Tensor::from_f32(&[1, DEC_HQ, 1, 64], data(DEC_HQ * 64, 7), DType::F32).expect("q");
    let open = |device: &Device| {
        let mut s = Session::new(device);
        s.set_fallback(FallbackPolicy::Deny);
        for l in 0..DEC_LAYERS {
            for (kv, seed) in [("k", 2 * l), ("v", 2 * l + 1)] {
                let name = format!("{kv}{l}");
                let t = Tensor::from_f32(
                    &[1, DEC_HKV, DEC_LEN, 64],
                    data(DEC_HKV * DEC_LEN * 64, 100 + seed as u32),
                    DType::F32,
                )
                .expect("cache");
                s.create_state(&name, t.shape(), DType::F32).expect("state");
                s.set_state(&name, t.view()).expect("set");
            }
        }
        let p = s.compile(&g).expect("decode compile");
        (s, p)
    };
    let (mut sc, pc) = open(&Device::cpu());
    for device in gpus {
        let (mut sg, pg) = open(device);
        sg.run(&pg, &[("q", q.view())], &[]).expect("decode run");
        let mut kernels: Vec<String> = sg
            .last_run_stats()
            .launches
            .iter()
            .take(2)
            .map(|l| l.kernel.to_string())
            .collect();
        kernels.dedup();
        let (mut fg, mut fc) = (
            || {
                sg.run(&pg, &[("q", q.view())], &[]).expect("decode run");
            },
            || {
                sc.run(&pc, &[("q", q.view())], &[])
                    .expect("cpu decode run");
            },
        );
        let m = alternate(budget, &mut [&mut fg, &mut fc]);
        let (tg, tc) = (m[0] / DEC_LAYERS as f64, m[1] / DEC_LAYERS as f64);
        println!(
            "| {} | {} | {:.1} | {:.2} | {:.1} | {:.2} |",
            device.info().name,
            kernels.join(" + "),
            tg * 1e6,
            per_layer / tg / 1e9,
            tc * 1e6,
            tc / tg
        );
    }
}

fn main() {
    let filter: Option<usize> = std::env::args().skip(1).find_map(|a| a.parse().ok());
    let launch_only = std::env::args().skip(1).any(|a| a == "launch");
    let secs: f64 = std::env::var("POLYTENSOR_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3.0);
    let budget = Duration::from_secs_f64(secs);
    let sizes: Vec<usize> = [256, 512, 1024, 2048]
        .into_iter()
        .filter(|n| filter.is_none_or(|f| f == *n))
        .collect();
    let gpus: Vec<Device> = Device::list()
        .into_iter()
        .filter(|d| d.info().backend == "wgpu")
        .collect();
    if gpus.is_empty() {
        println!("no wgpu adapter found (see README: .ci/setup installs lavapipe)");
        return;
    }
    if std::env::args().skip(1).any(|a| a == "attention") {
        attention_rows(&gpus, budget);
        decode_rows(&gpus, budget);
        return;
    }
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    if !launch_only {
        println!("| device | dtype | n | first call (ms) | median (ms) | GFLOP/s |");
        println!("|---|---|---|---|---|---|");
    }
    let mut overhead = Vec::new();
    let mut launches = Vec::new();
    for device in &gpus {
        let name = device.info().name.clone();
        let adapter = adapters
            .iter()
            .find(|a| {
                name.starts_with(&a.get_info().name) && name.contains(&format!("[{}]", api(a)))
            })
            .expect("same adapter");
        // Launch cost, measured in the same run: 256 dependent launches, per launch.
        const CHAIN: usize = 256;
        let (mut ours, mut raw) = (session_chain(device, CHAIN), raw_chain(adapter, CHAIN));
        let t = alternate(budget * 2, &mut [&mut ours, &mut raw]);
        launches.push((name.clone(), t[0] / CHAIN as f64, t[1] / CHAIN as f64));
        if launch_only {
            continue;
        }
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            for &n in &sizes {
                let a = Tensor::from_f32(&[n, n], data(n * n, 1), dtype).expect("a");
                let b = Tensor::from_f32(&[n, n], data(n * n, 2), dtype).expect("b");
                let mut s = Session::new(device);
                s.set_fallback(FallbackPolicy::Deny);
                let inputs = [("a", a.view()), ("b", b.view())];
                let t = Instant::now();
                let p = s.compile(&matmul_graph(n, dtype)).expect("compile");
                s.run(&p, &inputs, &[]).expect("first run");
                let first = t.elapsed().as_secs_f64();
                let med = median(budget, || {
                    s.run(&p, &inputs, &[]).expect("run");
                });
                let gf = 2.0 * (n as f64).powi(3) / med / 1e9;
                println!(
                    "| {name} | {dtype} | {n} | {:.0} | {:.2} | {gf:.2} |",
                    first * 1e3,
                    med * 1e3
                );
            }
        }
        // One tiny op through the whole session path vs a raw submit-and-wait.
        let x = Tensor::new(&[64], vec![1f32; 64]).expect("x");
        let mut g = Graph::new();
        let (xa, xb) = (
            g.input("a", [64], DType::F32),
            g.input("b", [64], DType::F32),
        );
        let y = g.add(xa, xb).expect("add");
        g.output("y", y).expect("out");
        let mut s = Session::new(device);
        let p = s.compile(&g).expect("compile");
        let ours = median(budget, || {
            s.run(&p, &[("a", x.view()), ("b", x.view())], &[])
                .expect("run");
        });
        let raw = raw_submit_and_wait(adapter, budget);
        overhead.push((name, ours, raw));
    }
    print_launch_costs(&launches);
    if launch_only {
        return;
    }
    println!(
        "\n| device | one-op Session::run + readback (µs) | raw wgpu submit + wait (µs) | ratio |"
    );
    println!("|---|---|---|---|");
    for (name, ours, raw) in overhead {
        println!(
            "| {name} | {:.0} | {:.0} | {:.2} |",
            ours * 1e6,
            raw * 1e6,
            ours / raw
        );
    }
}

fn print_launch_costs(rows: &[(String, f64, f64)]) {
    println!(
        "\n| device | per launch, 256 adds in one Session::run (µs) | per dispatch, raw wgpu one pass (µs) | ratio |"
    );
    println!("|---|---|---|---|");
    for (name, ours, raw) in rows {
        println!(
            "| {name} | {:.1} | {:.1} | {:.2} |",
            ours * 1e6,
            raw * 1e6,
            ours / raw
        );
    }
}

fn api(a: &wgpu::Adapter) -> &'static str {
    match a.get_info().backend {
        wgpu::Backend::Vulkan => "Vulkan",
        wgpu::Backend::Gl => "GL",
        wgpu::Backend::Metal => "Metal",
        wgpu::Backend::Dx12 => "DX12",
        _ => "other",
    }
}
