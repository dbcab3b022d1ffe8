//! `polytensor bench` as a library: its JSON validates against the committed schema (and a
//! broken report does not), `--compare` gives the expected ratios on two committed reports, a
//! wrong-answer kernel injected through a backend plugin is flagged in the error column, and an
//! unknown `--device` is a clear error.

use std::any::Any;
use std::sync::Arc;

use polytensor::backend::{DeviceBuffer, Pending, Program, RunArgs};
use polytensor::bench::{self, Options, Suite, report};
use polytensor::{Backend, DType, Device, DeviceInfo, Graph, NodeId, Result, Tensor};

fn schema() -> jsonschema::Validator {
    let schema: serde_json::Value = serde_json::from_str(bench::SCHEMA).expect("schema is JSON");
    jsonschema::validator_for(&schema).expect("a valid JSON Schema")
}

fn errors(v: &jsonschema::Validator, doc: &serde_json::Value) -> Vec<String> {
    v.iter_errors(doc).map(|e| e.to_string()).collect()
}

fn quick(suites: &[Suite]) -> Options {
    Options {
        suites: suites.to_vec(),
        progress: false,
        ..Options::new(true)
    }
}

#[test]
fn a_report_validates_against_the_schema_and_a_broken_one_does_not() {
    // Every suite on the CPU (quick sizes), written and read back as JSON.
    let rep = bench::run(&[Device::cpu()], &quick(&Suite::ALL)).expect("bench runs");
    let d = &rep.devices[0];
    assert!(d.roofline.as_ref().is_some_and(|r| r.peak_gflops > 0.0));
    for suite in ["matmul", "attention", "transformer", "memory", "overhead"] {
        assert!(
            d.rows.iter().any(|r| r.suite == suite && r.status == "ok"),
            "a measured {suite} row: {:#?}",
            d.rows
        );
    }
    assert!(rep.flagged().is_empty(), "{:?}", rep.flagged());
    let path = std::env::temp_dir().join(format!("polytensor-bench-{}.json", std::process::id()));
    report::write_json(&rep, &path).expect("write");
    let back = report::read_json(&path).expect("read back");
    assert_eq!(back.devices[0].rows.len(), d.rows.len());
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("json")).expect("parses");
    let _ = std::fs::remove_file(&path);
    let v = schema();
    assert_eq!(errors(&v, &doc), Vec::<String>::new());
    // Broken reports: a missing field, an unknown unit, a wrong schema version.
    let mut missing = doc.clone();
    missing.as_object_mut().expect("object").remove("date");
    assert!(!errors(&v, &missing).is_empty(), "missing `date` accepted");
    let mut unit = doc.clone();
    unit["devices"][0]["rows"][0]["unit"] = "furlongs/s".into();
    assert!(!errors(&v, &unit).is_empty(), "unknown unit accepted");
    let mut version = doc;
    version["schema_version"] = 2.into();
    assert!(
        !errors(&v, &version).is_empty(),
        "schema version 2 accepted"
    );
}

#[test]
fn compare_gives_the_expected_ratios() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/bench");
    let v = schema();
    let mut reports = Vec::new();
    for name in ["a", "b"] {
        let path = dir.join(format!("{name}.json"));
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
        assert_eq!(errors(&v, &doc), Vec::<String>::new(), "{name}.json");
        reports.push((name.to_string(), report::read_json(&path).expect("report")));
    }
    let c = report::compare(&reports);
    assert_eq!(c.columns, ["a: gpu-a", "b: gpu-b"]);
    let ratios = |name: &str| {
        c.rows
            .iter()
            .find(|r| r.name == name)
            .map(|r| r.ratios.clone())
            .expect("row")
    };
    // Rates: b ÷ a; µs: a ÷ b (> 1 = faster); a row only b has is its own baseline.
    assert_eq!(ratios("matmul 512³"), [Some(1.0), Some(2.5)]);
    assert_eq!(
        ratios("Session::run, 1 op + readback"),
        [Some(1.0), Some(2.0)]
    );
    assert_eq!(ratios("matmul 1024³"), [None, Some(1.0)]);
    let table = report::comparison_table(&c);
    assert!(table.contains("250 (×2.50)"), "{table}");
}

/// A backend plugin whose programs compute on the CPU and then scale f32 outputs by 1.01 (every
/// element, or only the last ninth when `tail`: the last attention head): a kernel that gives
/// wrong answers.
struct WrongAnswer {
    cpu: Device,
    tail: bool,
}

struct WrongProgram(Box<dyn Program>, bool);

struct WrongPending<'a>(Box<dyn Pending + 'a>, bool);

impl Backend for WrongAnswer {
    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            name: "wrong-answer plugin".to_string(),
            backend: "test-plugin".to_string(),
            ..self.cpu.info().clone()
        }
    }
    fn supports(&self, graph: &Graph, node: NodeId) -> std::result::Result<(), String> {
        self.cpu.backend().supports(graph, node)
    }
    fn upload(&self, tensor: polytensor::TensorView<'_>) -> Result<Arc<dyn DeviceBuffer>> {
        self.cpu.backend().upload(tensor)
    }
    fn compile(&self, graph: &Graph) -> Result<Box<dyn Program>> {
        Ok(Box::new(WrongProgram(
            self.cpu.backend().compile(graph)?,
            self.tail,
        )))
    }
    fn as_any(&self) -> Option<&dyn Any> {
        None
    }
}

impl Program for WrongProgram {
    fn submit<'a>(&'a self, args: RunArgs<'a>) -> Result<Box<dyn Pending + 'a>> {
        Ok(Box::new(WrongPending(self.0.submit(args)?, self.1)))
    }
}

impl Pending for WrongPending<'_> {
    fn wait(self: Box<Self>) -> Result<Vec<Tensor>> {
        let tail = self.1;
        self.0
            .wait()?
            .into_iter()
            .map(|t| {
                if t.dtype() != DType::F32 {
                    return Ok(t);
                }
                let mut v = t.to_f32_vec();
                let from = if tail { v.len() - v.len() / 9 } else { 0 };
                for x in &mut v[from..] {
                    *x *= 1.01;
                }
                Tensor::from_f32(t.shape(), v, DType::F32)
            })
            .collect()
    }
}

#[test]
fn a_wrong_answer_kernel_is_flagged() {
    let wrong = Device::new(Arc::new(WrongAnswer {
        cpu: Device::cpu(),
        tail: false,
    }));
    let rep = bench::run(&[Device::cpu(), wrong], &quick(&[Suite::Matmul])).expect("runs");
    let (good, bad) = (&rep.devices[0], &rep.devices[1]);
    assert_eq!(bad.name, "wrong-answer plugin");
    assert!(!good.rows.is_empty() && good.rows.iter().all(|r| !r.flagged));
    assert!(
        bad.rows
            .iter()
            .all(|r| r.flagged && r.err_ratio.is_some_and(|x| x > 1.0)),
        "{:#?}",
        bad.rows
    );
    assert_eq!(rep.flagged().len(), bad.rows.len());
    assert!(report::table(&rep).contains("FLAGGED"));
    // Wrong only in the last attention head: the check samples rows of every head.
    let last_head = Device::new(Arc::new(WrongAnswer {
        cpu: Device::cpu(),
        tail: true,
    }));
    let rep = bench::run(&[last_head], &quick(&[Suite::Attention])).expect("runs");
    let rows = &rep.devices[0].rows;
    assert!(
        !rows.is_empty() && rows.iter().all(|r| r.flagged),
        "{rows:#?}"
    );
}

#[test]
fn an_unknown_device_is_a_clear_error() {
    let e = match bench::select_devices("no-such-accelerator") {
        Ok(d) => panic!("unknown device accepted: {} devices", d.len()),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("no-such-accelerator") && e.contains("CPU"),
        "names the query and the devices: {e}"
    );
    assert!(bench::select_devices("cpu").is_ok_and(|d| d.len() == 1));
    // The command line says the same and fails.
    if let Some(exe) = option_env!("CARGO_BIN_EXE_polytensor") {
        let out = std::process::Command::new(exe)
            .args(["bench", "--quick", "--device", "no-such-accelerator"])
            .output()
            .expect("runs");
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("no-such-accelerator"), "{err}");
    }
}
