// reduce.wgsl — sum, max or mean over one axis, f32 accumulation: `reduce` (one invocation per
// output word, for CPU-emulated adapters) and `reduce_tree` (a workgroup per output word).
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

// The GPU class: one workgroup per output word, RWG invocations striding over the axis, then a
// tree in workgroup memory. Control flow around the barriers is uniform (`w` is the same for the
// whole workgroup; no early return), and no subgroup size is assumed.
override RWG: u32 = 64u;
var<workgroup> part: array<f32, RWG>;

fn combine(x: f32, y: f32) -> f32 {
    return select(x + y, max(x, y), OP == 1u);
}

@compute @workgroup_size(RWG)
fn reduce_tree(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let w = wid.y * P.row_words + wid.x;
    let valid = w < P.words;
    let per = select(1u, 2u, is16(DT_OUT));
    var word = 0u;
    for (var h = 0u; h < per; h++) {
        let pe = w * per + h;
        let col = pe % P.out_pitch;
        let live = valid && col < P.out_last;
        let l = (pe / P.out_pitch) * P.out_last + col;
        let o = l / P.inner;
        let i = l % P.inner;
        // A finite sentinel for max over an empty axis (kernels never materialise Inf).
        var acc = select(0.0, -3.4028235e38, OP == 1u);
        if (live) {
            for (var k = lid.x; k < P.len; k += RWG) {
                acc = combine(acc, load_x((o * P.len + k) * P.inner + i));
            }
        }
        part[lid.x] = acc;
        workgroupBarrier();
        for (var s = RWG / 2u; s > 0u; s = s / 2u) {
            if (lid.x < s) {
                part[lid.x] = combine(part[lid.x], part[lid.x + s]);
            }
            workgroupBarrier();
        }
        if (lid.x == 0u && live) {
            var r = part[0];
            if (OP == 2u) {
                r = r / f32(P.len);
            }
            word |= encode_round(DT_OUT, bitcast<u32>(r), ROUND == 1u, vec2<u32>(P.ka, P.kb), l) << (16u * h);
        }
        // The next half reuses `part`.
        workgroupBarrier();
    }
    if (lid.x == 0u && valid) {
        out[w] = word;
    }
}
