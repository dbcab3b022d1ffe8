//! Models built on the runtime (settled decision 14): they use only the public Graph and Session
//! API, and nothing in the runtime imports them. `llama` is a Llama-family decoder with a
//! device-resident KV cache; `toy` is a small random-weight instance of it that runs everywhere.

pub mod llama;
pub mod toy;
