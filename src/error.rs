//! The one error type of polytensor: every fallible public call returns [`Result<T>`].
//!
//! Messages name the op, the shapes, the dtypes, the device or the limit involved, so a user can
//! tell what was wrong from the message alone.

use crate::dtype::DType;

/// Everything that can go wrong in polytensor.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Two shapes that must agree do not (builder or run time).
    #[error("{op}: shape mismatch: {detail} (lhs {lhs}, rhs {rhs})")]
    ShapeMismatch {
        op: &'static str,
        lhs: String,
        rhs: String,
        detail: String,
    },
    /// Two dtypes that must agree do not.
    #[error("{op}: dtype mismatch: {lhs} vs {rhs}")]
    DTypeMismatch {
        op: &'static str,
        lhs: DType,
        rhs: DType,
    },
    /// An op does not accept this dtype (on any device, or on the named one).
    #[error("{op}: unsupported dtype {dtype}{}", device_suffix(.device))]
    UnsupportedDType {
        op: &'static str,
        dtype: DType,
        device: Option<String>,
    },
    /// An op attribute is out of range (an axis past the rank, ...).
    #[error("{op}: invalid argument: {msg}")]
    InvalidArgument { op: &'static str, msg: String },
    /// A feature that exists in the IR but is not implemented yet (or not on this device).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A graph that breaks an IR rule (found by `validate`).
    #[error("invalid graph: {0}")]
    InvalidGraph(String),
    /// The text form of a graph could not be parsed.
    #[error("graph text, line {line}: {msg}")]
    Parse { line: usize, msg: String },
    /// A run was not given an input the graph reads.
    #[error("missing input `{name}` (the graph reads it with shape {shape} and dtype {dtype})")]
    MissingInput {
        name: String,
        shape: String,
        dtype: DType,
    },
    /// A run was given a name the graph does not read.
    #[error("unknown input `{name}`; the graph's inputs are: {known}")]
    UnknownInput { name: String, known: String },
    /// An input, weight or state tensor does not match what the graph declares.
    #[error("{kind} `{name}`: expected {expected}, got {got}")]
    TensorMismatch {
        kind: &'static str,
        name: String,
        expected: String,
        got: String,
    },
    /// A symbolic dimension that the run did not bind (and no input determined).
    #[error("symbolic dimension `{name}` is not bound for this run")]
    UnboundDim { name: String },
    /// A symbolic dimension bound to a value over its declared maximum.
    #[error("symbolic dimension `{name}` bound to {value}, over its maximum {max}")]
    DimOverMax {
        name: String,
        value: usize,
        max: usize,
    },
    /// Two sources bind the same symbol to different values.
    #[error("symbolic dimension `{name}` bound to both {a} and {b}")]
    DimConflict { name: String, a: usize, b: usize },
    /// A weight the graph reads was never loaded into the session.
    #[error("unknown weight `{name}`; loaded weights: {known}")]
    UnknownWeight { name: String, known: String },
    /// A state tensor the graph reads or writes does not exist in the session.
    #[error("unknown state `{name}`; session states: {known}")]
    UnknownState { name: String, known: String },
    /// Host data whose length does not match its shape.
    #[error("data of {got} elements does not fit shape {shape} ({expected} elements)")]
    DataLength {
        shape: String,
        expected: usize,
        got: usize,
    },
    /// A write into a state tensor that would fall outside it.
    #[error(
        "write into state `{name}` at offset {offset} of {len} rows along axis {axis} exceeds its size {size}"
    )]
    StateWriteOutOfRange {
        name: String,
        axis: usize,
        offset: usize,
        len: usize,
        size: usize,
    },
    /// `POLYTENSOR_DEVICE` (or a device query) named no device.
    #[error("no device matches `{query}`; available devices:\n{available}")]
    UnknownDevice { query: String, available: String },
    /// A tensor over one of the device's limits.
    #[error("{what} of {value} exceeds the limit {limit} of device {device}")]
    LimitExceeded {
        what: String,
        value: u64,
        limit: u64,
        device: String,
    },
    /// A buffer or program handed to a backend that did not create it.
    #[error("device {device}: {msg}")]
    Device { device: String, msg: String },
    /// A required GPU API is missing (`POLYTENSOR_REQUIRE_GPU`).
    #[error("required GPU API missing: {0}")]
    MissingGpu(String),
}

fn device_suffix(device: &Option<String>) -> String {
    match device {
        Some(d) => format!(" on device {d}"),
        None => String::new(),
    }
}

/// `Result` with polytensor's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
