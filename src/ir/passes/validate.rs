//! `validate`: checks every IR rule once, before any backend sees a graph, so backends can assume
//! a well-formed graph (types re-inferred, operands in order, names consistent, outputs present).

use std::collections::HashMap;

use crate::dtype::Rounding;
use crate::error::{Error, Result};
use crate::ir::graph::Graph;
use crate::ir::op::Op;

/// Checks `graph`; the first broken rule is the `Err`.
pub fn validate(graph: &Graph) -> Result<()> {
    // Each named source must mean one tensor: (kind, name) → (shape, dtype).
    let mut sources: HashMap<(&str, &str), usize> = HashMap::new();
    for (i, node) in graph.nodes.iter().enumerate() {
        // Element counts must fit comfortably in memory arithmetic (and in the kernels' u32
        // indices): an absurd shape is an error, never an overflow.
        let numel = node
            .shape
            .max_dims()
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d));
        if numel.is_none_or(|n| n > (u32::MAX as usize) / 4) {
            return Err(Error::InvalidGraph(format!(
                "%{i} ({}): shape {} has too many elements",
                node.op.name(),
                node.shape
            )));
        }
        if node.op.is_source() {
            if !node.inputs.is_empty() {
                return Err(Error::InvalidGraph(format!(
                    "%{i}: a source takes no operands"
                )));
            }
            graph.check_source(node)?;
            let key = match &node.op {
                Op::Input { name } => Some(("input", name.as_str())),
                Op::Weight { name } => Some(("weight", name.as_str())),
                Op::State { name } => Some(("state", name.as_str())),
                _ => None,
            };
            if let Some(key) = key {
                if let Some(&j) = sources.get(&key) {
                    let prev = &graph.nodes[j];
                    if key.0 == "input" || prev.shape != node.shape || prev.dtype != node.dtype {
                        return Err(Error::InvalidGraph(format!(
                            "{} `{}` declared twice (%{j} and %{i})",
                            key.0, key.1
                        )));
                    }
                }
                sources.insert(key, i);
            }
        } else {
            let (shape, dtype) = graph.infer(&node.op, &node.inputs, i)?;
            if shape != node.shape || dtype != node.dtype {
                return Err(Error::InvalidGraph(format!(
                    "%{i} ({}) declares {}{} but its operands give {dtype}{shape}",
                    node.op.name(),
                    node.dtype,
                    node.shape
                )));
            }
        }
        if let Op::Cast { rounding, .. } = &node.op
            && *rounding != node.rounding
        {
            return Err(Error::InvalidGraph(format!(
                "%{i}: cast rounding {rounding:?} differs from the node's {:?}",
                node.rounding
            )));
        }
        if matches!(node.rounding, Rounding::Stochastic { .. }) && !node.dtype.is_float() {
            return Err(Error::InvalidGraph(format!(
                "%{i}: stochastic rounding into {}",
                node.dtype
            )));
        }
    }
    for (name, id) in &graph.outputs {
        graph.node(*id).map_err(|_| {
            Error::InvalidGraph(format!("output `{name}` names missing node %{}", id.0))
        })?;
    }
    let effects = graph.nodes.iter().any(|n| n.op.has_side_effect());
    if graph.outputs.is_empty() && !effects {
        return Err(Error::InvalidGraph(
            "the graph has no outputs and no state writes: nothing to compute".to_string(),
        ));
    }
    Ok(())
}
