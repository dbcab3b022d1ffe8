//! Graph passes, each in its own file and tested alone.

mod dce;
mod precision;
mod validate;

pub use dce::dce;
pub use precision::{POLICY_STREAM_BASE, Precision, precision};
pub use validate::validate;
