//! The integration suite: one binary (settled decision 8), one module per area.

mod attention;
mod attention_gpu;
#[cfg(feature = "bench")]
mod bench;
mod common;
mod conversions;
mod devices;
mod errors;
mod gpu;
mod matmul;
mod model;
#[cfg(feature = "models")]
mod model_load;
#[cfg(feature = "models")]
mod model_ref;
mod movement;
mod ops;
mod plans;
mod rope;
mod rows;
mod session;
mod shaders;
mod sr;
mod state;
mod text;
