//! Every shader variant (dtype × op × tile config × alignment) parses and validates with naga,
//! with its override constants applied: no GPU needed.

#[test]
fn every_shader_variant_validates_with_naga() {
    use naga::valid::{Capabilities, ValidationFlags, Validator};
    let variants = polytensor::backend::wgpu::shader_variants();
    assert!(variants.len() > 60, "{} variants", variants.len());
    let mut parsed = std::collections::HashMap::new();
    for (label, src, entry, consts) in &variants {
        let (module, info) = parsed.entry(src.clone()).or_insert_with(|| {
            let module = naga::front::wgsl::parse_str(src)
                .unwrap_or_else(|e| panic!("{label}: {}", e.emit_to_string(src)));
            // Only the capabilities every adapter has (the GL adapter has neither f16 nor
            // subgroups), except the subgroup kernel, built only where subgroups exist.
            let caps = if label.starts_with("MatmulSg") {
                Capabilities::SUBGROUP
            } else {
                Capabilities::empty()
            };
            let info = Validator::new(ValidationFlags::all(), caps)
                .validate(&module)
                .unwrap_or_else(|e| panic!("{label}: {}", e.emit_to_string(src)));
            (module, info)
        });
        let mut pc = naga::back::PipelineConstants::default();
        for (k, v) in consts {
            pc.insert((*k).to_string(), *v);
        }
        let (resolved, _) = naga::back::pipeline_constants::process_overrides(
            module,
            info,
            Some((naga::ShaderStage::Compute, entry)),
            &pc,
        )
        .unwrap_or_else(|e| panic!("{label} {consts:?}: {e}"));
        let ep = resolved
            .entry_points
            .iter()
            .find(|e| e.name == *entry)
            .unwrap_or_else(|| panic!("{label}: no entry point {entry}"));
        let invocations: u32 = ep.workgroup_size.iter().product();
        assert!(
            (1..=256).contains(&invocations),
            "{label}: workgroup {:?}",
            ep.workgroup_size
        );
    }
}
