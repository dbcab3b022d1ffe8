//! Lists every device polytensor can run on (the CPU backend and every wgpu adapter) and the one
//! `Device::auto()` picks. Run: `cargo run --example devices`
use polytensor::Device;

fn main() -> polytensor::Result<()> {
    let auto = Device::auto()?;
    for (i, d) in Device::list().iter().enumerate() {
        let info = d.info();
        let mark = if info.name == auto.info().name {
            "*"
        } else {
            " "
        };
        println!(
            "{mark} [{i}] {} — {}/{}, {}{}",
            info.name,
            info.backend,
            info.api,
            info.device_type,
            if info.software { " (software)" } else { "" }
        );
    }
    Ok(())
}
