// attention_cpu.wgsl — fused attention for CPU-emulated adapters (lavapipe, llvmpipe) when a
// head-dim row is whole 16-byte units in every float dtype: D a multiple of 8, D ≤ 256,
// rows at pitch D. Same semantics, bindings and params as attention.wgsl (attention_common.wgsl).
//
// There every invocation is a SIMD lane and every storage load a per-lane loop with a bounds
// check, so these kernels cut loads per multiply-add: K and V rows are read in units of one
// vec4<u32> (4 f32, or 8 packed 16-bit elements widened once to f32), each invocation owns RW
// query rows that share every unit it reads (a register block), and the online softmax
// rescales once per step of CK keys. `attn_v4` (here) reads whole K/V rows in every lane;
// `attn_sg` (attention_sg.wgsl, 8-wide subgroups only) reads one unit in eight per lane and
// shares them with subgroupBroadcast.
//
// Registers: a row's q and accumulator are [slab][lane] arrays of units (SLABS · LANES units
// hold D = 256 in f32). Every loop over them runs to an array's exact length with constant
// bounds, so Mesa's NIR unrolls it and the arrays stay in registers (or plain spill slots), not
// in per-lane scratch; slabs from NSLAB (an override: the head dim's class) on and rows from RW
// on fold away. Units past the head dim are zero in q and never stored.
//
// A workgroup is LANES invocations over a block of LANES · RW consecutive query rows of one
// (batch, head); lane l owns rows i0 + l + LANES · r. Every invocation walks the block's keys
// (to its largest visible count: uniform control flow), masking per row; keys of a step past
// that count read the last one again, with weight 0. Invocations own whole output units (whole
// words for 16-bit).

const LANES: u32 = 8u;       // units per slab (attn_sg: the subgroup width)
const SLABS: u32 = 8u;       // the most slabs: 8 · 8 f32 units = 256
const RMAX: u32 = 4u;        // the most query rows per invocation
const CK: u32 = 8u;          // keys per online-softmax step
override NSLAB: u32 = 2u;    // slabs of this head dim: ceil(D / (LANES · elements per unit))
override RW: u32 = 2u;       // query rows per invocation (≤ RMAX)

@group(0) @binding(0) var<storage, read> q4: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read> k4: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> v4: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read_write> out4: array<vec4<u32>>;

// One unit widened to f32: elements 0..3 (all of an f32 unit) and 4..7 (16-bit only).
struct Unit {
    lo: vec4<f32>,
    hi: vec4<f32>,
}

var<private> qlo: array<array<array<vec4<f32>, LANES>, SLABS>, RMAX>;
var<private> qhi: array<array<array<vec4<f32>, LANES>, SLABS>, RMAX>;
var<private> alo: array<array<array<vec4<f32>, LANES>, SLABS>, RMAX>;
var<private> ahi: array<array<array<vec4<f32>, LANES>, SLABS>, RMAX>;
var<private> dlo: array<vec4<f32>, RMAX>;     // one key's partial dot products per row
var<private> dhi: array<vec4<f32>, RMAX>;
var<private> s: array<array<f32, CK>, RMAX>;  // a step's scores, then its weights
var<private> nvis: array<u32, RMAX>;          // keys each row sees
var<private> mrun: array<f32, RMAX>;          // running max (finite sentinel) and sum
var<private> lrun: array<f32, RMAX>;

// Elements per unit.
fn epu() -> u32 {
    return select(4u, 8u, is16(DT_IN));
}

fn half_at(w: u32, odd: bool) -> f32 {
    return bitcast<f32>(elem_bits(DT_IN, w, odd));
}

fn widen(w: vec4<u32>) -> Unit {
    if (is16(DT_IN)) {
        return Unit(vec4<f32>(half_at(w.x, false), half_at(w.x, true), half_at(w.y, false), half_at(w.y, true)),
                    vec4<f32>(half_at(w.z, false), half_at(w.z, true), half_at(w.w, false), half_at(w.w, true)));
    }
    return Unit(bitcast<vec4<f32>>(w), vec4<f32>(0.0));
}

// Unit u of the K (V) row starting at unit `base`; zero past the row's du units.
fn k_unit(base: u32, u: u32, du: u32) -> Unit {
    return widen(select(vec4<u32>(0u), k4[base + u], u < du));
}

fn v_unit(base: u32, u: u32, du: u32) -> Unit {
    return widen(select(vec4<u32>(0u), v4[base + u], u < du));
}

var<private> rows: array<u32, RMAX>;           // flat output row of each of this lane's rows
var<private> live: array<bool, RMAX>;
var<private> corr: array<f32, RMAX>;           // a step's rescale factors

// Slab t (a constant once inlined) of one operation: OP_* below, with its arguments.
const OP_LOAD_Q: u32 = 0u;
const OP_RESCALE: u32 = 1u;
const OP_STORE: u32 = 2u;
const OP_QK: u32 = 3u;       // key row at unit `base`
const OP_PV: u32 = 4u;       // value row at unit `base`, weight jj of the step

fn slab(op: u32, t: u32, jj: u32, base: u32, du: u32) {
    for (var u = 0u; u < LANES; u++) {
        let un = t * LANES + u;
        switch op {
            case OP_LOAD_Q: {
                for (var r = 0u; r < RMAX; r++) {
                    if (r < RW) {
                        let x = widen(select(vec4<u32>(0u), q4[rows[r] * du + un], live[r] && un < du));
                        qlo[r][t][u] = x.lo;
                        qhi[r][t][u] = x.hi;
                        alo[r][t][u] = vec4<f32>(0.0);
                        ahi[r][t][u] = vec4<f32>(0.0);
                    }
                }
            }
            case OP_RESCALE: {
                for (var r = 0u; r < RMAX; r++) {
                    if (r < RW) {
                        alo[r][t][u] *= vec4<f32>(corr[r]);
                        if (is16(DT_IN)) {
                            ahi[r][t][u] *= vec4<f32>(corr[r]);
                        }
                    }
                }
            }
            case OP_STORE: {
                for (var r = 0u; r < RMAX; r++) {
                    if (r < RW && live[r] && un < du) {
                        let l = vec4<f32>(lrun[r]);
                        let some = lrun[r] > 0.0;
                        let lo = select(vec4<f32>(0.0), alo[r][t][u] / l, some);
                        let hi = select(vec4<f32>(0.0), ahi[r][t][u] / l, some);
                        out4[rows[r] * du + un] = pack(lo, hi, rows[r], un * epu());
                    }
                }
            }
            case OP_QK: {
                qk_unit(t, u, k_unit(base, un, du));
            }
            case OP_PV: {
                pv_unit(t, u, jj, v_unit(base, un, du));
            }
            default: {}
        }
    }
}

// `slab` for every slab of the head dim. Slabs are unrolled by hand: a loop over them stays a
// loop on lavapipe (its body is too large for NIR to unroll), and an array indexed by a loop
// counter goes to per-lane scratch memory.
fn slabs(op: u32, jj: u32, base: u32, du: u32) {
    slab(op, 0u, jj, base, du);
    if (NSLAB > 1u) { slab(op, 1u, jj, base, du); }
    if (NSLAB > 2u) { slab(op, 2u, jj, base, du); }
    if (NSLAB > 3u) { slab(op, 3u, jj, base, du); }
    if (NSLAB > 4u) { slab(op, 4u, jj, base, du); }
    if (NSLAB > 5u) { slab(op, 5u, jj, base, du); }
    if (NSLAB > 6u) { slab(op, 6u, jj, base, du); }
    if (NSLAB > 7u) { slab(op, 7u, jj, base, du); }
}

// The block's rows of this lane: q in registers, zero accumulators, visible counts.
fn load_q(b: u32, h: u32, i0: u32, lane: u32, du: u32) {
    for (var r = 0u; r < RMAX; r++) {
        let i = i0 + lane + LANES * r;
        live[r] = r < RW && i < P.sq;
        rows[r] = (b * P.hq + h) * P.sq + min(i, P.sq - 1u);
        nvis[r] = select(0u, visible(b, i), live[r]);
        mrun[r] = -FMAX;
        lrun[r] = 0.0;
    }
    slabs(OP_LOAD_Q, 0u, 0u, du);
}

fn scores_begin() {
    for (var r = 0u; r < RMAX; r++) {
        dlo[r] = vec4<f32>(0.0);
        dhi[r] = vec4<f32>(0.0);
    }
}

// Unit (t, u) of one key row, against every row's q. In f32 (4 elements per unit) even units
// go to dlo and odd ones to dhi: each partial sum then meets the same elements in the same
// order as a 16-bit unit's lo and hi halves do (elements 8m..8m+3 and 8m+4..8m+7), so f32 and
// 16-bit storage of the same values give the same scores bit for bit (u is a constant once
// the slab is unrolled, and LANES is even).
fn qk_unit(t: u32, u: u32, x: Unit) {
    for (var r = 0u; r < RMAX; r++) {
        if (r < RW) {
            if (is16(DT_IN)) {
                dlo[r] = fma(qlo[r][t][u], x.lo, dlo[r]);
                dhi[r] = fma(qhi[r][t][u], x.hi, dhi[r]);
            } else if ((u & 1u) == 0u) {
                dlo[r] = fma(qlo[r][t][u], x.lo, dlo[r]);
            } else {
                dhi[r] = fma(qlo[r][t][u], x.lo, dhi[r]);
            }
        }
    }
}

// Score jj of the step: key j, masked per row.
fn scores_end(jj: u32, j: u32) {
    for (var r = 0u; r < RMAX; r++) {
        let d = dlo[r] + dhi[r];
        let dot = (d.x + d.y) + (d.z + d.w);
        s[r][jj] = select(-FMAX, dot * P.scale, j < nvis[r]);
    }
}

// The online softmax over one step of CK keys from j0: one rescale of each row's accumulator.
fn softmax_step(j0: u32) {
    for (var r = 0u; r < RMAX; r++) {
        var mx = mrun[r];
        for (var jj = 0u; jj < CK; jj++) {
            mx = max(mx, s[r][jj]);
        }
        corr[r] = exp_shifted(mrun[r], mx);
        mrun[r] = mx;
        var l = lrun[r] * corr[r];
        for (var jj = 0u; jj < CK; jj++) {
            let p = select(0.0, exp_shifted(s[r][jj], mx), j0 + jj < nvis[r]);
            s[r][jj] = p;
            l += p;
        }
        lrun[r] = l;
    }
    slabs(OP_RESCALE, 0u, 0u, 0u);
}

// Unit (t, u) of value row jj of the step, weighted into every row's accumulator.
fn pv_unit(t: u32, u: u32, jj: u32, x: Unit) {
    for (var r = 0u; r < RMAX; r++) {
        if (r < RW) {
            let p = vec4<f32>(s[r][jj]);
            alo[r][t][u] = fma(p, x.lo, alo[r][t][u]);
            if (is16(DT_IN)) {
                ahi[r][t][u] = fma(p, x.hi, ahi[r][t][u]);
            }
        }
    }
}

// Output unit: elements c.. of row `row`, rounded for storage (16-bit: four whole words).
fn pack(lo: vec4<f32>, hi: vec4<f32>, row: u32, c: u32) -> vec4<u32> {
    if (is16(DT_OUT)) {
        return vec4<u32>(encoded(lo.x, row, c) | (encoded(lo.y, row, c + 1u) << 16u),
                         encoded(lo.z, row, c + 2u) | (encoded(lo.w, row, c + 3u) << 16u),
                         encoded(hi.x, row, c + 4u) | (encoded(hi.y, row, c + 5u) << 16u),
                         encoded(hi.z, row, c + 6u) | (encoded(hi.w, row, c + 7u) << 16u));
    }
    return vec4<u32>(encoded(lo.x, row, c), encoded(lo.y, row, c + 1u), encoded(lo.z, row, c + 2u),
                     encoded(lo.w, row, c + 3u));
}

// The block of workgroup `wg`: (batch row, head, first query row, keys walked).
fn block(wg: u32) -> vec4<u32> {
    let qb = wg % P.qblocks;
    let h = (wg / P.qblocks) % P.hq;
    let b = wg / (P.qblocks * P.hq);
    let i0 = qb * LANES * RW;
    // visible grows with i: the block's last row sees the most keys.
    return vec4<u32>(b, h, i0, visible(b, min(i0 + LANES * RW, P.sq) - 1u));
}

@compute @workgroup_size(LANES)
fn attn_v4(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
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
    load_q(b, h, blk.z, lid.x, du);
    for (var j0 = 0u; j0 < nmax; j0 += CK) {
        // P.step is CK, but a run-time value: the step's key loops stay rolled (unrolled, a
        // large head dim's kernel takes seconds to compile there).
        for (var jj = 0u; jj < P.step; jj++) {
            let j = j0 + jj;
            let base = (kv0 + min(j, nmax - 1u)) * du;
            scores_begin();
            slabs(OP_QK, jj, base, du);
            scores_end(jj, j);
        }
        softmax_step(j0);
        for (var jj = 0u; jj < P.step; jj++) {
            slabs(OP_PV, jj, (kv0 + min(j0 + jj, nmax - 1u)) * du, du);
        }
    }
    slabs(OP_STORE, 0u, 0u, du);
}
