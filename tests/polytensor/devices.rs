//! The device registry: a third-party backend registered through the public API only, and the
//! ranking rule of `auto` tested with fake devices.

use std::sync::Arc;

use polytensor::backend::{DeviceBuffer, Limits, Pending, Program, RunArgs};
use polytensor::{
    Backend, DType, Device, DeviceInfo, DeviceType, Error, Graph, NodeId, Op, Result, Session,
    Tensor, TensorView,
};

/// A toy backend that only adds f32 inputs of equal shape, on the host.
struct Fake {
    name: &'static str,
    device_type: DeviceType,
    software: bool,
}

struct FakeBuffer(Tensor);
impl DeviceBuffer for FakeBuffer {
    fn shape(&self) -> Vec<usize> {
        self.0.shape().to_vec()
    }
    fn dtype(&self) -> DType {
        self.0.dtype()
    }
    fn read(&self) -> Result<Tensor> {
        Ok(self.0.clone())
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

struct FakeProgram(Graph);
struct Ready(Vec<Tensor>);
impl Pending for Ready {
    fn wait(self: Box<Self>) -> Result<Vec<Tensor>> {
        Ok(self.0)
    }
}
impl Program for FakeProgram {
    fn submit<'a>(&'a self, args: RunArgs<'a>) -> Result<Box<dyn Pending + 'a>> {
        let mut vals: Vec<Vec<f32>> = Vec::new();
        let mut shapes = Vec::new();
        for node in self.0.nodes() {
            match &node.op {
                Op::Input { name } => {
                    let v = args.inputs[name];
                    vals.push(v.data().to_f32_vec());
                    shapes.push(v.shape().to_vec());
                }
                _ => {
                    let (a, b) = (&vals[node.inputs[0].0], &vals[node.inputs[1].0]);
                    let sum = a.iter().zip(b).map(|(x, y)| x + y).collect();
                    shapes.push(shapes[node.inputs[0].0].clone());
                    vals.push(sum);
                }
            }
        }
        let outs = self
            .0
            .outputs()
            .iter()
            .map(|(_, id)| Tensor::new(&shapes[id.0], vals[id.0].clone()));
        Ok(Box::new(Ready(outs.collect::<Result<_>>()?)))
    }
}

impl Backend for Fake {
    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            name: self.name.to_string(),
            backend: "fake".to_string(),
            api: "test".to_string(),
            device_type: self.device_type,
            software: self.software,
            dtypes: vec![DType::F32],
            limits: Limits {
                max_buffer_bytes: 1 << 20,
                max_binding_bytes: 1 << 20,
            },
            details: vec![],
        }
    }
    fn supports(&self, graph: &Graph, node: NodeId) -> std::result::Result<(), String> {
        let n = graph.node(node).map_err(|e| e.to_string())?;
        match &n.op {
            Op::Input { .. } if n.dtype == DType::F32 => Ok(()),
            Op::Binary(polytensor::BinaryOp::Add)
                if graph
                    .node(n.inputs[0])
                    .map(|a| a.shape == n.shape)
                    .unwrap_or(false)
                    && graph
                        .node(n.inputs[1])
                        .map(|b| b.shape == n.shape)
                        .unwrap_or(false) =>
            {
                Ok(())
            }
            other => Err(format!("the fake backend does not run {}", other.name())),
        }
    }
    fn upload(&self, tensor: TensorView<'_>) -> Result<Arc<dyn DeviceBuffer>> {
        Ok(Arc::new(FakeBuffer(tensor.to_tensor())))
    }
    fn compile(&self, graph: &Graph) -> Result<Box<dyn Program>> {
        Ok(Box::new(FakeProgram(graph.clone())))
    }
}

fn fake(name: &'static str, device_type: DeviceType, software: bool) -> Device {
    Device::new(Arc::new(Fake {
        name,
        device_type,
        software,
    }))
}

#[test]
fn third_party_backend_registers_and_runs() {
    // Software-flagged so that `auto` elsewhere in this binary still picks the CPU.
    let dev = polytensor::register_device(Arc::new(Fake {
        name: "Plugin Accelerator 9000",
        device_type: DeviceType::Other,
        software: true,
    }));
    assert!(
        Device::list()
            .iter()
            .any(|d| d.info().name == "Plugin Accelerator 9000")
    );
    let mut g = Graph::new();
    let a = g.input("a", [3], DType::F32);
    let b = g.input("b", [3], DType::F32);
    let y = g.add(a, b).expect("add");
    g.output("y", y).expect("out");
    let mut s = Session::new(&dev);
    let p = s.compile(&g).expect("the plugin compiles what it supports");
    let (x1, x2) = (
        Tensor::new(&[3], vec![1f32, 2.0, 3.0]).expect("t"),
        Tensor::new(&[3], vec![10f32, 20.0, 30.0]).expect("t"),
    );
    let out = s
        .run(&p, &[("a", x1.view()), ("b", x2.view())], &[])
        .expect("run");
    assert_eq!(
        out.get("y").expect("y").to_f32_vec(),
        vec![11.0, 22.0, 33.0]
    );
    let mut g2 = Graph::new();
    let a = g2.input("a", [3, 3], DType::F32);
    let m = g2.matmul(a, a).expect("matmul");
    g2.output("m", m).expect("out");
    // Allow (the default): the matmul falls back to the CPU and the placement says so.
    let p2 = s.compile(&g2).expect("fallback to the CPU");
    assert_eq!(p2.placement().fallbacks, 1, "{:?}", p2.placement());
    let m = p2
        .placement()
        .nodes
        .iter()
        .find(|(_, op, _)| *op == "matmul")
        .expect("matmul placed");
    assert_eq!(m.2, Device::cpu().info().name);
    let x = Tensor::new(&[3, 3], vec![1f32, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 3.0]).expect("x");
    let out = s
        .run(&p2, &[("a", x.view())], &[])
        .expect("run with fallback");
    assert_eq!(
        out.get("m").expect("m").to_f32_vec(),
        vec![1.0, 0.0, 0.0, 0.0, 4.0, 0.0, 0.0, 0.0, 9.0]
    );
    // Deny: a clear Err naming the op and the backend's reason.
    s.set_fallback(polytensor::FallbackPolicy::Deny);
    let e = s.compile(&g2).err().expect("unsupported op");
    assert!(
        matches!(e, Error::Unsupported(_)) && e.to_string().contains("fake backend"),
        "{e}"
    );
}

#[test]
fn auto_ranks_discrete_integrated_virtual_then_cpu_never_software() {
    let cpu = Device::cpu();
    let soft = fake("llvmpipe (LLVM 15)", DeviceType::Cpu, true);
    let virt = fake("Virtio GPU", DeviceType::VirtualGpu, false);
    let igpu = fake("Intel Iris", DeviceType::IntegratedGpu, false);
    let dgpu = fake("NVIDIA H100", DeviceType::DiscreteGpu, false);
    let pick = |list: &[Device]| {
        Device::select(list, None)
            .expect("a device")
            .info()
            .name
            .clone()
    };
    assert_eq!(
        pick(&[soft.clone(), cpu.clone()]),
        cpu.info().name,
        "software never beats the CPU"
    );
    assert_eq!(
        pick(&[cpu.clone(), soft.clone(), virt.clone()]),
        "Virtio GPU"
    );
    assert_eq!(
        pick(&[virt.clone(), igpu.clone(), cpu.clone()]),
        "Intel Iris"
    );
    assert_eq!(
        pick(&[cpu.clone(), igpu.clone(), dgpu.clone(), soft.clone()]),
        "NVIDIA H100"
    );
    // The override: "cpu", an index, a name substring; an unknown name lists the devices.
    let list = [dgpu.clone(), soft.clone(), cpu.clone()];
    let sel = |q: &str| Device::select(&list, Some(q)).map(|d| d.info().name.clone());
    assert_eq!(sel("cpu").expect("cpu"), cpu.info().name);
    assert_eq!(sel("1").expect("index"), "llvmpipe (LLVM 15)");
    assert_eq!(sel("LLVMPIPE").expect("substring"), "llvmpipe (LLVM 15)");
    let e = sel("tpu").expect_err("unknown");
    assert!(matches!(e, Error::UnknownDevice { .. }), "{e}");
    assert!(
        e.to_string().contains("NVIDIA H100") && e.to_string().contains("[2]"),
        "{e}"
    );
    assert!(sel("7").is_err(), "index out of range");
    assert!(Device::select(&[], None).is_err(), "no devices");
}
