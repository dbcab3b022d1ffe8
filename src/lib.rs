//! # polytensor
//!
//! A hardware-agnostic tensor execution runtime: build a graph with a small IR, compile it for a
//! device (a fast CPU backend, or WGSL compute shaders on any `wgpu` adapter), and run it many
//! times. Low precision is first-class: f32, f16 and bf16 storage with f32 accumulation.
//!
//! ```
//! use polytensor::{DType, Device, Graph, Session, Tensor, Dim};
//!
//! # fn main() -> polytensor::Result<()> {
//! // y = x @ w, where x has a symbolic number of rows (bound at each run, at most 64).
//! let mut g = Graph::new();
//! let x = g.input("x", [Dim::sym("rows", 64), Dim::Fixed(3)], DType::F32);
//! let w = g.weight("w", [3, 2], DType::BF16);
//! let xb = g.cast(x, DType::BF16)?;
//! let y = g.matmul(xb, w)?;
//! let y = g.cast(y, DType::F32)?;
//! g.output("y", y)?;
//!
//! let device = Device::auto()?; // the best device; POLYTENSOR_DEVICE overrides
//! let mut session = Session::new(&device);
//! let w_host = Tensor::new(&[3, 2], vec![1.0f32, 0.0, 0.0, 1.0, 1.0, 1.0])?;
//! session.load_weight("w", w_host.view(), DType::BF16)?; // uploaded once, stored as bf16
//! let program = session.compile(&g)?;
//!
//! let x_host = Tensor::new(&[2, 3], vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0])?;
//! let out = session.run(&program, &[("x", x_host.view())], &[])?; // rows = 2, from x
//! assert_eq!(out.get("y")?.to_f32_vec(), vec![4.0, 5.0, 10.0, 11.0]);
//! # Ok(())
//! # }
//! ```

pub mod backend;
#[cfg(feature = "bench")]
pub mod bench;
pub mod dtype;
pub mod error;
pub mod ir;
pub mod model;
pub mod placement;
pub mod rng;
pub mod session;
pub mod shape;
pub mod tensor;

pub use backend::{Backend, Device, DeviceInfo, DeviceType, LaunchStat, RunStats, register_device};
pub use dtype::{DType, Rounding};
pub use error::{Error, Result};
pub use ir::passes::Precision;
pub use ir::{BinaryOp, Graph, NodeId, Offset, Op, ReduceOp, UnaryOp};
pub use placement::{FallbackPolicy, Placement};
pub use session::{Compiled, Outputs, Session};
pub use shape::{Bindings, Dim, Shape};
pub use tensor::{Element, Storage, StorageRef, Tensor, TensorView};

/// The README's Rust snippets run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
