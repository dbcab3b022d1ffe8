//! The op set: one `enum Op`, matched exhaustively everywhere, so adding an op makes the compiler
//! list every place that must learn it.
//!
//! Attributes are plain serde data: the text form prints and parses them with RON, so the parser
//! does not grow with the op set (settled decision 10).

use serde::{Deserialize, Serialize};

use crate::dtype::{DType, Rounding};
use crate::shape::{Dim, Shape};

/// Elementwise ops of one operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum UnaryOp {
    Neg,
    Exp,
    Sqrt,
    Rsqrt,
    Tanh,
    /// GELU, tanh approximation: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).
    Gelu,
    /// x · sigmoid(x).
    Silu,
    Relu,
}

impl UnaryOp {
    /// Every unary op.
    pub const ALL: [UnaryOp; 8] = [
        UnaryOp::Neg,
        UnaryOp::Exp,
        UnaryOp::Sqrt,
        UnaryOp::Rsqrt,
        UnaryOp::Tanh,
        UnaryOp::Gelu,
        UnaryOp::Silu,
        UnaryOp::Relu,
    ];

    /// The op's name, as the builder and messages call it (`exp`, `gelu`, ...).
    pub fn name(self) -> &'static str {
        match self {
            UnaryOp::Neg => "neg",
            UnaryOp::Exp => "exp",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Rsqrt => "rsqrt",
            UnaryOp::Tanh => "tanh",
            UnaryOp::Gelu => "gelu",
            UnaryOp::Silu => "silu",
            UnaryOp::Relu => "relu",
        }
    }

    /// The op on f64 (the reference definition).
    pub fn eval_f64(self, x: f64) -> f64 {
        match self {
            UnaryOp::Neg => -x,
            UnaryOp::Exp => x.exp(),
            UnaryOp::Sqrt => x.sqrt(),
            UnaryOp::Rsqrt => 1.0 / x.sqrt(),
            UnaryOp::Tanh => x.tanh(),
            UnaryOp::Gelu => {
                let c = (2.0 / std::f64::consts::PI).sqrt();
                0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
            }
            UnaryOp::Silu => x / (1.0 + (-x).exp()),
            UnaryOp::Relu => x.max(0.0),
        }
    }

    /// The op on f32 (the fast path's definition).
    #[inline]
    pub fn eval_f32(self, x: f32) -> f32 {
        match self {
            UnaryOp::Neg => -x,
            UnaryOp::Exp => x.exp(),
            UnaryOp::Sqrt => x.sqrt(),
            UnaryOp::Rsqrt => 1.0 / x.sqrt(),
            UnaryOp::Tanh => x.tanh(),
            UnaryOp::Gelu => {
                const C: f32 = 0.797_884_6;
                0.5 * x * (1.0 + (C * (x + 0.044715 * x * x * x)).tanh())
            }
            UnaryOp::Silu => x / (1.0 + (-x).exp()),
            UnaryOp::Relu => x.max(0.0),
        }
    }
}

/// Elementwise ops of two operands, with numpy broadcasting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Max,
}

impl BinaryOp {
    /// Every binary op.
    pub const ALL: [BinaryOp; 5] = [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Max,
    ];

    /// The op's name, as the builder calls it (`add`, ..., `maximum` for the elementwise max,
    /// which tells it apart from the `max` reduction).
    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
            BinaryOp::Max => "maximum",
        }
    }

    /// The op on f64 (the reference definition).
    pub fn eval_f64(self, a: f64, b: f64) -> f64 {
        match self {
            BinaryOp::Add => a + b,
            BinaryOp::Sub => a - b,
            BinaryOp::Mul => a * b,
            BinaryOp::Div => a / b,
            BinaryOp::Max => a.max(b),
        }
    }

    /// The op on f32 (the fast path's definition).
    #[inline]
    pub fn eval_f32(self, a: f32, b: f32) -> f32 {
        match self {
            BinaryOp::Add => a + b,
            BinaryOp::Sub => a - b,
            BinaryOp::Mul => a * b,
            BinaryOp::Div => a / b,
            BinaryOp::Max => a.max(b),
        }
    }
}

/// Reductions over one axis (the axis is kept with size 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ReduceOp {
    Sum,
    Max,
    Mean,
}

impl ReduceOp {
    /// The reduction's name (`sum`, `max`, `mean`).
    pub fn name(self) -> &'static str {
        match self {
            ReduceOp::Sum => "sum",
            ReduceOp::Max => "max",
            ReduceOp::Mean => "mean",
        }
    }
}

/// Where a state write lands along its axis: a fixed offset or a per-run scalar bound at each
/// run (settled decision 2), such as the current position of a KV cache.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Offset {
    Fixed(usize),
    Sym(String),
}

/// One operation of the IR. Inputs are the node's operand list; attributes live here.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// A tensor given at each run, by name.
    Input { name: String },
    /// A tensor loaded into the session once, by name.
    Weight { name: String },
    /// A session tensor that persists across runs (a KV cache, an accumulator).
    State { name: String },
    /// Literal values: one (splatted over the shape) or one per element.
    Constant { values: Vec<f64> },
    /// Writes operand 0 into state `name` at `offset` along `axis`, in place; the node's value is
    /// the state after the write. Kept by dead-node elimination even when nothing reads it.
    WriteState {
        name: String,
        axis: usize,
        offset: Offset,
    },
    /// Batched matmul `[.., M, K] × [.., K, N] → [.., M, N]` with broadcast batch dims and
    /// optional transposes of either operand; accumulates in f32.
    MatMul {
        transpose_a: bool,
        transpose_b: bool,
    },
    /// Elementwise op of one operand.
    Unary(UnaryOp),
    /// Elementwise op of two operands with broadcasting.
    Binary(BinaryOp),
    /// Reduction over `axis`, kept with size 1; accumulates in f32.
    Reduce { op: ReduceOp, axis: usize },
    /// Converts to `to` with the given rounding (the node's output rounding is the same).
    Cast { to: DType, rounding: Rounding },
    /// The operand's elements, in row-major order, in a new shape with the same element count.
    Reshape { shape: Shape },
    /// Output dimension `i` is operand dimension `perm[i]` (a permutation of `0..rank`).
    Permute { perm: Vec<usize> },
    /// Elements `start .. start + len` along `axis`; `len` is fixed or a symbol bound per run.
    Slice { axis: usize, start: usize, len: Dim },
    /// Operand 0 followed by operand 1 along `axis` (same dtype, other dimensions equal).
    Concat { axis: usize },
    /// Rows of a table `[V, D]` (operand 0) selected by a u32 or i32 index tensor `[..]`
    /// (operand 1): `[.., D]`.
    Gather,
}

impl Op {
    /// The specific op's lower-case name for messages and placement reports, as the builder
    /// calls it: `exp`, `add`, `maximum` (elementwise), `max` (reduction), `matmul`, ...
    pub fn name(&self) -> &'static str {
        match self {
            Op::Input { .. } => "input",
            Op::Weight { .. } => "weight",
            Op::State { .. } => "state",
            Op::Constant { .. } => "constant",
            Op::WriteState { .. } => "write_state",
            Op::MatMul { .. } => "matmul",
            Op::Unary(u) => u.name(),
            Op::Binary(b) => b.name(),
            Op::Reduce { op, .. } => op.name(),
            Op::Cast { .. } => "cast",
            Op::Reshape { .. } => "reshape",
            Op::Permute { .. } => "permute",
            Op::Slice { .. } => "slice",
            Op::Concat { .. } => "concat",
            Op::Gather => "gather",
        }
    }

    /// The number of operands the op takes.
    pub fn arity(&self) -> usize {
        match self {
            Op::Input { .. } | Op::Weight { .. } | Op::State { .. } | Op::Constant { .. } => 0,
            Op::WriteState { .. }
            | Op::Unary(_)
            | Op::Reduce { .. }
            | Op::Cast { .. }
            | Op::Reshape { .. }
            | Op::Permute { .. }
            | Op::Slice { .. } => 1,
            Op::MatMul { .. } | Op::Binary(_) | Op::Concat { .. } | Op::Gather => 2,
        }
    }

    /// Sources take no operands and get their shape and dtype from the node itself.
    pub fn is_source(&self) -> bool {
        self.arity() == 0
    }

    /// Ops with an effect beyond their value (kept by dead-node elimination).
    pub fn has_side_effect(&self) -> bool {
        matches!(self, Op::WriteState { .. })
    }

    /// Elementwise ops (unary, binary, cast).
    pub fn is_elementwise(&self) -> bool {
        matches!(self, Op::Unary(_) | Op::Binary(_) | Op::Cast { .. })
    }

    /// Reductions.
    pub fn is_reduce(&self) -> bool {
        matches!(self, Op::Reduce { .. })
    }

    /// What a precision policy does with the op (`ir::passes::precision`).
    pub fn precision_class(&self) -> PrecisionClass {
        match self {
            Op::Input { .. } | Op::Weight { .. } | Op::State { .. } | Op::Constant { .. } => {
                PrecisionClass::Source
            }
            Op::Cast { .. } => PrecisionClass::Cast,
            Op::WriteState { .. } => PrecisionClass::StateWrite,
            Op::Reduce { .. } => PrecisionClass::F32,
            Op::Unary(_) | Op::Binary(_) | Op::MatMul { .. } => PrecisionClass::Converted,
            Op::Reshape { .. }
            | Op::Permute { .. }
            | Op::Slice { .. }
            | Op::Concat { .. }
            | Op::Gather => PrecisionClass::Keep,
        }
    }
}

/// How the precision policy treats an op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrecisionClass {
    /// Kept as declared (inputs, weights, states, constants).
    Source,
    /// A cast keeps its own target and rounding.
    Cast,
    /// The value is converted to the state's dtype.
    StateWrite,
    /// Accumulates and stores in f32 (reductions, softmax, norms), whatever the policy.
    F32,
    /// Stores the policy's dtype with its rounding (elementwise ops, matmul).
    Converted,
    /// Operands and output keep their dtypes (data movement, index outputs): copied as is.
    Keep,
}
