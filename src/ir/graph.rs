//! The graph: nodes in topological order, named outputs, and the builder methods that infer each
//! node's shape and dtype at creation (a mismatch is an `Err` right there, naming op and shapes).

use crate::dtype::{DType, Rounding};
use crate::error::{Error, Result};
use crate::ir::op::{BinaryOp, Offset, Op, ReduceOp, UnaryOp};
use crate::shape::{Dim, Shape};

/// The index of a node in its graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub usize);

/// One node: an op, its operands, and its output type.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub op: Op,
    /// Operands, all earlier in the graph.
    pub inputs: Vec<NodeId>,
    pub shape: Shape,
    /// Output storage dtype.
    pub dtype: DType,
    /// How the output is rounded into `dtype` (settled decision 4).
    pub rounding: Rounding,
    /// A precision policy must leave this node in f32 (e.g. a residual stream).
    pub keep_f32: bool,
}

/// A computation: nodes in topological order (every operand precedes its user) plus named
/// outputs.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Graph {
    pub(crate) nodes: Vec<Node>,
    pub(crate) outputs: Vec<(String, NodeId)>,
}

fn shape_err(op: &'static str, a: &Shape, b: &Shape, detail: String) -> Error {
    Error::ShapeMismatch {
        op,
        lhs: a.to_string(),
        rhs: b.to_string(),
        detail,
    }
}

fn require_float(op: &'static str, dtype: DType) -> Result<()> {
    if dtype.is_float() {
        Ok(())
    } else {
        Err(Error::UnsupportedDType {
            op,
            dtype,
            device: None,
        })
    }
}

impl Graph {
    /// An empty graph.
    pub fn new() -> Graph {
        Graph::default()
    }

    /// The nodes, in topological order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// One node; `Err` for an id that is not in this graph.
    pub fn node(&self, id: NodeId) -> Result<&Node> {
        self.nodes.get(id.0).ok_or_else(|| {
            Error::InvalidGraph(format!(
                "node %{} does not exist (the graph has {} nodes)",
                id.0,
                self.nodes.len()
            ))
        })
    }

    /// The named outputs.
    pub fn outputs(&self) -> &[(String, NodeId)] {
        &self.outputs
    }

    /// Marks `id` as the output `name`.
    pub fn output(&mut self, name: &str, id: NodeId) -> Result<()> {
        self.node(id)?;
        if self.outputs.iter().any(|(n, _)| n == name) {
            return Err(Error::InvalidGraph(format!(
                "output `{name}` declared twice"
            )));
        }
        self.outputs.push((name.to_string(), id));
        Ok(())
    }

    /// Appends a node whose type was already inferred.
    pub(crate) fn push(&mut self, node: Node) -> NodeId {
        self.nodes.push(node);
        NodeId(self.nodes.len() - 1)
    }

    fn source(&mut self, op: Op, shape: Shape, dtype: DType) -> NodeId {
        self.push(Node {
            op,
            inputs: vec![],
            shape,
            dtype,
            rounding: Rounding::NearestEven,
            keep_f32: false,
        })
    }

    /// A run-time input `name` (symbolic dims allowed: `[Dim::sym("seq", 2048), 64.into()]`).
    pub fn input(&mut self, name: &str, shape: impl Into<Shape>, dtype: DType) -> NodeId {
        let op = Op::Input {
            name: name.to_string(),
        };
        self.source(op, shape.into(), dtype)
    }

    /// A weight `name`, loaded into the session with `Session::load_weight`.
    pub fn weight(&mut self, name: &str, shape: impl Into<Shape>, dtype: DType) -> NodeId {
        let op = Op::Weight {
            name: name.to_string(),
        };
        self.source(op, shape.into(), dtype)
    }

    /// Reads the persistent state tensor `name` (created with `Session::create_state`).
    pub fn state(&mut self, name: &str, shape: impl Into<Shape>, dtype: DType) -> NodeId {
        let op = Op::State {
            name: name.to_string(),
        };
        self.source(op, shape.into(), dtype)
    }

    /// A constant: one value splatted over `shape`, or one value per element.
    pub fn constant(
        &mut self,
        values: &[f64],
        shape: impl Into<Shape>,
        dtype: DType,
    ) -> Result<NodeId> {
        let node = Node {
            op: Op::Constant {
                values: values.to_vec(),
            },
            inputs: vec![],
            shape: shape.into(),
            dtype,
            rounding: Rounding::NearestEven,
            keep_f32: false,
        };
        self.check_source(&node)?;
        Ok(self.push(node))
    }

    /// Checks what a source node declares (constants: fixed shape, value count, values that fit
    /// an integer dtype exactly, no stochastic rounding; names).
    pub(crate) fn check_source(&self, node: &Node) -> Result<()> {
        match &node.op {
            Op::Constant { values } => {
                if !node.shape.is_fixed() {
                    return Err(Error::InvalidArgument {
                        op: "constant",
                        msg: format!("shape {} must be fixed", node.shape),
                    });
                }
                let n = node.shape.max_numel();
                if values.len() != 1 && values.len() != n {
                    return Err(Error::DataLength {
                        shape: node.shape.to_string(),
                        expected: n,
                        got: values.len(),
                    });
                }
                for &v in values {
                    crate::tensor::check_constant_value(v, node.dtype)?;
                }
                // A constant has no run to draw random bits from: every backend builds it once,
                // rounded to nearest even.
                if matches!(node.rounding, Rounding::Stochastic { .. }) {
                    return Err(Error::InvalidArgument {
                        op: "constant",
                        msg: "a constant cannot round stochastically (it is rounded to nearest \
                              even once, when the program is built)"
                            .to_string(),
                    });
                }
                Ok(())
            }
            Op::Weight { name } | Op::State { name } if !node.shape.is_fixed() => {
                Err(Error::InvalidArgument {
                    op: node.op.name(),
                    msg: format!("`{name}` needs a fixed shape, got {}", node.shape),
                })
            }
            Op::Input { name } | Op::Weight { name } | Op::State { name } => {
                if name.is_empty()
                    || !name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_.-/".contains(c))
                {
                    return Err(Error::InvalidArgument {
                        op: node.op.name(),
                        msg: format!("name `{name}`: use letters, digits and _ . - / only"),
                    });
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Writes `value` into state `name` at `offset` along `axis`, in place. The state must be
    /// read by a `state` node of this graph first (which declares its shape and dtype).
    pub fn write_state(
        &mut self,
        name: &str,
        value: NodeId,
        axis: usize,
        offset: Offset,
    ) -> Result<NodeId> {
        let op = Op::WriteState {
            name: name.to_string(),
            axis,
            offset,
        };
        self.op(op, vec![value])
    }

    /// `a @ b` for `[.., M, K] × [.., K, N]`.
    pub fn matmul(&mut self, a: NodeId, b: NodeId) -> Result<NodeId> {
        self.matmul_t(a, b, false, false)
    }

    /// Matmul with optional transposes: `a` is `[.., K, M]` when `transpose_a`, `b` is
    /// `[.., N, K]` when `transpose_b`.
    pub fn matmul_t(&mut self, a: NodeId, b: NodeId, ta: bool, tb: bool) -> Result<NodeId> {
        let op = Op::MatMul {
            transpose_a: ta,
            transpose_b: tb,
        };
        self.op(op, vec![a, b])
    }

    /// Fused attention `softmax(scale·q·kᵀ + mask)·v` (see [`Op::Attention`]): q
    /// `[B, Hq, Sq, D]`, k and v `[B, Hkv, Skv, D]`, `lengths` (u32 `[B]`, valid keys per batch
    /// row) for a key-padding mask. With `q_offset`, the keys read are the first
    /// `q_offset + Sq` (a KV cache), and a causal query i sees keys ≤ q_offset + i.
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        &mut self,
        q: NodeId,
        k: NodeId,
        v: NodeId,
        lengths: Option<NodeId>,
        scale: f64,
        causal: bool,
        q_offset: Option<Offset>,
    ) -> Result<NodeId> {
        self.attention_op(q, k, v, lengths, (scale, causal, q_offset), false)
    }

    /// Each query row's log-sum-exp of the same attention's scaled, masked scores (see
    /// [`Op::Attention`] with `lse`): f32 `[B, Hq, Sq]`, what a fused attention backward needs.
    /// Arguments as [`Graph::attention`].
    #[allow(clippy::too_many_arguments)]
    pub fn attention_lse(
        &mut self,
        q: NodeId,
        k: NodeId,
        v: NodeId,
        lengths: Option<NodeId>,
        scale: f64,
        causal: bool,
        q_offset: Option<Offset>,
    ) -> Result<NodeId> {
        self.attention_op(q, k, v, lengths, (scale, causal, q_offset), true)
    }

    fn attention_op(
        &mut self,
        q: NodeId,
        k: NodeId,
        v: NodeId,
        lengths: Option<NodeId>,
        (scale, causal, q_offset): (f64, bool, Option<Offset>),
        lse: bool,
    ) -> Result<NodeId> {
        let mut inputs = vec![q, k, v];
        inputs.extend(lengths);
        let op = Op::Attention {
            scale,
            causal,
            q_offset,
            padding: lengths.is_some(),
            lse,
        };
        self.op(op, inputs)
    }

    /// Rotary position embedding (see [`Op::Rope`]) of x `[B, H, S, D]`: pairs of the first
    /// `rotary_dim` elements of each row turn by pos · θ^(−2i/rotary_dim), pos = `offset` + s;
    /// rotate-half pairs (i, i + rotary_dim/2), or (2i, 2i + 1) when `interleaved`.
    pub fn rope(
        &mut self,
        x: NodeId,
        theta: f64,
        rotary_dim: usize,
        interleaved: bool,
        offset: Offset,
    ) -> Result<NodeId> {
        let op = Op::Rope {
            theta,
            rotary_dim,
            interleaved,
            offset,
        };
        self.op(op, vec![x])
    }

    /// An elementwise op of one operand.
    pub fn unary(&mut self, op: UnaryOp, x: NodeId) -> Result<NodeId> {
        self.op(Op::Unary(op), vec![x])
    }

    /// An elementwise op of two operands, with broadcasting.
    pub fn binary(&mut self, op: BinaryOp, a: NodeId, b: NodeId) -> Result<NodeId> {
        self.op(Op::Binary(op), vec![a, b])
    }

    /// `a + b` with broadcasting.
    pub fn add(&mut self, a: NodeId, b: NodeId) -> Result<NodeId> {
        self.binary(BinaryOp::Add, a, b)
    }

    /// `a - b` with broadcasting.
    pub fn sub(&mut self, a: NodeId, b: NodeId) -> Result<NodeId> {
        self.binary(BinaryOp::Sub, a, b)
    }

    /// `a * b` with broadcasting.
    pub fn mul(&mut self, a: NodeId, b: NodeId) -> Result<NodeId> {
        self.binary(BinaryOp::Mul, a, b)
    }

    /// `a / b` with broadcasting.
    pub fn div(&mut self, a: NodeId, b: NodeId) -> Result<NodeId> {
        self.binary(BinaryOp::Div, a, b)
    }

    /// `max(a, b)` with broadcasting.
    pub fn maximum(&mut self, a: NodeId, b: NodeId) -> Result<NodeId> {
        self.binary(BinaryOp::Max, a, b)
    }

    /// A reduction over `axis` (kept with size 1).
    pub fn reduce(&mut self, op: ReduceOp, x: NodeId, axis: usize) -> Result<NodeId> {
        self.op(Op::Reduce { op, axis }, vec![x])
    }

    /// Softmax over the last axis (same shape and dtype as `x`).
    pub fn softmax(&mut self, x: NodeId) -> Result<NodeId> {
        self.op(Op::Softmax, vec![x])
    }

    /// RMS norm over the last axis: `x / sqrt(mean(x²) + eps) · w`, `w` of shape `[last]` and
    /// `x`'s dtype.
    pub fn rms_norm(&mut self, x: NodeId, w: NodeId, eps: f64) -> Result<NodeId> {
        self.op(Op::RmsNorm { eps }, vec![x, w])
    }

    /// Layer norm over the last axis: `(x − mean) / sqrt(var + eps) · w + b`, with `w` and `b`
    /// optional (`[last]` each, `x`'s dtype).
    pub fn layer_norm(
        &mut self,
        x: NodeId,
        w: Option<NodeId>,
        b: Option<NodeId>,
        eps: f64,
    ) -> Result<NodeId> {
        let op = Op::LayerNorm {
            eps,
            weight: w.is_some(),
            bias: b.is_some(),
        };
        let inputs = std::iter::once(x).chain(w).chain(b).collect();
        self.op(op, inputs)
    }

    /// The index of the largest element of the last axis, u32 `[.., 1]` (ties: lowest index).
    pub fn argmax(&mut self, x: NodeId) -> Result<NodeId> {
        self.op(Op::ArgMax, vec![x])
    }

    /// Converts `x` to `to`, rounding to nearest even.
    pub fn cast(&mut self, x: NodeId, to: DType) -> Result<NodeId> {
        self.cast_with(x, to, Rounding::NearestEven)
    }

    /// Converts `x` to `to` with the given rounding.
    pub fn cast_with(&mut self, x: NodeId, to: DType, rounding: Rounding) -> Result<NodeId> {
        self.op(Op::Cast { to, rounding }, vec![x])
    }

    /// `x`'s elements, in row-major order, in `shape` (the same element count). A symbolic
    /// dimension may pass through only where the layout is provably the same for every binding:
    /// both shapes name the same symbols in the same order, and the fixed dimensions before,
    /// between and after them have equal products; anything else is an `Err`.
    pub fn reshape(&mut self, x: NodeId, shape: impl Into<Shape>) -> Result<NodeId> {
        self.op(
            Op::Reshape {
                shape: shape.into(),
            },
            vec![x],
        )
    }

    /// Reorders `x`'s dimensions: output dimension `i` is `x`'s dimension `perm[i]`.
    pub fn permute(&mut self, x: NodeId, perm: &[usize]) -> Result<NodeId> {
        self.op(
            Op::Permute {
                perm: perm.to_vec(),
            },
            vec![x],
        )
    }

    /// Elements `start .. start + len` of `x` along `axis`, which must be a fixed dimension.
    /// `len` is fixed, or a symbol `Dim::sym(name, max)` bound at each run (a run-time length,
    /// with `start + max` inside the dimension).
    pub fn slice(
        &mut self,
        x: NodeId,
        axis: usize,
        start: usize,
        len: impl Into<Dim>,
    ) -> Result<NodeId> {
        let len = len.into();
        self.op(Op::Slice { axis, start, len }, vec![x])
    }

    /// `xs` joined along `axis` (same dtype and rank, other dimensions equal, `axis` fixed in
    /// each). More than two operands become a chain of two-operand concats.
    pub fn concat(&mut self, xs: &[NodeId], axis: usize) -> Result<NodeId> {
        let (&first, rest) = xs.split_first().ok_or_else(|| Error::InvalidArgument {
            op: "concat",
            msg: "needs at least two operands, got none".to_string(),
        })?;
        if rest.is_empty() {
            return Err(Error::InvalidArgument {
                op: "concat",
                msg: "needs at least two operands, got one".to_string(),
            });
        }
        let mut y = first;
        for &x in rest {
            y = self.op(Op::Concat { axis }, vec![y, x])?;
        }
        Ok(y)
    }

    /// Rows of `table` `[V, D]` at the u32 or i32 indices `idx` `[..]`: `[.., D]` in the table's
    /// dtype. An index given from the host outside `0..V` is an `Err` at run time.
    pub fn gather(&mut self, table: NodeId, idx: NodeId) -> Result<NodeId> {
        self.op(Op::Gather, vec![table, idx])
    }

    /// Sets how node `id` rounds its output into its storage dtype (stochastic rounding matters
    /// for f16/bf16 outputs; for a cast it is the cast's rounding).
    pub fn set_rounding(&mut self, id: NodeId, rounding: Rounding) -> Result<()> {
        let node = self.node(id)?;
        if matches!(rounding, Rounding::Stochastic { .. }) && !node.dtype.is_float() {
            return Err(Error::UnsupportedDType {
                op: "set_rounding",
                dtype: node.dtype,
                device: None,
            });
        }
        if matches!(rounding, Rounding::Stochastic { .. }) && matches!(node.op, Op::Constant { .. })
        {
            return Err(Error::InvalidArgument {
                op: "set_rounding",
                msg: format!(
                    "%{}: a constant cannot round stochastically (it is rounded to nearest even \
                     once, when the program is built)",
                    id.0
                ),
            });
        }
        let node = &mut self.nodes[id.0];
        node.rounding = rounding;
        if let Op::Cast { rounding: r, .. } = &mut node.op {
            *r = rounding;
        }
        Ok(())
    }

    /// Marks a node keep-f32 (a precision policy leaves it in f32).
    pub fn keep_f32(&mut self, id: NodeId) -> Result<()> {
        self.node(id)?;
        self.nodes[id.0].keep_f32 = true;
        Ok(())
    }

    /// Appends a non-source op after inferring its type.
    pub fn op(&mut self, op: Op, inputs: Vec<NodeId>) -> Result<NodeId> {
        let (shape, dtype) = self.infer(&op, &inputs, self.nodes.len())?;
        let rounding = match &op {
            Op::Cast { rounding, .. } => *rounding,
            _ => Rounding::NearestEven,
        };
        Ok(self.push(Node {
            op,
            inputs,
            shape,
            dtype,
            rounding,
            keep_f32: false,
        }))
    }

    /// Infers the output shape and dtype of `op` applied to `inputs`, as node number `at` (only
    /// earlier nodes may be operands). Used by the builder and by `validate`.
    pub(crate) fn infer(&self, op: &Op, inputs: &[NodeId], at: usize) -> Result<(Shape, DType)> {
        let name = op.name();
        if inputs.len() != op.arity() {
            return Err(Error::InvalidGraph(format!(
                "{name} takes {} operands, got {}",
                op.arity(),
                inputs.len()
            )));
        }
        let mut ins = Vec::with_capacity(inputs.len());
        for &i in inputs {
            if i.0 >= at {
                return Err(Error::InvalidGraph(format!(
                    "{name} at %{at} reads %{}, which does not precede it",
                    i.0
                )));
            }
            ins.push(self.node(i)?);
        }
        match op {
            Op::Input { .. } | Op::Weight { .. } | Op::State { .. } | Op::Constant { .. } => {
                Err(Error::InvalidGraph(format!(
                    "{name} is a source: add it with its builder method"
                )))
            }
            Op::Unary(_) => {
                require_float(name, ins[0].dtype)?;
                Ok((ins[0].shape.clone(), ins[0].dtype))
            }
            Op::Binary(_) => {
                let (a, b) = (ins[0], ins[1]);
                require_float(name, a.dtype)?;
                if a.dtype != b.dtype {
                    return Err(Error::DTypeMismatch {
                        op: name,
                        lhs: a.dtype,
                        rhs: b.dtype,
                    });
                }
                Ok((Shape::broadcast(name, &a.shape, &b.shape)?, a.dtype))
            }
            Op::Cast { to, .. } => Ok((ins[0].shape.clone(), *to)),
            Op::Reduce { axis, .. } => {
                require_float(name, ins[0].dtype)?;
                let mut dims = ins[0].shape.0.clone();
                if *axis >= dims.len() {
                    return Err(Error::InvalidArgument {
                        op: name,
                        msg: format!("axis {axis} out of range for shape {}", ins[0].shape),
                    });
                }
                dims[*axis] = Dim::Fixed(1);
                Ok((Shape(dims), ins[0].dtype))
            }
            Op::MatMul {
                transpose_a,
                transpose_b,
            } => infer_matmul(ins[0], ins[1], *transpose_a, *transpose_b),
            Op::Softmax | Op::RmsNorm { .. } | Op::LayerNorm { .. } => infer_row(op, &ins),
            Op::ArgMax => {
                let x = ins[0];
                require_float(name, x.dtype)?;
                let mut dims = x.shape.0.clone();
                match dims.last_mut() {
                    Some(d) => *d = Dim::Fixed(1),
                    None => {
                        return Err(Error::InvalidArgument {
                            op: name,
                            msg: "needs rank ≥ 1, got a scalar".to_string(),
                        });
                    }
                }
                Ok((Shape(dims), DType::U32))
            }
            Op::Reshape { shape } => infer_reshape(ins[0], shape),
            Op::Permute { perm } => infer_permute(ins[0], perm),
            Op::Slice { axis, start, len } => infer_slice(ins[0], *axis, *start, len),
            Op::Concat { axis } => infer_concat(ins[0], ins[1], *axis),
            Op::Gather => infer_gather(ins[0], ins[1]),
            Op::Attention { padding, lse, .. } => infer_attention(&ins, *padding, *lse),
            Op::Rope {
                theta,
                rotary_dim,
                offset,
                ..
            } => infer_rope(ins[0], *theta, *rotary_dim, offset),
            Op::WriteState { name: s, axis, .. } => {
                let state = self.nodes[..at]
                    .iter()
                    .find(|n| matches!(&n.op, Op::State { name } if name == s))
                    .ok_or_else(|| Error::UnknownState {
                        name: s.clone(),
                        known: "(write_state needs a `state` node of the same name earlier in the graph)"
                            .to_string(),
                    })?;
                infer_write(state, ins[0], *axis)
            }
        }
    }
}

/// Softmax and the norms: a float `x` of rank ≥ 1, parameters of shape `[last]` and `x`'s dtype,
/// an `eps` that is a positive normal f32. The output is `x`'s shape and dtype.
fn infer_row(op: &Op, ins: &[&Node]) -> Result<(Shape, DType)> {
    let name = op.name();
    let x = ins[0];
    require_float(name, x.dtype)?;
    let Some(last) = x.shape.0.last() else {
        return Err(Error::InvalidArgument {
            op: name,
            msg: "needs rank ≥ 1, got a scalar".to_string(),
        });
    };
    let eps = match op {
        Op::RmsNorm { eps } | Op::LayerNorm { eps, .. } => Some(*eps),
        _ => None,
    };
    // A positive normal f32, so sqrt(var + eps) is never 0 (kernels compute in f32).
    if let Some(eps) = eps
        && !(f64::from(f32::MIN_POSITIVE)..=f64::from(f32::MAX)).contains(&eps)
    {
        return Err(Error::InvalidArgument {
            op: name,
            msg: format!("eps must be a positive normal f32 (1.2e-38 ..= 3.4e38), got {eps}"),
        });
    }
    for p in &ins[1..] {
        if p.dtype != x.dtype {
            return Err(Error::DTypeMismatch {
                op: name,
                lhs: x.dtype,
                rhs: p.dtype,
            });
        }
        if p.shape.0.len() != 1 || &p.shape.0[0] != last {
            return Err(shape_err(
                name,
                &x.shape,
                &p.shape,
                format!("weight and bias must have shape [{last}] (the last axis of x)"),
            ));
        }
    }
    Ok((x.shape.clone(), x.dtype))
}

fn infer_matmul(a: &Node, b: &Node, ta: bool, tb: bool) -> Result<(Shape, DType)> {
    let op = "matmul";
    require_float(op, a.dtype)?;
    if a.dtype != b.dtype {
        return Err(Error::DTypeMismatch {
            op,
            lhs: a.dtype,
            rhs: b.dtype,
        });
    }
    if a.shape.rank() < 2 || b.shape.rank() < 2 {
        return Err(shape_err(
            op,
            &a.shape,
            &b.shape,
            "both operands need rank ≥ 2".to_string(),
        ));
    }
    let (ra, rb) = (a.shape.rank(), b.shape.rank());
    let (m, ka) = if ta {
        (&a.shape.0[ra - 1], &a.shape.0[ra - 2])
    } else {
        (&a.shape.0[ra - 2], &a.shape.0[ra - 1])
    };
    let (kb, n) = if tb {
        (&b.shape.0[rb - 1], &b.shape.0[rb - 2])
    } else {
        (&b.shape.0[rb - 2], &b.shape.0[rb - 1])
    };
    if ka != kb {
        return Err(shape_err(
            op,
            &a.shape,
            &b.shape,
            format!("inner dimensions {ka} and {kb} differ (transpose_a={ta}, transpose_b={tb})"),
        ));
    }
    let batch = Shape::broadcast(
        op,
        &Shape(a.shape.0[..ra - 2].to_vec()),
        &Shape(b.shape.0[..rb - 2].to_vec()),
    )
    .map_err(|_| {
        shape_err(
            op,
            &a.shape,
            &b.shape,
            "batch dimensions do not broadcast".to_string(),
        )
    })?;
    let mut dims = batch.0;
    dims.push(m.clone());
    dims.push(n.clone());
    Ok((Shape(dims), a.dtype))
}

fn infer_write(state: &Node, value: &Node, axis: usize) -> Result<(Shape, DType)> {
    let op = "write_state";
    if value.dtype != state.dtype {
        return Err(Error::DTypeMismatch {
            op,
            lhs: state.dtype,
            rhs: value.dtype,
        });
    }
    let (s, v) = (&state.shape, &value.shape);
    if s.rank() != v.rank() || axis >= s.rank() {
        return Err(shape_err(
            op,
            s,
            v,
            format!("state and value need the same rank with axis {axis} inside it"),
        ));
    }
    for (i, (ds, dv)) in s.0.iter().zip(&v.0).enumerate() {
        let ok = if i == axis {
            dv.max() <= ds.max()
        } else {
            ds == dv
        };
        if !ok {
            return Err(shape_err(
                op,
                s,
                v,
                format!("dimension {i}: value {dv} does not fit state {ds}"),
            ));
        }
    }
    Ok((s.clone(), state.dtype))
}

/// A shape cut at its symbolic dimensions: the symbols in order, and the product of the fixed
/// dimensions before, between and after them (`None` on overflow).
fn sym_segments(s: &Shape) -> (Vec<&Dim>, Vec<Option<usize>>) {
    let (mut syms, mut products) = (Vec::new(), vec![Some(1usize)]);
    for d in s.dims() {
        match d {
            Dim::Fixed(n) => {
                if let Some(p) = products.last_mut() {
                    *p = p.and_then(|p| p.checked_mul(*n));
                }
            }
            Dim::Sym(..) => {
                syms.push(d);
                products.push(Some(1));
            }
        }
    }
    (syms, products)
}

fn infer_reshape(x: &Node, shape: &Shape) -> Result<(Shape, DType)> {
    let (xs, xp) = sym_segments(&x.shape);
    let (ys, yp) = sym_segments(shape);
    if xp.iter().chain(&yp).any(Option::is_none) {
        return Err(shape_err(
            "reshape",
            &x.shape,
            shape,
            "too many elements".to_string(),
        ));
    }
    if xs != ys {
        return Err(shape_err(
            "reshape",
            &x.shape,
            shape,
            "both shapes must have the same symbolic dimensions in the same order (no arithmetic \
             on symbols)"
                .to_string(),
        ));
    }
    if xp != yp {
        let detail = if xs.is_empty() {
            format!(
                "element counts {} and {} differ",
                x.shape.max_numel(),
                shape.max_numel()
            )
        } else {
            "the fixed dimensions before, between and after the symbols must have equal products, \
             so the layout is the same for every binding"
                .to_string()
        };
        return Err(shape_err("reshape", &x.shape, shape, detail));
    }
    Ok((shape.clone(), x.dtype))
}

fn infer_permute(x: &Node, perm: &[usize]) -> Result<(Shape, DType)> {
    let rank = x.shape.rank();
    let mut seen = vec![false; rank];
    let ok = perm.len() == rank
        && perm
            .iter()
            .all(|&p| p < rank && !std::mem::replace(&mut seen[p], true));
    if !ok {
        return Err(Error::InvalidArgument {
            op: "permute",
            msg: format!(
                "{perm:?} is not a permutation of the {rank} dimensions of {}",
                x.shape
            ),
        });
    }
    let dims = perm.iter().map(|&p| x.shape.0[p].clone()).collect();
    Ok((Shape(dims), x.dtype))
}

fn infer_slice(x: &Node, axis: usize, start: usize, len: &Dim) -> Result<(Shape, DType)> {
    let op = "slice";
    let Some(d) = x.shape.dims().get(axis) else {
        return Err(Error::InvalidArgument {
            op,
            msg: format!("axis {axis} out of range for shape {}", x.shape),
        });
    };
    let Dim::Fixed(n) = d else {
        return Err(Error::InvalidArgument {
            op,
            msg: format!(
                "axis {axis} of {} is symbolic: static bounds need a fixed dimension",
                x.shape
            ),
        });
    };
    if start.checked_add(len.max()).is_none_or(|end| end > *n) {
        return Err(Error::InvalidArgument {
            op,
            msg: format!(
                "elements {start}..{start}+{len} along axis {axis} exceed its size {n} (shape {})",
                x.shape
            ),
        });
    }
    let mut dims = x.shape.0.clone();
    dims[axis] = len.clone();
    Ok((Shape(dims), x.dtype))
}

fn infer_concat(a: &Node, b: &Node, axis: usize) -> Result<(Shape, DType)> {
    let op = "concat";
    if a.dtype != b.dtype {
        return Err(Error::DTypeMismatch {
            op,
            lhs: a.dtype,
            rhs: b.dtype,
        });
    }
    let (sa, sb) = (&a.shape, &b.shape);
    if sa.rank() != sb.rank() || axis >= sa.rank() {
        return Err(shape_err(
            op,
            sa,
            sb,
            format!("operands need the same rank with axis {axis} inside it"),
        ));
    }
    let mut dims = sa.0.clone();
    for (i, (da, db)) in sa.0.iter().zip(&sb.0).enumerate() {
        if i == axis {
            let (Dim::Fixed(x), Dim::Fixed(y)) = (da, db) else {
                return Err(shape_err(
                    op,
                    sa,
                    sb,
                    format!(
                        "axis {axis} must be fixed in both operands (no arithmetic on symbols)"
                    ),
                ));
            };
            let sum = x
                .checked_add(*y)
                .ok_or_else(|| shape_err(op, sa, sb, format!("axis {axis} sizes overflow")))?;
            dims[i] = Dim::Fixed(sum);
        } else if da != db {
            return Err(shape_err(
                op,
                sa,
                sb,
                format!("dimension {i} differs: {da} and {db}"),
            ));
        }
    }
    Ok((Shape(dims), a.dtype))
}

fn infer_gather(table: &Node, idx: &Node) -> Result<(Shape, DType)> {
    let op = "gather";
    if !matches!(idx.dtype, DType::U32 | DType::I32) {
        return Err(Error::InvalidArgument {
            op,
            msg: format!("indices must be u32 or i32, got {}{}", idx.dtype, idx.shape),
        });
    }
    if table.shape.rank() != 2 {
        return Err(shape_err(
            op,
            &table.shape,
            &idx.shape,
            "the table must be [V, D]".to_string(),
        ));
    }
    let mut dims = idx.shape.0.clone();
    dims.push(table.shape.0[1].clone());
    Ok((Shape(dims), table.dtype))
}

/// Attention's operands: q `[B, Hq, Sq, D]`, k = v `[B, Hkv, Skv, D]` (one float dtype, Hq a
/// multiple of Hkv, B and D equal), lengths u32 `[B]`.
fn infer_attention(ins: &[&Node], padding: bool, lse: bool) -> Result<(Shape, DType)> {
    let (q, k, v) = (ins[0], ins[1], ins[2]);
    let bad = |msg: String| Error::ShapeMismatch {
        op: "attention",
        lhs: q.shape.to_string(),
        rhs: k.shape.to_string(),
        detail: msg,
    };
    require_float("attention", q.dtype)?;
    for x in [k, v] {
        if x.dtype != q.dtype {
            return Err(Error::DTypeMismatch {
                op: "attention",
                lhs: q.dtype,
                rhs: x.dtype,
            });
        }
    }
    if q.shape.rank() != 4 || k.shape.rank() != 4 || v.shape != k.shape {
        return Err(bad(format!(
            "q [B, Hq, Sq, D], k and v [B, Hkv, Skv, D] (v is {})",
            v.shape
        )));
    }
    let (qd, kd) = (q.shape.dims(), k.shape.dims());
    if qd[0] != kd[0] || qd[3] != kd[3] {
        return Err(bad("batch and head dims of q and k differ".to_string()));
    }
    let (Dim::Fixed(hq), Dim::Fixed(hkv), Dim::Fixed(_)) = (&qd[1], &kd[1], &qd[3]) else {
        return Err(bad("head counts and the head dim must be fixed".to_string()));
    };
    if *hkv == 0 || hq % hkv != 0 {
        return Err(bad(format!(
            "query heads {hq} are not a multiple of key/value heads {hkv}"
        )));
    }
    if padding {
        let l = ins[3];
        if l.dtype != DType::U32 || l.shape.rank() != 1 || l.shape.dims()[0] != qd[0] {
            return Err(Error::ShapeMismatch {
                op: "attention",
                lhs: q.shape.to_string(),
                rhs: format!("{}{}", l.dtype, l.shape),
                detail: "key lengths must be u32 [B]".to_string(),
            });
        }
    }
    if lse {
        return Ok((Shape(qd[..3].to_vec()), DType::F32));
    }
    Ok((q.shape.clone(), q.dtype))
}

/// Rope's operand: a float x `[B, H, S, D]` with a fixed, even D; an even rotary dimension in
/// 2 ..= D; θ finite and ≥ 1 (so no frequency exceeds 1); a fixed first position whose rows stay
/// below [`crate::ir::ROPE_MAX_POSITION`]. The output is x's shape and dtype.
fn infer_rope(x: &Node, theta: f64, rotary_dim: usize, offset: &Offset) -> Result<(Shape, DType)> {
    let op = "rope";
    let bad = |msg: String| Error::InvalidArgument { op, msg };
    require_float(op, x.dtype)?;
    if x.shape.rank() != 4 {
        return Err(bad(format!("x must be [B, H, S, D], got {}", x.shape)));
    }
    let dims = x.shape.dims();
    let Dim::Fixed(d) = dims[3] else {
        return Err(bad(format!("the head dim must be fixed, got {}", x.shape)));
    };
    if !d.is_multiple_of(2) {
        return Err(bad(format!(
            "the head dim must be even, got {d} in {}",
            x.shape
        )));
    }
    if rotary_dim == 0 || !rotary_dim.is_multiple_of(2) || rotary_dim > d {
        return Err(bad(format!(
            "rotary_dim must be even and in 2 ..= {d} (the head dim of {}), got {rotary_dim}",
            x.shape
        )));
    }
    if !(theta.is_finite() && theta >= 1.0) {
        return Err(bad(format!("theta must be finite and ≥ 1, got {theta}")));
    }
    if let Offset::Fixed(_) = offset {
        crate::ir::rope_first_position(offset, dims[2].max(), &crate::shape::Bindings::new())?;
    }
    Ok((x.shape.clone(), x.dtype))
}
