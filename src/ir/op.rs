//! The op set: one `enum Op`, matched exhaustively everywhere, so adding an op makes the compiler
//! list every place that must learn it.
//!
//! Attributes are plain serde data: the text form prints and parses them with RON, so the parser
//! does not grow with the op set (settled decision 10).

use serde::{Deserialize, Serialize};

use crate::dtype::{DType, Rounding};
use crate::error::{Error, Result};
use crate::shape::{Bindings, Dim, Shape};

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
    /// The error function (an f32 port of FreeBSD's `erff` in WGSL, accurate to a few ulps).
    Erf,
    /// GELU, exact form: 0.5·x·(1 + erf(x/√2)), computed as 0.5·x·erfc(−x/√2) for x < 0 so the
    /// negative tail keeps its relative accuracy.
    GeluErf,
}

impl UnaryOp {
    /// Every unary op.
    pub const ALL: [UnaryOp; 10] = [
        UnaryOp::Neg,
        UnaryOp::Exp,
        UnaryOp::Sqrt,
        UnaryOp::Rsqrt,
        UnaryOp::Tanh,
        UnaryOp::Gelu,
        UnaryOp::Silu,
        UnaryOp::Relu,
        UnaryOp::Erf,
        UnaryOp::GeluErf,
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
            UnaryOp::Erf => "erf",
            UnaryOp::GeluErf => "gelu_erf",
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
            UnaryOp::Erf => libm::erf(x),
            UnaryOp::GeluErf => {
                let t = x * std::f64::consts::FRAC_1_SQRT_2;
                if x < 0.0 {
                    0.5 * x * libm::erfc(-t)
                } else {
                    0.5 * x * (1.0 + libm::erf(t))
                }
            }
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
            UnaryOp::Erf => libm::erff(x),
            UnaryOp::GeluErf => {
                let t = x * std::f32::consts::FRAC_1_SQRT_2;
                if x < 0.0 {
                    0.5 * x * libm::erfcf(-t)
                } else {
                    0.5 * x * (1.0 + libm::erff(t))
                }
            }
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
    /// Softmax over the last axis, max-subtracted, accumulated in f32. Inputs are clamped to
    /// the finite range first, so a row masked with −Inf (or a finite sentinel) everywhere gives
    /// the uniform distribution on every backend, never NaN.
    Softmax,
    /// `x / sqrt(mean(x²) + eps) · w` over the last axis; operands x, w (`[last]`).
    RmsNorm { eps: f64 },
    /// `(x − mean) / sqrt(var + eps) · w + b` over the last axis (biased variance); operands
    /// x, then w (`[last]`) when `weight`, then b (`[last]`) when `bias`.
    LayerNorm { eps: f64, weight: bool, bias: bool },
    /// The index of the largest element of the last axis, as u32 `[.., 1]`. Ties go to the
    /// lowest index; NaN (either sign) compares above every number, so the first NaN wins;
    /// −0 equals +0; an empty row gives 0.
    ArgMax,
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
    /// Fused scaled-dot-product attention, `softmax(scale·QKᵀ + mask)·V` per head, the scores
    /// never stored. Operands: q `[B, Hq, Sq, D]`, k and v `[B, Hkv, Skv, D]` (Hq a multiple of
    /// Hkv: query head h reads key/value head h / (Hq / Hkv)), then, when `padding`, the number
    /// of valid keys per batch row (u32 `[B]`). The keys read are the first `q_offset + Sq`
    /// (all Skv without a `q_offset`; a run where that exceeds Skv is an `Err`), so attention can
    /// read a prefix of a KV-cache state directly. `causal`: query i sees keys ≤ q_offset + i.
    /// A row with no visible key gives zeros. Accumulates in f32; output `[B, Hq, Sq, D]`.
    ///
    /// With `lse`, the same attention emits each query row's log-sum-exp of its masked, scaled
    /// scores instead, `ln Σ_j exp(scale·q·k_j)` over the keys the row sees, in f32 `[B, Hq, Sq]`
    /// (−3.4028235e38, f32's lowest, for a row with no visible key: a finite sentinel). A fused
    /// backward recomputes the weights from it as `exp(s − lse)`.
    Attention {
        scale: f64,
        causal: bool,
        q_offset: Option<Offset>,
        padding: bool,
        #[serde(default)]
        lse: bool,
    },
    /// Rotary position embedding of x `[B, H, S, D]` (D even): the first `rotary_dim` (even,
    /// ≤ D) elements of each row turn in pairs by the angle pos · θ^(−2i/rotary_dim), where pair
    /// i is (i, i + rotary_dim/2) (rotate-half, as HF Llama) or (2i, 2i + 1) when `interleaved`
    /// (GPT-J, GGUF); the rest pass through. Row s has position `offset + s` (positions below
    /// 2²⁴, [`ROPE_MAX_POSITION`]); a symbolic offset is bound at each run, so a decode step
    /// needs no new program. Computes in f32 from f64 angles (exactly range-reduced on GPUs).
    Rope {
        theta: f64,
        rotary_dim: usize,
        interleaved: bool,
        offset: Offset,
    },
}

/// Rope's positions must stay below 2²⁴ (exact in f32, and the GPU kernels' range reduction
/// multiplies them as 24-bit integers).
pub const ROPE_MAX_POSITION: usize = 1 << 24;

/// Rope's inverse frequencies θ^(−2i/rotary_dim), i < rotary_dim/2, in f64: the one definition
/// every backend uses.
pub fn rope_inv_freq(theta: f64, rotary_dim: usize) -> Vec<f64> {
    (0..rotary_dim / 2)
        .map(|i| theta.powf(-((2 * i) as f64) / rotary_dim as f64))
        .collect()
}

/// Rope's first position under this run's `bindings`, for `seq` rows: `Err` when a position
/// would reach [`ROPE_MAX_POSITION`].
pub fn rope_first_position(offset: &Offset, seq: usize, bindings: &Bindings) -> Result<usize> {
    let first = match offset {
        Offset::Fixed(n) => *n,
        Offset::Sym(s) => bindings.get(s)?,
    };
    if first
        .checked_add(seq)
        .is_none_or(|end| end > ROPE_MAX_POSITION)
    {
        return Err(Error::InvalidArgument {
            op: "rope",
            msg: format!(
                "positions {first} .. {first} + {seq} reach past the largest supported position {}",
                ROPE_MAX_POSITION - 1
            ),
        });
    }
    Ok(first)
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
            Op::Softmax => "softmax",
            Op::RmsNorm { .. } => "rms_norm",
            Op::LayerNorm { .. } => "layer_norm",
            Op::ArgMax => "argmax",
            Op::Reshape { .. } => "reshape",
            Op::Permute { .. } => "permute",
            Op::Slice { .. } => "slice",
            Op::Concat { .. } => "concat",
            Op::Gather => "gather",
            Op::Attention { lse: false, .. } => "attention",
            Op::Attention { lse: true, .. } => "attention_lse",
            Op::Rope { .. } => "rope",
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
            | Op::Softmax
            | Op::ArgMax
            | Op::Reshape { .. }
            | Op::Permute { .. }
            | Op::Slice { .. }
            | Op::Rope { .. } => 1,
            Op::MatMul { .. }
            | Op::Binary(_)
            | Op::RmsNorm { .. }
            | Op::Concat { .. }
            | Op::Gather => 2,
            Op::Attention { padding, .. } => 3 + usize::from(*padding),
            Op::LayerNorm { weight, bias, .. } => 1 + usize::from(*weight) + usize::from(*bias),
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

    /// What the op is to a backend's run loop: a source, a state write, or a computation (whose
    /// kernel the backend finds by the op). Run loops match on this, never on `Op`, so a new
    /// compute op changes no run loop.
    pub fn role(&self) -> Role<'_> {
        match self {
            Op::Input { name } => Role::Input(name),
            Op::Weight { name } => Role::Weight(name),
            Op::State { name } => Role::State(name),
            Op::Constant { values } => Role::Constant(values),
            Op::WriteState { name, axis, offset } => Role::WriteState {
                name,
                axis: *axis,
                offset,
            },
            Op::MatMul { .. }
            | Op::Unary(_)
            | Op::Binary(_)
            | Op::Reduce { .. }
            | Op::Cast { .. }
            | Op::Softmax
            | Op::RmsNorm { .. }
            | Op::LayerNorm { .. }
            | Op::ArgMax
            | Op::Reshape { .. }
            | Op::Permute { .. }
            | Op::Slice { .. }
            | Op::Concat { .. }
            | Op::Gather
            | Op::Attention { .. }
            | Op::Rope { .. } => Role::Compute,
        }
    }

    /// The op as a row op (softmax, the norms, argmax over the last axis), for the backends'
    /// row kernels; `None` for every other op.
    pub fn row_op(&self) -> Option<RowOp> {
        match self {
            Op::Softmax => Some(RowOp::Softmax),
            Op::RmsNorm { eps } => Some(RowOp::RmsNorm { eps: *eps }),
            Op::LayerNorm { eps, weight, bias } => Some(RowOp::LayerNorm {
                eps: *eps,
                weight: *weight,
                bias: *bias,
            }),
            Op::ArgMax => Some(RowOp::ArgMax),
            Op::Input { .. }
            | Op::Weight { .. }
            | Op::State { .. }
            | Op::Constant { .. }
            | Op::WriteState { .. }
            | Op::MatMul { .. }
            | Op::Unary(_)
            | Op::Binary(_)
            | Op::Reduce { .. }
            | Op::Cast { .. }
            | Op::Reshape { .. }
            | Op::Permute { .. }
            | Op::Slice { .. }
            | Op::Concat { .. }
            | Op::Gather
            | Op::Attention { .. }
            | Op::Rope { .. } => None,
        }
    }

    /// The op as a data-movement op, for the backends' copy kernels; `None` for every other op.
    pub fn move_op(&self) -> Option<MoveOp<'_>> {
        match self {
            Op::Reshape { .. } => Some(MoveOp::Reshape),
            Op::Permute { perm } => Some(MoveOp::Permute { perm }),
            Op::Slice { axis, start, .. } => Some(MoveOp::Slice {
                axis: *axis,
                start: *start,
            }),
            Op::Concat { axis } => Some(MoveOp::Concat { axis: *axis }),
            Op::Gather => Some(MoveOp::Gather),
            Op::Input { .. }
            | Op::Weight { .. }
            | Op::State { .. }
            | Op::Constant { .. }
            | Op::WriteState { .. }
            | Op::MatMul { .. }
            | Op::Unary(_)
            | Op::Binary(_)
            | Op::Reduce { .. }
            | Op::Cast { .. }
            | Op::Softmax
            | Op::RmsNorm { .. }
            | Op::LayerNorm { .. }
            | Op::ArgMax
            | Op::Attention { .. }
            | Op::Rope { .. } => None,
        }
    }

    /// The per-run scalar (a symbol bound at each run) the op reads as a position, if any: a
    /// state write's offset, attention's query offset, rope's first position.
    pub fn run_scalar(&self) -> Option<&str> {
        let offset = match self {
            Op::WriteState { offset, .. } | Op::Rope { offset, .. } => Some(offset),
            Op::Attention { q_offset, .. } => q_offset.as_ref(),
            Op::Input { .. }
            | Op::Weight { .. }
            | Op::State { .. }
            | Op::Constant { .. }
            | Op::MatMul { .. }
            | Op::Unary(_)
            | Op::Binary(_)
            | Op::Reduce { .. }
            | Op::Cast { .. }
            | Op::Softmax
            | Op::RmsNorm { .. }
            | Op::LayerNorm { .. }
            | Op::ArgMax
            | Op::Reshape { .. }
            | Op::Permute { .. }
            | Op::Slice { .. }
            | Op::Concat { .. }
            | Op::Gather => None,
        };
        match offset {
            Some(Offset::Sym(s)) => Some(s),
            Some(Offset::Fixed(_)) | None => None,
        }
    }

    /// What a precision policy does with the op (`ir::passes::precision`).
    pub fn precision_class(&self) -> PrecisionClass {
        match self {
            Op::Input { .. } | Op::Weight { .. } | Op::State { .. } | Op::Constant { .. } => {
                PrecisionClass::Source
            }
            Op::Cast { .. } => PrecisionClass::Cast,
            Op::WriteState { .. } => PrecisionClass::StateWrite,
            Op::Reduce { .. } | Op::Softmax | Op::RmsNorm { .. } | Op::LayerNorm { .. } => {
                PrecisionClass::F32
            }
            Op::ArgMax => PrecisionClass::Keep,
            Op::Unary(_)
            | Op::Binary(_)
            | Op::MatMul { .. }
            | Op::Attention { .. }
            | Op::Rope { .. } => PrecisionClass::Converted,
            Op::Reshape { .. }
            | Op::Permute { .. }
            | Op::Slice { .. }
            | Op::Concat { .. }
            | Op::Gather => PrecisionClass::Keep,
        }
    }
}

/// A row op (see [`Op::row_op`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RowOp {
    Softmax,
    RmsNorm { eps: f64 },
    LayerNorm { eps: f64, weight: bool, bias: bool },
    ArgMax,
}

/// A data-movement op (see [`Op::move_op`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MoveOp<'a> {
    Reshape,
    Permute { perm: &'a [usize] },
    Slice { axis: usize, start: usize },
    Concat { axis: usize },
    Gather,
}

/// An op's role in a run (see [`Op::role`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Role<'a> {
    /// A tensor given at each run.
    Input(&'a str),
    /// A session weight.
    Weight(&'a str),
    /// A read of a session state.
    State(&'a str),
    /// Literal values.
    Constant(&'a [f64]),
    /// An in-place write into a state; the value is the state after the write.
    WriteState {
        name: &'a str,
        axis: usize,
        offset: &'a Offset,
    },
    /// A computation from its operands.
    Compute,
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
