// attention_split.wgsl — decode attention (a few query rows per head against a long KV cache) as
// split-K: the keys are cut into chunks (`P.qblocks` of them, `P.chunk` keys each), one workgroup per (chunk, head, batch row), so
// one query row fills a GPU; `attn_merge` then combines the chunks' partial softmaxes. Same
// semantics as attention.wgsl: out = softmax(scale·q·kᵀ + mask)·v over the keys each row sees
// (the causal diagonal, the padding lengths), f32 accumulation, a finite sentinel for the running
// max, zeros for a row that sees no key.
//
// `attn_split`: GS invocations; invocation t scores key j0 + t of each tile against every query
// row (q in workgroup memory), the tile's max and weights go through workgroup memory, then
// invocation t accumulates its own output words over the tile's value rows (consecutive
// invocations read consecutive words: coalesced on GPUs, one SIMD load per batch on lavapipe).
// Barriers sit in uniform control flow (everything they depend on is the workgroup id, the
// params and lengths[b]); no subgroup operation, so any subgroup size and GL run it as is.
//
// The partial result of (row, chunk) is D + 2 f32 in `part`: the running max m, the sum l and the
// unnormalised accumulator; attention_merge.wgsl combines them. Params, lengths and helpers:
// attention_common.wgsl.

const GS: u32 = 64u;         // invocations per workgroup and keys per tile
const SQMAX: u32 = 4u;       // the most query rows per head (the planner's rule)
const DMAX: u32 = 256u;      // the largest head dim
const OWN: u32 = 4u;         // the most words one invocation owns: DMAX / GS

@group(0) @binding(0) var<storage, read> q: array<u32>;
@group(0) @binding(1) var<storage, read> k: array<u32>;
@group(0) @binding(2) var<storage, read> v: array<u32>;
@group(0) @binding(4) var<storage, read_write> part: array<f32>;

// Elements per word of the inputs.
fn per_in() -> u32 {
    return select(1u, 2u, is16(DT_IN));
}

// Element `odd` (0 or 1) of word w of an input, as f32.
fn elem(w: u32, odd: u32) -> f32 {
    return bitcast<f32>(elem_bits(DT_IN, w, odd == 1u));
}

var<workgroup> qs: array<f32, 1024>;        // SQMAX · DMAX
var<workgroup> ss: array<f32, 256>;         // SQMAX · GS: scores, then weights

@compute @workgroup_size(GS)
fn attn_split(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let t = lid.x;
    let wg = wid.y * P.row_groups + wid.x;
    let valid = wg < P.blocks;
    let s = wg % P.qblocks;
    let h = (wg / P.qblocks) % P.hq;
    let b = select(0u, wg / (P.qblocks * P.hq), valid);
    let sq = P.sq;
    let d = P.d;
    let per = per_in();
    let wpr = P.in_pitch / per;              // words per input row
    let dw = (d + per - 1u) / per;           // words holding the head dim
    let row0 = (b * P.hq + h) * sq;
    let kv0 = (b * P.hkv + h / (P.hq / P.hkv)) * P.skv;
    // This chunk's keys: [lo, hi), cut at the most any row of the block sees.
    let lo = s * P.chunk;
    var hi = 0u;
    if (valid) {
        hi = min(lo + P.chunk, visible(b, sq - 1u));
    }

    for (var e = t; e < SQMAX * DMAX; e += GS) {
        let r = e / DMAX;
        let c = e % DMAX;
        var x = 0.0;
        if (valid && r < sq && c < d) {
            let w = q[(row0 + r) * wpr + c / per];
            x = elem(w, c % per);
        }
        qs[e] = x;
    }
    var nvis: array<u32, SQMAX>;
    var m: array<f32, SQMAX>;
    var l: array<f32, SQMAX>;
    var acc: array<f32, 32>;                 // [row][word][half]: SQMAX · OWN · 2
    for (var r = 0u; r < SQMAX; r++) {
        nvis[r] = select(0u, visible(b, r), valid && r < sq);
        m[r] = -FMAX;
        l[r] = 0.0;
    }
    for (var a = 0u; a < 32u; a++) {
        acc[a] = 0.0;
    }
    workgroupBarrier();

    for (var j0 = lo; j0 < hi; j0 += GS) {
        // Scores of key j0 + t (rows past sq, keys past hi or past a row's count: the sentinel).
        let j = j0 + t;
        var dot = array<f32, SQMAX>(0.0, 0.0, 0.0, 0.0);
        if (j < hi) {
            let base = (kv0 + j) * wpr;
            for (var w = 0u; w < dw; w++) {
                let word = k[base + w];
                let c = w * per;
                let x0 = elem(word, 0u);
                let x1 = select(0.0, elem(word, 1u), per == 2u && c + 1u < d);
                for (var r = 0u; r < SQMAX; r++) {
                    if (r < sq) {
                        dot[r] = fma(qs[r * DMAX + c], x0, dot[r]);
                        if (per == 2u) {
                            dot[r] = fma(qs[r * DMAX + min(c + 1u, DMAX - 1u)], x1, dot[r]);
                        }
                    }
                }
            }
        }
        for (var r = 0u; r < SQMAX; r++) {
            ss[r * GS + t] = select(-FMAX, dot[r] * P.scale, j < hi && j < nvis[r]);
        }
        workgroupBarrier();
        // Every invocation takes the tile's max of each row (the same value everywhere).
        var corr: array<f32, SQMAX>;
        var mx: array<f32, SQMAX>;
        for (var r = 0u; r < SQMAX; r++) {
            var x = m[r];
            if (r < sq) {
                for (var jj = 0u; jj < GS; jj++) {
                    x = max(x, ss[r * GS + jj]);
                }
            }
            mx[r] = x;
            corr[r] = exp_shifted(m[r], x);
            m[r] = x;
        }
        workgroupBarrier();
        for (var r = 0u; r < SQMAX; r++) {
            ss[r * GS + t] = select(0.0, exp_shifted(ss[r * GS + t], mx[r]), j < hi && j < nvis[r]);
        }
        workgroupBarrier();
        // This invocation's words w = t + GS·o of every row, over the tile's value rows.
        for (var r = 0u; r < SQMAX; r++) {
            l[r] *= corr[r];
            for (var a = 0u; a < OWN * 2u; a++) {
                acc[r * OWN * 2u + a] *= corr[r];
            }
        }
        let kn = min(GS, hi - j0);
        for (var jj = 0u; jj < kn; jj++) {
            let base = (kv0 + j0 + jj) * wpr;
            var p: array<f32, SQMAX>;
            for (var r = 0u; r < SQMAX; r++) {
                p[r] = ss[r * GS + jj];
                l[r] += p[r];
            }
            for (var o = 0u; o < OWN; o++) {
                let w = t + GS * o;
                if (w < dw) {
                    let word = v[base + w];
                    let x0 = elem(word, 0u);
                    let x1 = select(0.0, elem(word, 1u), per == 2u);
                    for (var r = 0u; r < SQMAX; r++) {
                        acc[(r * OWN + o) * 2u] = fma(p[r], x0, acc[(r * OWN + o) * 2u]);
                        acc[(r * OWN + o) * 2u + 1u] = fma(p[r], x1, acc[(r * OWN + o) * 2u + 1u]);
                    }
                }
            }
        }
        workgroupBarrier();
    }

    if (!valid) {
        return;
    }
    let stride = d + 2u;
    for (var r = 0u; r < SQMAX; r++) {
        if (r < sq) {
            let at = ((row0 + r) * P.qblocks + s) * stride;
            if (t == 0u) {
                part[at] = m[r];
                part[at + 1u] = l[r];
            }
            for (var o = 0u; o < OWN; o++) {
                let w = t + GS * o;
                for (var hh = 0u; hh < per; hh++) {
                    let c = w * per + hh;
                    if (w < dw && c < d) {
                        part[at + 2u + c] = acc[(r * OWN + o) * 2u + hh];
                    }
                }
            }
        }
    }
}
