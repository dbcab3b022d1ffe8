//! Placement (settled decision 5): the session splits a graph into per-device segments by
//! `Backend::supports`, and moves values between them explicitly through the host. A backend
//! never calls another. Under `FallbackPolicy::Allow` an op the session's device cannot run goes
//! to the CPU backend; under `Deny` it is an `Err` (GPU conformance tests use `Deny`, so a CPU
//! fallback can never make a GPU test pass).

use std::collections::HashMap;

use crate::backend::{Device, Program};
use crate::error::{Error, Result};
use crate::ir::{Graph, Node, NodeId, Op};

/// What to do with an op the session's device does not support.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FallbackPolicy {
    /// Run it on the CPU backend (the default for users).
    #[default]
    Allow,
    /// Return `Error::Unsupported` instead.
    Deny,
}

/// Where a segment input comes from.
pub(crate) enum Src {
    /// A run input of the user, by name.
    User(String),
    /// The value of a node of the whole graph, computed by an earlier segment.
    Value(usize),
}

/// A run of consecutive nodes on one device, compiled as its own graph.
pub(crate) struct Segment {
    pub device: Device,
    /// True when this is the CPU fallback rather than the session's device.
    pub fallback: bool,
    pub inputs: Vec<(String, Src)>,
    /// Whole-graph node ids of the sub-graph's outputs, in order.
    pub exports: Vec<usize>,
    /// The weights the segment's own graph reads, each once (a CPU fallback segment copies
    /// only these to the host).
    pub weights: Vec<String>,
    pub program: Box<dyn Program>,
}

/// The weight names `graph` reads, each once, in node order.
fn weights_of(graph: &Graph) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for node in graph.nodes() {
        if let Op::Weight { name } = &node.op
            && !out.contains(name)
        {
            out.push(name.clone());
        }
    }
    out
}

/// The device each node of a compiled graph runs on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Node id (in the compiled graph), op name, device name; sources say `source`.
    pub nodes: Vec<(usize, &'static str, String)>,
    /// How many ops fell back to the CPU.
    pub fallbacks: usize,
}

/// The name of node `j`'s value between segments: `#` cannot appear in a user's names.
fn value_name(j: usize) -> String {
    format!("#v{j}")
}

/// Splits `graph` (validated, dead nodes removed) over `device` and the CPU fallback.
pub(crate) fn place(
    graph: &Graph,
    device: &Device,
    policy: FallbackPolicy,
) -> Result<(Vec<Segment>, Placement)> {
    let nodes = graph.nodes();
    let backend = device.backend();
    let cpu = Device::cpu();
    // Some(false): the session's device; Some(true): the CPU fallback; None: a source.
    let mut on_cpu: Vec<Option<bool>> = Vec::with_capacity(nodes.len());
    for (i, node) in nodes.iter().enumerate() {
        let verdict = backend.supports(graph, NodeId(i));
        let state_op = matches!(node.op, Op::State { .. } | Op::WriteState { .. });
        let unsupported = |why: String| {
            Error::Unsupported(format!(
                "%{i} ({}) on device {}: {why}",
                node.op.name(),
                device.info().name
            ))
        };
        let place = match (&verdict, node.op.is_source() && !state_op) {
            (_, true) => None,
            (Ok(()), false) => Some(false),
            (Err(why), false) if state_op || policy == FallbackPolicy::Deny => {
                return Err(unsupported(why.clone()));
            }
            (Err(why), false) => {
                cpu.backend()
                    .supports(graph, NodeId(i))
                    .map_err(|cpu_why| unsupported(format!("{why}; and on the CPU: {cpu_why}")))?;
                Some(true)
            }
        };
        on_cpu.push(place);
    }
    let fallbacks = on_cpu.iter().filter(|p| **p == Some(true)).count();
    let report = Placement {
        nodes: nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let where_ = match on_cpu[i] {
                    None => "source".to_string(),
                    Some(false) => device.info().name.clone(),
                    Some(true) => cpu.info().name.clone(),
                };
                (i, n.op.name(), where_)
            })
            .collect(),
        fallbacks,
    };
    if fallbacks == 0 || device.info().backend == "cpu" {
        let inputs = nodes
            .iter()
            .filter_map(|n| match &n.op {
                Op::Input { name } => Some((name.clone(), Src::User(name.clone()))),
                _ => None,
            })
            .collect();
        let seg = Segment {
            device: device.clone(),
            fallback: false,
            inputs,
            exports: graph.outputs().iter().map(|(_, id)| id.0).collect(),
            weights: weights_of(graph),
            program: backend.compile(graph)?,
        };
        return Ok((vec![seg], report));
    }
    // Segments: maximal runs of consecutive compute nodes on one device.
    let mut seg_of: Vec<Option<usize>> = vec![None; nodes.len()];
    let mut seg_cpu: Vec<bool> = Vec::new();
    for (i, p) in on_cpu.iter().enumerate() {
        if let Some(c) = *p {
            if seg_cpu.last() != Some(&c) {
                seg_cpu.push(c);
            }
            seg_of[i] = Some(seg_cpu.len() - 1);
        }
    }
    let mut subs: Vec<Graph> = vec![Graph::new(); seg_cpu.len()];
    let mut maps: Vec<HashMap<usize, NodeId>> = vec![HashMap::new(); seg_cpu.len()];
    let mut inputs: Vec<Vec<(String, Src)>> = (0..seg_cpu.len()).map(|_| Vec::new()).collect();
    let mut exports: Vec<Vec<usize>> = vec![Vec::new(); seg_cpu.len()];
    // Brings whole-graph node j into segment s (a copy of a source, or an input fed by the
    // segment that computes j).
    let bring = |s: usize,
                 j: usize,
                 subs: &mut Vec<Graph>,
                 maps: &mut Vec<HashMap<usize, NodeId>>,
                 inputs: &mut Vec<Vec<(String, Src)>>,
                 exports: &mut Vec<Vec<usize>>| {
        if let Some(&id) = maps[s].get(&j) {
            return id;
        }
        let src = &nodes[j];
        let id = match (&src.op, seg_of[j]) {
            (Op::Input { name }, _) => {
                inputs[s].push((name.clone(), Src::User(name.clone())));
                subs[s].push(src.clone())
            }
            (_, None) => subs[s].push(src.clone()),
            (_, Some(owner)) => {
                if !exports[owner].contains(&j) {
                    exports[owner].push(j);
                }
                inputs[s].push((value_name(j), Src::Value(j)));
                subs[s].input(&value_name(j), src.shape.clone(), src.dtype)
            }
        };
        maps[s].insert(j, id);
        id
    };
    for (i, node) in nodes.iter().enumerate() {
        let Some(s) = seg_of[i] else { continue };
        let mut local = Vec::with_capacity(node.inputs.len());
        for j in &node.inputs {
            local.push(bring(
                s,
                j.0,
                &mut subs,
                &mut maps,
                &mut inputs,
                &mut exports,
            ));
        }
        let id = subs[s].push(Node {
            inputs: local,
            ..node.clone()
        });
        maps[s].insert(i, id);
    }
    for (_, id) in graph.outputs() {
        let s = seg_of[id.0].unwrap_or(0);
        bring(s, id.0, &mut subs, &mut maps, &mut inputs, &mut exports);
        if !exports[s].contains(&id.0) {
            exports[s].push(id.0);
        }
    }
    let mut segments = Vec::with_capacity(subs.len());
    for (s, mut sub) in subs.into_iter().enumerate() {
        for &j in &exports[s] {
            sub.output(&value_name(j), maps[s][&j])?;
        }
        let dev = if seg_cpu[s] {
            cpu.clone()
        } else {
            device.clone()
        };
        let program = dev.backend().compile(&sub)?;
        segments.push(Segment {
            device: dev,
            fallback: seg_cpu[s],
            inputs: std::mem::take(&mut inputs[s]),
            exports: std::mem::take(&mut exports[s]),
            weights: weights_of(&sub),
            program,
        });
    }
    Ok((segments, report))
}
