//! Dead-node elimination: keeps what an output or a state write needs, renumbering the nodes
//! (which is why stochastic-rounding streams are not node ids).

use crate::ir::graph::{Graph, NodeId};

/// A copy of `graph` without the nodes that no output or side effect reaches.
pub fn dce(graph: &Graph) -> Graph {
    let n = graph.nodes.len();
    let mut live = vec![false; n];
    for (_, id) in &graph.outputs {
        live[id.0] = true;
    }
    for (i, node) in graph.nodes.iter().enumerate() {
        if node.op.has_side_effect() {
            live[i] = true;
        }
    }
    // Operands precede users, so one backward sweep marks everything reachable.
    for i in (0..n).rev() {
        if live[i] {
            for &j in &graph.nodes[i].inputs {
                live[j.0] = true;
            }
        }
    }
    let mut remap = vec![usize::MAX; n];
    let mut out = Graph::new();
    for (i, node) in graph.nodes.iter().enumerate() {
        if live[i] {
            let mut node = node.clone();
            for inp in &mut node.inputs {
                *inp = NodeId(remap[inp.0]);
            }
            remap[i] = out.push(node).0;
        }
    }
    out.outputs = graph
        .outputs
        .iter()
        .map(|(name, id)| (name.clone(), NodeId(remap[id.0])))
        .collect();
    out
}
