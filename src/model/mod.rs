//! Models built on the runtime (settled decision 14): they use only the public Graph and Session
//! API, and nothing in the runtime imports them. `bert` is a BERT-family sentence encoder;
//! `llama` is a Llama-family decoder with a
//! device-resident KV cache; `toy` is a small random-weight instance of it that runs everywhere;
//! `load` (feature `models`) reads Hugging Face checkpoint directories into it.

pub mod bert;
pub mod llama;
#[cfg(feature = "models")]
pub mod load;
#[cfg(feature = "models")]
pub mod text;
pub mod toy;
