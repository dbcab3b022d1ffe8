// attention_sg.wgsl — attn_v4's subgroup twin (after attention_cpu.wgsl), only created on
// adapters whose subgroups are exactly 8 wide (lavapipe at its default 256-bit vectors): the
// workgroup is one subgroup, and of each K or V row lane l loads only units l, l + 8, …, then
// subgroupBroadcast (a register shuffle there) hands every lane all of them. Eight times fewer
// per-lane storage loads than attn_v4 for the same multiply-adds. Every broadcast sits in
// uniform control flow (the loop bounds and branches depend on the workgroup and overrides only).

// Lane `i`'s unit, in every lane (the unrolled lane indices assume 8 lanes).
fn bcast0(x: Unit) -> Unit {
    if (is16(DT_IN)) {
        return Unit(subgroupBroadcast(x.lo, 0u), subgroupBroadcast(x.hi, 0u));
    }
    return Unit(subgroupBroadcast(x.lo, 0u), vec4<f32>(0.0));
}
fn bcast1(x: Unit) -> Unit {
    if (is16(DT_IN)) {
        return Unit(subgroupBroadcast(x.lo, 1u), subgroupBroadcast(x.hi, 1u));
    }
    return Unit(subgroupBroadcast(x.lo, 1u), vec4<f32>(0.0));
}
fn bcast2(x: Unit) -> Unit {
    if (is16(DT_IN)) {
        return Unit(subgroupBroadcast(x.lo, 2u), subgroupBroadcast(x.hi, 2u));
    }
    return Unit(subgroupBroadcast(x.lo, 2u), vec4<f32>(0.0));
}
fn bcast3(x: Unit) -> Unit {
    if (is16(DT_IN)) {
        return Unit(subgroupBroadcast(x.lo, 3u), subgroupBroadcast(x.hi, 3u));
    }
    return Unit(subgroupBroadcast(x.lo, 3u), vec4<f32>(0.0));
}
fn bcast4(x: Unit) -> Unit {
    if (is16(DT_IN)) {
        return Unit(subgroupBroadcast(x.lo, 4u), subgroupBroadcast(x.hi, 4u));
    }
    return Unit(subgroupBroadcast(x.lo, 4u), vec4<f32>(0.0));
}
fn bcast5(x: Unit) -> Unit {
    if (is16(DT_IN)) {
        return Unit(subgroupBroadcast(x.lo, 5u), subgroupBroadcast(x.hi, 5u));
    }
    return Unit(subgroupBroadcast(x.lo, 5u), vec4<f32>(0.0));
}
fn bcast6(x: Unit) -> Unit {
    if (is16(DT_IN)) {
        return Unit(subgroupBroadcast(x.lo, 6u), subgroupBroadcast(x.hi, 6u));
    }
    return Unit(subgroupBroadcast(x.lo, 6u), vec4<f32>(0.0));
}
fn bcast7(x: Unit) -> Unit {
    if (is16(DT_IN)) {
        return Unit(subgroupBroadcast(x.lo, 7u), subgroupBroadcast(x.hi, 7u));
    }
    return Unit(subgroupBroadcast(x.lo, 7u), vec4<f32>(0.0));
}

// Slab t of a key row (QKᵀ) or of value row jj of the step (PV): this lane loads unit
// t · 8 + lane, and each lane's unit in turn reaches every lane.
fn slab_sg(pv: bool, t: u32, jj: u32, base: u32, du: u32, lane: u32) {
    if (pv) {
        let x = v_unit(base, t * LANES + lane, du);
        pv_unit(t, 0u, jj, bcast0(x));
        pv_unit(t, 1u, jj, bcast1(x));
        pv_unit(t, 2u, jj, bcast2(x));
        pv_unit(t, 3u, jj, bcast3(x));
        pv_unit(t, 4u, jj, bcast4(x));
        pv_unit(t, 5u, jj, bcast5(x));
        pv_unit(t, 6u, jj, bcast6(x));
        pv_unit(t, 7u, jj, bcast7(x));
    } else {
        let x = k_unit(base, t * LANES + lane, du);
        qk_unit(t, 0u, bcast0(x));
        qk_unit(t, 1u, bcast1(x));
        qk_unit(t, 2u, bcast2(x));
        qk_unit(t, 3u, bcast3(x));
        qk_unit(t, 4u, bcast4(x));
        qk_unit(t, 5u, bcast5(x));
        qk_unit(t, 6u, bcast6(x));
        qk_unit(t, 7u, bcast7(x));
    }
}

// `slab_sg` for every slab, unrolled by hand (attention_cpu.wgsl's `slabs`).
fn slabs_sg(pv: bool, jj: u32, base: u32, du: u32, lane: u32) {
    slab_sg(pv, 0u, jj, base, du, lane);
    if (NSLAB > 1u) { slab_sg(pv, 1u, jj, base, du, lane); }
    if (NSLAB > 2u) { slab_sg(pv, 2u, jj, base, du, lane); }
    if (NSLAB > 3u) { slab_sg(pv, 3u, jj, base, du, lane); }
    if (NSLAB > 4u) { slab_sg(pv, 4u, jj, base, du, lane); }
    if (NSLAB > 5u) { slab_sg(pv, 5u, jj, base, du, lane); }
    if (NSLAB > 6u) { slab_sg(pv, 6u, jj, base, du, lane); }
    if (NSLAB > 7u) { slab_sg(pv, 7u, jj, base, du, lane); }
}

@compute @workgroup_size(LANES)
fn attn_sg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    let wg = wid.y * P.row_groups + wid.x;
    if (wg >= P.blocks) {
        return;
    }
    let blk = block(wg);
    let b = blk.x;
    let h = blk.y;
    let nmax = blk.w;
    let kv0 = (b * P.hkv + h / (P.hq / P.hkv)) * P.skv;
    let du = P.d / epu();
    load_q(b, h, blk.z, lane, du);
    for (var j0 = 0u; j0 < nmax; j0 += CK) {
        // P.step is CK, but a run-time value: the step's key loops stay rolled (unrolled, a
        // large head dim's kernel takes seconds to compile there).
        for (var jj = 0u; jj < P.step; jj++) {
            let j = j0 + jj;
            let base = (kv0 + min(j, nmax - 1u)) * du;
            scores_begin();
            slabs_sg(false, jj, base, du, lane);
            scores_end(jj, j);
        }
        softmax_step(j0);
        for (var jj = 0u; jj < P.step; jj++) {
            slabs_sg(true, jj, (kv0 + min(j0 + jj, nmax - 1u)) * du, du, lane);
        }
    }
    slabs(OP_STORE, 0u, 0u, du);
}
