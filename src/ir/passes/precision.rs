//! The precision policy pass ("program in FP32, execute in BF16"): rewrites an f32 graph so its
//! elementwise ops and matmuls store f16 or bf16, rounding to nearest even or stochastically,
//! while reductions stay f32 and nodes marked keep-f32 (a residual stream) stay f32 (settled
//! decision 4). Casts are inserted where operand dtypes now differ; the graph's inputs, weights,
//! states and outputs keep their dtypes, so callers see the same interface. Constants stay as
//! built; where they meet converted nodes they are cast to nearest even, never stochastically.

use std::collections::HashMap;

use crate::dtype::{DType, Rounding};
use crate::error::{Error, Result};
use crate::ir::graph::{Graph, NodeId};
use crate::ir::op::{Op, PrecisionClass};
use crate::ir::passes::validate;

/// Where a policy stores values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Precision {
    /// The storage dtype of converted nodes: `F16` or `BF16`.
    pub dtype: DType,
    /// Stochastic rounding for converted nodes (else round to nearest even).
    pub stochastic: bool,
}

/// Stream numbers of nodes a policy converts: this base plus the node's index in the graph the
/// policy was given (fixed by the policy, not by later renumbering passes).
pub const POLICY_STREAM_BASE: u32 = 0x5000_0000;

struct Rewriter {
    out: Graph,
    casts: HashMap<(NodeId, DType), NodeId>,
}

impl Rewriter {
    /// `id` as dtype `d`, through a (cached) cast when it differs.
    fn as_dtype(&mut self, id: NodeId, d: DType, rounding: Rounding) -> Result<NodeId> {
        if self.out.node(id)?.dtype == d {
            return Ok(id);
        }
        if let Some(&c) = self.casts.get(&(id, d)) {
            return Ok(c);
        }
        // Widening is exact; narrowing uses the policy's rounding, except for a constant, which
        // never rounds stochastically (settled by `Graph::set_rounding`): it is narrowed to
        // nearest even, the same bits on every backend and every run.
        let constant = matches!(self.out.node(id)?.op, Op::Constant { .. });
        let r = if d == DType::F32 || constant {
            Rounding::NearestEven
        } else {
            rounding
        };
        let c = self.out.cast_with(id, d, r)?;
        self.casts.insert((id, d), c);
        Ok(c)
    }
}

/// Applies `policy` to `graph` (validated first).
pub fn precision(graph: &Graph, policy: Precision) -> Result<Graph> {
    validate(graph)?;
    if !matches!(policy.dtype, DType::F16 | DType::BF16) {
        return Err(Error::InvalidArgument {
            op: "precision",
            msg: format!("policy dtype {} (f16 or bf16)", policy.dtype),
        });
    }
    let mut rw = Rewriter {
        out: Graph::new(),
        casts: HashMap::new(),
    };
    let mut map: Vec<NodeId> = Vec::with_capacity(graph.nodes.len());
    for (i, node) in graph.nodes.iter().enumerate() {
        let rounding = if policy.stochastic {
            Rounding::Stochastic {
                stream: POLICY_STREAM_BASE.wrapping_add(i as u32),
            }
        } else {
            Rounding::NearestEven
        };
        let ins: Vec<NodeId> = node.inputs.iter().map(|j| map[j.0]).collect();
        let id = match node.op.precision_class() {
            PrecisionClass::Source => rw.out.push(node.clone()),
            PrecisionClass::Cast => {
                let Op::Cast { to, rounding: r } = &node.op else {
                    return Err(Error::InvalidGraph(format!(
                        "%{i}: a cast class without a cast"
                    )));
                };
                rw.out.cast_with(ins[0], *to, *r)?
            }
            PrecisionClass::StateWrite => {
                let v = rw.as_dtype(ins[0], node.dtype, rounding)?;
                rw.out.op(node.op.clone(), vec![v])?
            }
            PrecisionClass::F32 => {
                // Reductions accumulate and store in f32, then match the original dtype. Extra
                // operands (a norm's weight) are read as f32 too.
                let mut xs = Vec::with_capacity(ins.len());
                for &x in &ins {
                    xs.push(rw.as_dtype(x, DType::F32, rounding)?);
                }
                let r = rw.out.op(node.op.clone(), xs)?;
                rw.as_dtype(r, node.dtype, rounding)?
            }
            PrecisionClass::Keep => rw.out.op(node.op.clone(), ins.clone())?,
            PrecisionClass::Converted => {
                let convert = node.dtype == DType::F32 && !node.keep_f32;
                let d = if convert { policy.dtype } else { node.dtype };
                let mut xs = Vec::with_capacity(ins.len());
                for &x in &ins {
                    // Integer operands (attention's padding lengths) keep their dtype.
                    if rw.out.node(x)?.dtype.is_float() {
                        xs.push(rw.as_dtype(x, d, rounding)?);
                    } else {
                        xs.push(x);
                    }
                }
                let id = rw.out.op(node.op.clone(), xs)?;
                let new = &mut rw.out.nodes[id.0];
                new.rounding = if convert { rounding } else { node.rounding };
                id
            }
        };
        if node.keep_f32 {
            rw.out.nodes[id.0].keep_f32 = true;
        }
        map.push(id);
    }
    for (name, id) in &graph.outputs {
        let want = graph.nodes[id.0].dtype;
        let o = rw.as_dtype(map[id.0], want, Rounding::NearestEven)?;
        rw.out.output(name, o)?;
    }
    validate(&rw.out)?;
    Ok(rw.out)
}
