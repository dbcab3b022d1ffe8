//! Graph passes, each in its own file and tested alone.

mod dce;
mod validate;

pub use dce::dce;
pub use validate::validate;
