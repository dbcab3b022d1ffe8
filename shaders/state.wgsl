// state.wgsl — writes a value into a persistent state tensor at a run-time offset along one axis,
// in place (a KV-cache append). The grid covers only the written words — O(elements written),
// never O(state size). A word is read and rewritten only by its own invocation, so a 16-bit
// write at an odd offset keeps its neighbour intact. Bits are copied raw: integers and
// floats alike stay exact.
//
// state: (outer, s_len, inner) logically; value: (outer, v_len, inner), same dtype. For each
// `outer` index the written elements are one contiguous logical range, so one run of state words.

override DT: u32 = 0u;
override WG: u32 = 256u;

struct Params {
    s_len: u32,
    v_len: u32,
    inner: u32,
    offset: u32,
    outer: u32,
    span: u32,        // state words per outer index to visit (an upper bound)
    s_last: u32,
    s_pitch: u32,
    v_last: u32,
    v_pitch: u32,
    row_words: u32,
    _p0: u32,
}

@group(0) @binding(0) var<storage, read> v: array<u32>;
@group(0) @binding(1) var<storage, read_write> s: array<u32>;
@group(0) @binding(2) var<uniform> P: Params;

fn value_bits(l: u32) -> u32 {
    let e = phys(l, P.v_last, P.v_pitch);
    let w = v[word_of(DT, e)];
    if (is16(DT)) {
        return select(w & 0xffffu, w >> 16u, (e & 1u) == 1u);
    }
    return w;
}

@compute @workgroup_size(WG)
fn write_state(@builtin(global_invocation_id) gid: vec3<u32>) {
    let t = gid.y * P.row_words + gid.x;
    if (t >= P.outer * P.span) {
        return;
    }
    let o = t / P.span;
    let per = select(1u, 2u, is16(DT));
    // Logical range [l0, l1) of this outer index, and the state words it covers.
    let l0 = (o * P.s_len + P.offset) * P.inner;
    let l1 = l0 + P.v_len * P.inner;
    let w = phys(l0, P.s_last, P.s_pitch) / per + t % P.span;
    if (w > phys(l1 - 1u, P.s_last, P.s_pitch) / per) {
        return;
    }
    var word = s[w];
    var touched = false;
    for (var h = 0u; h < per; h++) {
        let pe = w * per + h;
        let col = pe % P.s_pitch;
        if (col < P.s_last) {
            let l = (pe / P.s_pitch) * P.s_last + col;
            if (l >= l0 && l < l1) {
                let bits = value_bits(o * P.v_len * P.inner + (l - l0));
                if (per == 2u) {
                    let sh = 16u * h;
                    word = (word & ~(0xffffu << sh)) | (bits << sh);
                } else {
                    word = bits;
                }
                touched = true;
            }
        }
    }
    if (touched) {
        s[w] = word;
    }
}
