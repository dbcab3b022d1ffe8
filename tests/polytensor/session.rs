//! The session's own duties, observed through a fake backend defined here (settled decision 10):
//! dead inputs are accepted and checked, a CPU fallback segment copies only its own weights,
//! states are created with `Backend::zeros` after a size check and overwritten in place, and
//! run statistics add up over segments, runs and compiles.

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use polytensor::backend::{DeviceBuffer, Limits, Pending, Program, RunArgs};
use polytensor::{
    Backend, DType, Device, DeviceInfo, DeviceType, Dim, Error, Graph, NodeId, Op, Result,
    RunStats, Session, Tensor, TensorView, UnaryOp,
};

use crate::common::{Rng, assert_close, random, run_on};

/// What the fake backend was asked to do, in order (`upload [2, 3]`, `read [2, 3]`, ...).
type Log = Arc<Mutex<Vec<String>>>;

fn log(log: &Log, what: String) {
    log.lock().expect("log").push(what);
}

fn events(log: &Log) -> Vec<String> {
    log.lock().expect("log").clone()
}

/// A device that runs everything but `exp` (on the CPU backend underneath), logs buffer traffic,
/// and reports made-up kernel statistics: 2 pipelines per compile, 1 pass per run.
struct Fake {
    cpu: Device,
    log: Log,
    /// Whether its buffers can be written and cleared in place.
    in_place: bool,
    max_buffer_bytes: u64,
}

struct FakeBuffer {
    inner: Arc<dyn DeviceBuffer>,
    log: Log,
    in_place: bool,
}

struct FakeProgram {
    inner: Box<dyn Program>,
    runs: AtomicU64,
}

struct Done(Vec<Tensor>);

impl Pending for Done {
    fn wait(self: Box<Self>) -> Result<Vec<Tensor>> {
        Ok(self.0)
    }
}

impl Fake {
    fn device(in_place: bool, max_buffer_bytes: u64) -> (Device, Log) {
        let log: Log = Arc::default();
        let fake = Fake {
            cpu: Device::cpu(),
            log: log.clone(),
            in_place,
            max_buffer_bytes,
        };
        (Device::new(Arc::new(fake)), log)
    }

    fn wrap(&self, inner: Arc<dyn DeviceBuffer>) -> Arc<dyn DeviceBuffer> {
        Arc::new(FakeBuffer {
            inner,
            log: self.log.clone(),
            in_place: self.in_place,
        })
    }
}

impl Backend for Fake {
    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            name: "fake".to_string(),
            backend: "fake".to_string(),
            api: "test".to_string(),
            device_type: DeviceType::Other,
            software: false,
            dtypes: DType::ALL.to_vec(),
            limits: Limits {
                max_buffer_bytes: self.max_buffer_bytes,
                max_binding_bytes: self.max_buffer_bytes,
            },
            details: vec![],
        }
    }
    fn supports(&self, graph: &Graph, node: NodeId) -> std::result::Result<(), String> {
        match graph.nodes()[node.0].op {
            Op::Unary(UnaryOp::Exp) => Err("no exp on the fake".to_string()),
            _ => Ok(()),
        }
    }
    fn upload(&self, tensor: TensorView<'_>) -> Result<Arc<dyn DeviceBuffer>> {
        log(&self.log, format!("upload {:?}", tensor.shape()));
        Ok(self.wrap(self.cpu.backend().upload(tensor)?))
    }
    fn zeros(&self, shape: &[usize], dtype: DType) -> Result<Arc<dyn DeviceBuffer>> {
        log(&self.log, format!("zeros {shape:?}"));
        Ok(self.wrap(self.cpu.backend().zeros(shape, dtype)?))
    }
    fn compile(&self, graph: &Graph) -> Result<Box<dyn Program>> {
        Ok(Box::new(FakeProgram {
            inner: self.cpu.backend().compile(graph)?,
            runs: AtomicU64::new(0),
        }))
    }
}

impl DeviceBuffer for FakeBuffer {
    fn shape(&self) -> Vec<usize> {
        self.inner.shape()
    }
    fn dtype(&self) -> DType {
        self.inner.dtype()
    }
    fn read(&self) -> Result<Tensor> {
        log(&self.log, format!("read {:?}", self.inner.shape()));
        self.inner.read()
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn write(&self, tensor: TensorView<'_>) -> Result<bool> {
        log(&self.log, format!("write {:?}", tensor.shape()));
        if self.in_place {
            self.inner.write(tensor)
        } else {
            Ok(false)
        }
    }
    fn clear(&self) -> Result<bool> {
        log(&self.log, format!("clear {:?}", self.inner.shape()));
        if self.in_place {
            self.inner.clear()
        } else {
            Ok(false)
        }
    }
}

type Buffers = HashMap<String, Arc<dyn DeviceBuffer>>;

/// The CPU buffers under the fake ones.
fn unwrap(m: &Buffers) -> Buffers {
    m.iter()
        .map(|(k, b)| {
            let inner = match b.as_any().downcast_ref::<FakeBuffer>() {
                Some(f) => f.inner.clone(),
                None => b.clone(),
            };
            (k.clone(), inner)
        })
        .collect()
}

impl Program for FakeProgram {
    fn submit<'a>(&'a self, args: RunArgs<'a>) -> Result<Box<dyn Pending + 'a>> {
        let (weights, states) = (unwrap(args.weights), unwrap(args.states));
        let inner = RunArgs {
            inputs: args.inputs,
            bindings: args.bindings,
            weights: &weights,
            states: &states,
            seed: args.seed,
            counter: args.counter,
            gpu_timing: args.gpu_timing,
        };
        let out = self.inner.submit(inner)?.wait()?;
        self.runs.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(Done(out)))
    }
    fn stats(&self) -> RunStats {
        if self.runs.load(Ordering::SeqCst) == 0 {
            return RunStats {
                pipelines_built: 2,
                ..RunStats::default()
            };
        }
        let mut s = self.inner.stats();
        s.passes = 1;
        s.launches = vec![polytensor::LaunchStat {
            kernel: "fake/one".into(),
            grid: [1, 1, 1],
        }];
        s.launch_count = 1;
        s
    }
}

#[test]
fn dead_inputs_are_accepted_and_checked_unknown_names_are_not() {
    // x feeds the output; y is declared but dead (dead-node elimination removes it), and a
    // second program reads y: one input set serves both.
    let mut g = Graph::new();
    let x = g.input("x", [2, 3], DType::F32);
    let y = g.input("y", [Dim::sym("n", 4), Dim::Fixed(3)], DType::F16);
    let nx = g.unary(UnaryOp::Neg, x).expect("neg");
    g.output("nx", nx).expect("out");
    let mut g2 = Graph::new();
    let _x2 = g2.input("x", [2, 3], DType::F32);
    let y2 = g2.input("y", [Dim::sym("n", 4), Dim::Fixed(3)], DType::F16);
    let ny = g2.unary(UnaryOp::Neg, y2).expect("neg");
    g2.output("ny", ny).expect("out");
    let _ = y;
    let xt = Tensor::new(&[2, 3], vec![1f32, 2.0, 3.0, 4.0, 5.0, 6.0]).expect("x");
    let yt = Tensor::from_f32(&[2, 3], vec![0.5; 6], DType::F16).expect("y");
    for device in [Device::cpu(), Device::reference()] {
        let name = device.info().name.clone();
        let mut s = Session::new(&device);
        let p = s.compile(&g).expect("compile");
        let p2 = s.compile(&g2).expect("compile");
        assert!(
            !p.graph()
                .nodes()
                .iter()
                .any(|n| matches!(&n.op, Op::Input { name } if name == "y")),
            "y is dead in the compiled graph:\n{}",
            p.graph()
        );
        let inputs = [("x", xt.view()), ("y", yt.view())];
        let out = s
            .run(&p, &inputs, &[])
            .unwrap_or_else(|e| panic!("{name}: a dead input passed: {e}"));
        assert_eq!(
            out.get("nx").expect("nx").to_f32_vec(),
            vec![-1.0, -2.0, -3.0, -4.0, -5.0, -6.0]
        );
        let out = s.run(&p2, &inputs, &[]).expect("the same inputs");
        assert_eq!(out.get("ny").expect("ny").to_f32_vec(), vec![-0.5; 6]);
        s.run(&p, &[("x", xt.view())], &[])
            .expect("a dead input is not required");
        // A name the graph never declared is still unknown, and the message lists the
        // declared inputs.
        let e = s
            .run(&p, &[("x", xt.view()), ("z", yt.view())], &[])
            .expect_err("unknown input");
        assert!(matches!(e, Error::UnknownInput { .. }), "{name}: {e}");
        assert!(e.to_string().contains("x, y"), "{e}");
        // A dead input is still checked against its declaration.
        let e = s
            .run(&p, &[("x", xt.view()), ("y", xt.view())], &[])
            .expect_err("dead input of the wrong dtype");
        assert!(
            matches!(e, Error::TensorMismatch { kind: "input", .. }),
            "{name}: {e}"
        );
        let long = Tensor::from_f32(&[5, 3], vec![0.0; 15], DType::F16).expect("long");
        let e = s
            .run(&p, &[("x", xt.view()), ("y", long.view())], &[])
            .expect_err("dead input over its maximum");
        assert!(
            matches!(
                e,
                Error::DimOverMax {
                    value: 5,
                    max: 4,
                    ..
                }
            ),
            "{name}: {e}"
        );
    }
}

/// h = x @ w1 on the fake, e = exp(w2) on the CPU fallback, y = h + e on the fake.
fn fallback_graph() -> Graph {
    let mut g = Graph::new();
    let x = g.input("x", [2, 4], DType::F32);
    let w1 = g.weight("w1", [4, 3], DType::F32);
    let w2 = g.weight("w2", [2, 3], DType::F32);
    let h = g.matmul(x, w1).expect("matmul");
    let e = g.unary(UnaryOp::Exp, w2).expect("exp");
    let y = g.add(h, e).expect("add");
    g.output("y", y).expect("out");
    g
}

#[test]
fn a_fallback_segment_copies_only_its_own_weights() {
    let mut rng = Rng::new(60);
    let x = random(&mut rng, &[2, 4], DType::F32, -1.0, 1.0);
    let w1 = random(&mut rng, &[4, 3], DType::F32, -1.0, 1.0);
    let w2 = random(&mut rng, &[2, 3], DType::F32, -1.0, 1.0);
    let g = fallback_graph();
    let (device, log) = Fake::device(true, 1 << 30);
    let mut s = Session::new(&device);
    s.load_weight("w1", w1.view(), DType::F32).expect("w1");
    s.load_weight("w2", w2.view(), DType::F32).expect("w2");
    let p = s.compile(&g).expect("compile with a fallback");
    assert_eq!(p.placement().fallbacks, 1, "{:?}", p.placement());
    let want = run_on(
        &Device::reference(),
        &g,
        &[("x", &x)],
        &[("w1", &w1), ("w2", &w2)],
        &[],
    )
    .expect("reference");
    for _ in 0..2 {
        let out = s.run(&p, &[("x", x.view())], &[]).expect("run");
        assert_close(
            "fallback run",
            out.get("y").expect("y"),
            &want[0],
            1e-5,
            1e-5,
        );
    }
    let reads: Vec<String> = events(&log)
        .into_iter()
        .filter(|e| e.starts_with("read"))
        .collect();
    assert_eq!(
        reads,
        vec!["read [2, 3]".to_string()],
        "only w2 (read by the CPU segment) comes to the host, once"
    );
}

#[test]
fn states_are_created_with_zeros_and_overwritten_in_place() {
    for in_place in [true, false] {
        let (device, log) = Fake::device(in_place, 1 << 20);
        let mut s = Session::new(&device);
        s.create_state("s", &[2, 3], DType::F32).expect("create");
        assert_eq!(
            events(&log),
            vec!["zeros [2, 3]"],
            "a new state: Backend::zeros"
        );
        let t = Tensor::new(&[2, 3], vec![1f32, 2.0, 3.0, 4.0, 5.0, 6.0]).expect("t");
        s.set_state("s", t.view()).expect("set");
        assert_eq!(s.read_state("s").expect("read"), t);
        s.create_state("s", &[2, 3], DType::F32).expect("reset");
        assert_eq!(
            s.read_state("s").expect("read").to_f32_vec(),
            vec![0.0; 6],
            "reset to zeros"
        );
        let want: Vec<&str> = if in_place {
            vec![
                "zeros [2, 3]",
                "write [2, 3]",
                "read [2, 3]",
                "clear [2, 3]",
            ]
        } else {
            // The backend cannot: the session falls back to new buffers.
            vec![
                "zeros [2, 3]",
                "write [2, 3]",
                "upload [2, 3]",
                "read [2, 3]",
                "clear [2, 3]",
                "zeros [2, 3]",
            ]
        };
        assert_eq!(events(&log)[..want.len()], want, "in_place={in_place}");
        // Another shape or dtype is a new buffer, never a write into the old one.
        s.create_state("s", &[3, 2], DType::F32).expect("reshape");
        s.set_state("s", Tensor::zeros(&[3, 2], DType::F16).view())
            .expect("new dtype");
        let tail = &events(&log)[want.len() + 1..];
        assert_eq!(
            tail,
            ["zeros [3, 2]", "upload [3, 2]"],
            "in_place={in_place}"
        );
        assert_eq!(s.read_state("s").expect("read").dtype(), DType::F16);
        // Sizes are checked before anything is allocated.
        let before = events(&log).len();
        let e = s
            .create_state("big", &[1 << 20], DType::F32)
            .expect_err("over the device limit");
        assert!(matches!(e, Error::LimitExceeded { .. }), "{e}");
        assert!(e.to_string().contains("[1048576]"), "{e}");
        assert_eq!(events(&log).len(), before, "nothing allocated");
    }
}

#[test]
fn huge_states_are_errors_before_any_allocation() {
    let mut s = Session::new(&Device::cpu());
    let huge = [1usize << 40, 1 << 40];
    let e = s
        .create_state("huge", &huge, DType::F32)
        .expect_err("element count overflows");
    assert!(
        e.to_string().contains("[1099511627776,1099511627776]"),
        "the message names the shape: {e}"
    );
    let e = s
        .create_state("bytes", &[1 << 62], DType::F32)
        .expect_err("byte size overflows");
    assert!(e.to_string().contains("[4611686018427387904]"), "{e}");
    assert!(s.read_state("huge").is_err() && s.read_state("bytes").is_err());
    for dtype in [DType::F32, DType::BF16] {
        let e = Device::cpu()
            .backend()
            .zeros(&huge, dtype)
            .err()
            .expect("the CPU backend's zeros checks too");
        assert!(
            e.to_string().contains("[1099511627776,1099511627776]"),
            "{e}"
        );
    }
    let z = Device::cpu()
        .backend()
        .zeros(&[2, 2], DType::I32)
        .expect("small zeros");
    assert_eq!(z.read().expect("read"), Tensor::zeros(&[2, 2], DType::I32));
}

#[test]
fn run_statistics_add_up_over_segments_runs_and_compiles() {
    let mut rng = Rng::new(61);
    let x = random(&mut rng, &[2, 4], DType::F32, -1.0, 1.0);
    let (device, _log) = Fake::device(true, 1 << 30);
    let mut s = Session::new(&device);
    assert_eq!(s.total_stats(), RunStats::default());
    s.load_weight(
        "w1",
        random(&mut rng, &[4, 3], DType::F32, -1.0, 1.0).view(),
        DType::F32,
    )
    .expect("w1");
    s.load_weight(
        "w2",
        random(&mut rng, &[2, 3], DType::F32, -1.0, 1.0).view(),
        DType::F32,
    )
    .expect("w2");
    // Three segments: fake, CPU, fake. The fake reports 2 pipelines per compile.
    let p = s.compile(&fallback_graph()).expect("compile");
    assert_eq!(s.total_stats().pipelines_built, 4, "{:?}", s.total_stats());
    assert_eq!(s.last_run_stats(), RunStats::default(), "no run yet");
    // One segment: the fake alone, with a state write of 6 elements.
    let mut g = Graph::new();
    g.state("acc", [2, 3], DType::F32);
    let xi = g.input("x", [2, 3], DType::F32);
    g.write_state("acc", xi, 0, polytensor::Offset::Fixed(0))
        .expect("write");
    s.create_state("acc", &[2, 3], DType::F32).expect("state");
    let q = s.compile(&g).expect("compile");
    assert_eq!(s.total_stats().pipelines_built, 6);
    for _ in 0..2 {
        s.run(&p, &[("x", x.view())], &[]).expect("run");
        let last = s.last_run_stats();
        assert_eq!((last.passes, last.launches.len()), (2, 2), "{last:?}");
        assert_eq!(last.pipelines_built, 0, "{last:?}");
    }
    let x6 = Tensor::new(&[2, 3], vec![1f32; 6]).expect("x6");
    s.run(&q, &[("x", x6.view())], &[]).expect("run");
    let last = s.last_run_stats();
    assert_eq!(
        (last.passes, last.state_elements_written),
        (1, 6),
        "{last:?}"
    );
    let total = s.total_stats();
    assert_eq!(
        (
            total.pipelines_built,
            total.passes,
            total.launch_count,
            total.state_elements_written
        ),
        (6, 5, 5, 6),
        "{total:?}"
    );
    // A failed run adds nothing.
    let bad = Tensor::new(&[3, 2], vec![1f32; 6]).expect("bad");
    assert!(s.run(&q, &[("x", bad.view())], &[]).is_err());
    assert_eq!(s.total_stats(), total);
}
