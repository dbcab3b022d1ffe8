// reduce.wgsl — sum, max or mean over one axis, one invocation per output word, f32 accumulation.
//
// x: (outer, len, inner) logically; out: (outer, 1, inner).

override DT_X: u32 = 0u;
override DT_OUT: u32 = 0u;
override OP: u32 = 0u;    // 0 sum, 1 max, 2 mean
override WG: u32 = 256u;
override ROUND: u32 = 0u;

struct Params {
    outer: u32,
    len: u32,
    inner: u32,
    words: u32,
    x_last: u32,
    x_pitch: u32,
    out_last: u32,
    out_pitch: u32,
    row_words: u32,
    ka: u32,
    kb: u32,
    _p2: u32,
}

@group(0) @binding(0) var<storage, read> x: array<u32>;
@group(0) @binding(1) var<storage, read_write> out: array<u32>;
@group(0) @binding(2) var<uniform> P: Params;

fn load_x(l: u32) -> f32 {
    let e = phys(l, P.x_last, P.x_pitch);
    return bitcast<f32>(elem_bits(DT_X, x[word_of(DT_X, e)], (e & 1u) == 1u));
}

@compute @workgroup_size(WG)
fn reduce(@builtin(global_invocation_id) gid: vec3<u32>) {
    let w = gid.y * P.row_words + gid.x;
    if (w >= P.words) {
        return;
    }
    let per = select(1u, 2u, is16(DT_OUT));
    var word = 0u;
    for (var h = 0u; h < per; h++) {
        let pe = w * per + h;
        let col = pe % P.out_pitch;
        var bits = 0u;
        if (col < P.out_last) {
            let l = (pe / P.out_pitch) * P.out_last + col;
            let o = l / P.inner;
            let i = l % P.inner;
            // A finite sentinel for max over an empty axis (kernels never materialise Inf).
            var acc = select(0.0, -3.4028235e38, OP == 1u);
            for (var k = 0u; k < P.len; k++) {
                let v = load_x((o * P.len + k) * P.inner + i);
                if (OP == 1u) {
                    acc = max(acc, v);
                } else {
                    acc += v;
                }
            }
            if (OP == 2u) {
                acc = acc / f32(P.len);
            }
            bits = encode_round(DT_OUT, bitcast<u32>(acc), ROUND == 1u, vec2<u32>(P.ka, P.kb), l);
        }
        word |= bits << (16u * h);
    }
    out[w] = word;
}
