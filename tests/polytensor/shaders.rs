//! Every pipeline key the kernel planners can produce (the families' `all_keys()`) parses and
//! validates with naga with its override constants applied, and translates to SPIR-V (Vulkan)
//! and GLSL (GL; not for subgroup kernels, which GL adapters never build): no GPU needed.

#[test]
fn every_planner_key_validates_and_translates_with_naga() {
    use naga::valid::{Capabilities, ValidationFlags, Validator};
    let variants = polytensor::backend::wgpu::shader_variants();
    assert!(variants.len() > 60, "{} variants", variants.len());
    let mut parsed = std::collections::HashMap::new();
    for v in &variants {
        let (label, src, entry, consts) = (&v.label, &v.source, v.entry, &v.constants);
        let caps = if v.subgroups {
            Capabilities::SUBGROUP
        } else {
            // Only what every adapter has (the GL adapter has neither f16 nor subgroups).
            Capabilities::empty()
        };
        let (module, info) = parsed.entry(label.clone()).or_insert_with(|| {
            let module = naga::front::wgsl::parse_str(src)
                .unwrap_or_else(|e| panic!("{label}: {}", e.emit_to_string(src)));
            let info = Validator::new(ValidationFlags::all(), caps)
                .validate(&module)
                .unwrap_or_else(|e| panic!("{label}: {}", e.emit_to_string(src)));
            (module, info)
        });
        let mut pc = naga::back::PipelineConstants::default();
        for (k, v) in consts {
            pc.insert((*k).to_string(), *v);
        }
        let (resolved, rinfo) = naga::back::pipeline_constants::process_overrides(
            module,
            info,
            Some((naga::ShaderStage::Compute, entry)),
            &pc,
        )
        .unwrap_or_else(|e| panic!("{label} {consts:?}: {e}"));
        let ep = resolved
            .entry_points
            .iter()
            .find(|e| e.name == entry)
            .unwrap_or_else(|| panic!("{label}: no entry point {entry}"));
        let invocations: u32 = ep.workgroup_size.iter().product();
        assert!(
            (1..=256).contains(&invocations),
            "{label}: workgroup {:?}",
            ep.workgroup_size
        );
        let spv = naga::back::spv::write_vec(
            &resolved,
            &rinfo,
            &naga::back::spv::Options::default(),
            Some(&naga::back::spv::PipelineOptions {
                shader_stage: naga::ShaderStage::Compute,
                entry_point: entry.to_string(),
            }),
        )
        .unwrap_or_else(|e| panic!("{label} {consts:?}: SPIR-V: {e}"));
        assert!(spv.len() > 16, "{label}: SPIR-V of {} words", spv.len());
        if !v.subgroups {
            let mut glsl = String::new();
            let options = naga::back::glsl::Options::default();
            let pipeline = naga::back::glsl::PipelineOptions {
                shader_stage: naga::ShaderStage::Compute,
                entry_point: entry.to_string(),
                multiview: None,
            };
            let mut w = naga::back::glsl::Writer::new(
                &mut glsl,
                &resolved,
                &rinfo,
                &options,
                &pipeline,
                naga::proc::BoundsCheckPolicies::default(),
            )
            .unwrap_or_else(|e| panic!("{label} {consts:?}: GLSL: {e}"));
            w.write()
                .unwrap_or_else(|e| panic!("{label} {consts:?}: GLSL: {e}"));
            assert!(glsl.contains("void main"), "{label}: GLSL without main");
        }
    }
}
