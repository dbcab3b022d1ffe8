// movement.wgsl — data movement as bit copies (reshape, permute, slice, concat, gather), one
// invocation per output word: a 16-bit word's two halves are looked up separately and combined,
// so no two invocations ever write the same word (settled decision 1). Bits are copied raw:
// integers, NaN payloads and signalling NaNs stay exact. Shapes and strides come in the params
// uniform, so one pipeline per storage width serves every op and size.

override DT: u32 = 0u;        // storage width class: DT_U32 (32-bit dtypes) or DT_F16 (16-bit)
override WG: u32 = 256u;

struct Params {
    dims: array<vec4<u32>, 2>,   // out dims, outermost first, `rank` of them (0: out = a's order)
    sa: array<vec4<u32>, 2>,     // a's logical element strides in out's index space
    sb: array<vec4<u32>, 2>,     // concat: b's strides (b's index along `axis` is i − split)
    rank: u32,
    axis: u32,                   // concat: the joined axis (8 = none)
    split: u32,                  // concat: a's size along `axis`
    a_off: u32,                  // logical offset added to a's index (a slice's start)
    out_last: u32,
    out_pitch: u32,
    words: u32,                  // output words to write
    a_last: u32,
    a_pitch: u32,
    b_last: u32,
    b_pitch: u32,
    row_words: u32,              // invocations per dispatch row (2-D dispatch for large tensors)
    row0: u32,                   // gather: first table row of this launch's binding
    rows: u32,                   // gather: table rows in this launch's binding
    table_rows: u32,             // gather: V, the whole table's rows
    zeros: u32,                  // gather: 1 when this launch writes the rows of bad indices
    _p0: u32,
    _p1: u32,
    _p2: u32,
    _p3: u32,
}

// copy:   a: (a's dims), b: (b's dims; a again unless concat), out: (out dims).
// gather: a: table rows [row0, row0 + rows) of [V, D] (a byte range of the table when it is
//         split over bindings), b: indices [N] (u32 or i32 bits), out: [N, D].
@group(0) @binding(0) var<storage, read> a: array<u32>;
@group(0) @binding(1) var<storage, read> b: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;
@group(0) @binding(3) var<uniform> P: Params;

// The stored bits of physical element e (16 bits for f16/bf16) of a word array.
fn half_bits(w: u32, e: u32) -> u32 {
    if (is16(DT)) {
        return select(w & 0xffffu, w >> 16u, (e & 1u) == 1u);
    }
    return w;
}

fn a_bits(l: u32) -> u32 {
    let e = phys(l, P.a_last, P.a_pitch);
    return half_bits(a[word_of(DT, e)], e);
}

fn b_bits(l: u32) -> u32 {
    let e = phys(l, P.b_last, P.b_pitch);
    return half_bits(b[word_of(DT, e)], e);
}

// The bits of logical output element l: its multi-index walks a's strides (or b's, past the
// split along a concat's axis).
fn source_bits(l: u32) -> u32 {
    if (P.rank == 0u) {
        return a_bits(l);
    }
    var rem = l;
    var oa = P.a_off;
    var ob = 0u;
    var in_b = false;
    for (var d = i32(P.rank) - 1; d >= 0; d--) {
        let du = u32(d);
        let n = at8(P.dims, du);
        let i = rem % n;
        rem = rem / n;
        if (du == P.axis && i >= P.split) {
            in_b = true;
            ob += (i - P.split) * at8(P.sb, du);
        } else if (du == P.axis) {
            oa += i * at8(P.sa, du);
        } else {
            oa += i * at8(P.sa, du);
            ob += i * at8(P.sb, du);
        }
    }
    // Only the operand that holds the element is read.
    if (in_b) {
        return b_bits(ob);
    }
    return a_bits(oa);
}

@compute @workgroup_size(WG)
fn copy(@builtin(global_invocation_id) gid: vec3<u32>) {
    let w = gid.y * P.row_words + gid.x;
    if (w >= P.words) {
        return;
    }
    let per = select(1u, 2u, is16(DT));
    var word = 0u;
    for (var h = 0u; h < per; h++) {
        let pe = w * per + h;
        let col = pe % P.out_pitch;
        if (col < P.out_last) {
            let l = (pe / P.out_pitch) * P.out_last + col;
            word |= source_bits(l) << (16u * h);
        }
    }
    out[w] = word;
}

// Rows of the table by index. Output rows start on a word (16-bit rows have an even pitch), so
// each word belongs to one row and one index. A launch writes only the rows whose index falls in
// its binding's rows; an index outside 0..V (a negative i32 reads as ≥ 2^31) is never read
// through: the launch marked `zeros` writes that row as zeros. Host-given indices are checked
// before the run (an `Err`), so zeros appear only for indices computed on the device.
@compute @workgroup_size(WG)
fn gather(@builtin(global_invocation_id) gid: vec3<u32>) {
    let w = gid.y * P.row_words + gid.x;
    if (w >= P.words) {
        return;
    }
    let per = select(1u, 2u, is16(DT));
    let row = (w * per) / P.out_pitch;
    let i = b[row];
    let mine = i >= P.row0 && i - P.row0 < P.rows;
    if (!mine && !(i >= P.table_rows && P.zeros == 1u)) {
        return;
    }
    var word = 0u;
    if (mine) {
        for (var h = 0u; h < per; h++) {
            let pe = w * per + h;
            let col = pe % P.out_pitch;
            if (col < P.out_last) {
                let e = (i - P.row0) * P.a_pitch + col;
                word |= half_bits(a[word_of(DT, e)], e) << (16u * h);
            }
        }
    }
    out[w] = word;
}
