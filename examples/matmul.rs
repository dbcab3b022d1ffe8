//! A bf16 matmul with f32 accumulation on the best device, checked against the f64 CPU
//! reference. Run: `cargo run --release --example matmul`
use polytensor::{DType, Device, Graph, Session, Tensor};

fn main() -> polytensor::Result<()> {
    let (m, k, n) = (300, 257, 129);
    let mut g = Graph::new();
    let a = g.input("a", [m, k], DType::BF16);
    let b = g.weight("b", [k, n], DType::BF16);
    let c = g.matmul(a, b)?; // bf16 storage, f32 accumulation, rounded to nearest even
    g.output("c", c)?;
    let av: Vec<f32> = (0..m * k)
        .map(|i| ((i * 7 % 13) as f32 - 6.0) / 8.0)
        .collect();
    let bv: Vec<f32> = (0..k * n)
        .map(|i| ((i * 5 % 11) as f32 - 5.0) / 4.0)
        .collect();
    let (at, bt) = (
        Tensor::from_f32(&[m, k], av, DType::BF16)?,
        Tensor::from_f32(&[k, n], bv, DType::F32)?,
    );
    let mut results = Vec::new();
    for device in [Device::auto()?, Device::reference()] {
        let mut s = Session::new(&device);
        s.load_weight("b", bt.view(), DType::BF16)?; // converted to bf16 once, at load
        let p = s.compile(&g)?;
        let out = s.run(&p, &[("a", at.view())], &[])?;
        println!(
            "{}: c[0][..4] = {:?}",
            device.info().name,
            &out.get("c")?.to_f32_vec()[..4]
        );
        results.push(out.get("c")?.to_f64_vec());
    }
    let err = results[0]
        .iter()
        .zip(&results[1])
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    println!("max |device − reference| = {err:.3e}");
    Ok(())
}
