// attention_merge.wgsl — the second half of split-K decode attention (attention_split.wgsl): one
// invocation per output word combines the key chunks' partial softmaxes of its row, rescaled to
// their largest running max M: out = Σ acc_s·e^(m_s − M) / Σ l_s·e^(m_s − M), zeros when no chunk
// saw a key (every l_s is 0). Each chunk's partial is D + 2 f32: m, l, then the accumulator.

override DT_OUT: u32 = 0u;
override ROUND: u32 = 0u;

struct Params {
    d: u32,
    out_pitch: u32,          // elements (even for 16-bit)
    splits: u32,
    words: u32,              // output words in all
    row_groups: u32,         // invocations per dispatch row
    ka: u32,                 // stochastic-rounding keys of this node and run
    kb: u32,
    _p0: u32,
}

@group(0) @binding(0) var<storage, read> part: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<u32>;
@group(0) @binding(2) var<uniform> P: Params;

const FMAX: f32 = 3.4028235e38;

// exp(x − m) for x ≤ m without overflow, also with x or m at the −FMAX sentinel.
fn exp_shifted(x: f32, m: f32) -> f32 {
    return exp(2.0 * max(0.5 * x - 0.5 * m, -64.0));
}

@compute @workgroup_size(256)
fn attn_merge(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.y * P.row_groups + gid.x;
    if (i >= P.words) {
        return;
    }
    let per = select(1u, 2u, is16(DT_OUT));
    let wpr = P.out_pitch / per;
    let row = i / wpr;
    let w = i % wpr;
    let d = P.d;
    let stride = d + 2u;
    let at = row * P.splits * stride;
    var mm = -FMAX;
    for (var s = 0u; s < P.splits; s++) {
        mm = max(mm, part[at + s * stride]);
    }
    var lsum = 0.0;
    var y = array<f32, 2>(0.0, 0.0);
    for (var s = 0u; s < P.splits; s++) {
        let base = at + s * stride;
        let f = exp_shifted(part[base], mm);
        lsum = fma(part[base + 1u], f, lsum);
        for (var hh = 0u; hh < per; hh++) {
            let c = w * per + hh;
            if (c < d) {
                y[hh] = fma(part[base + 2u + c], f, y[hh]);
            }
        }
    }
    var word = 0u;
    for (var hh = 0u; hh < per; hh++) {
        let c = w * per + hh;
        if (c < d) {
            let x = select(0.0, y[hh] / lsum, lsum > 0.0);
            word |= encode_round(DT_OUT, bitcast<u32>(x), ROUND == 1u, vec2<u32>(P.ka, P.kb),
                                 row * d + c) << (16u * hh);
        }
    }
    out[i] = word;
}
