//! The intermediate representation: ops, the graph and its builder, the text form, and passes.

pub mod graph;
pub mod op;
pub mod passes;
mod text;

pub use graph::{Graph, Node, NodeId};
pub use op::{
    BinaryOp, MoveOp, Offset, Op, PrecisionClass, ROPE_MAX_POSITION, ReduceOp, Role, RowOp,
    UnaryOp, rope_first_position, rope_inv_freq,
};
