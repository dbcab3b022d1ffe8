//! The toy transformer, the example to run first: a small Llama-style GPT defined in code
//! (`polytensor::model::toy`: 4 layers, hidden 128, GQA 4/2 heads, SwiGLU, a 512-token
//! vocabulary) with seeded random weights and no files. It prefills an 8-token prompt and
//! generates 24 tokens greedily on every device, with the KV cache on the device, and prints each
//! device's tokens/s and whether it produced the CPU's tokens: every device is teacher-forced on
//! the CPU's sequence and compared at every step whose top-1/top-2 logit margin is clear of the
//! f32 tolerance (the table says how many steps were compared).
//!
//! Run: `cargo run --release --example toy_transformer` (`polytensor demo` runs it too).

use polytensor::Device;
use polytensor::model::toy;

fn main() -> polytensor::Result<()> {
    let reports = toy::run_everywhere(&Device::list())?;
    print!("{}", toy::table(&reports));
    if reports.iter().any(|r| r.mismatches > 0) {
        eprintln!("a device chose another token than the CPU at a compared step");
        std::process::exit(1);
    }
    Ok(())
}
