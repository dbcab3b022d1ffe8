// attention.wgsl — fused scaled-dot-product attention, out = softmax(scale·q·kᵀ + mask)·v, with an
// online softmax over key tiles: the scores never reach device memory, and everything
// accumulates in f32. Two kernel classes share the bindings and params (attention_common.wgsl,
// which also has the masks and the output encoding; attention_cpu.wgsl and attention_sg.wgsl
// hold the faster CPU-adapter kernels for head dims of whole 16-byte units):
//
// - `attn_rows` (CPU-emulated adapters, any head dim): one invocation per query row, no
//   workgroup memory and no barrier. A workgroup holds SWG consecutive rows of one (batch,
//   head), and every invocation walks the same keys (to the block's largest visible count,
//   masking its own tail).
// - `attn_tiles` (GPUs): a workgroup of GWG invocations per (query block of BQ rows, head,
//   batch). The q block, then each key tile and value tile (BK rows) are staged in workgroup
//   memory; GWG / BQ invocations share a row's output, each owning whole output words. Barriers
//   sit in uniform control flow only; no subgroup operation, so no subgroup size is assumed and
//   GL runs it as is.
//
// q: [B, Hq, Sq, D], k and v: [B, Hkv, Skv, D], out: [B, Hq, Sq, D], rows at the storage pitch
// (even for 16-bit, so a row's words belong to that row alone: settled decision 1). Query head h
// reads key/value head h / group. Row i of a batch row b sees the first visible(b, i) keys:
// the keys read (q_offset + Sq, or Skv), cut by the causal diagonal (keys ≤ q_offset + i) and by
// lengths[b] under padding. A row that sees no key gives zeros. Masks and the running max use a
// finite sentinel (settled decision 1).

@group(0) @binding(0) var<storage, read> q: array<u32>;
@group(0) @binding(1) var<storage, read> k: array<u32>;
@group(0) @binding(2) var<storage, read> v: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<u32>;

// The largest head dim (`supports` refuses more).
const DMAX_ALL: u32 = 256u;

fn ld_q(e: u32) -> f32 {
    return bitcast<f32>(elem_bits(DT_IN, q[word_of(DT_IN, e)], (e & 1u) == 1u));
}

fn ld_k(e: u32) -> f32 {
    return bitcast<f32>(elem_bits(DT_IN, k[word_of(DT_IN, e)], (e & 1u) == 1u));
}

fn ld_v(e: u32) -> f32 {
    return bitcast<f32>(elem_bits(DT_IN, v[word_of(DT_IN, e)], (e & 1u) == 1u));
}

// ---- CPU-emulated adapters: one invocation per query row ----

override SWG: u32 = 16u;     // query rows per workgroup
const CK: u32 = 8u;          // keys per online-softmax step

// The query row of invocation `lane` in workgroup `wg` of attn_rows and attn_lse.
struct RowOf {
    live: bool,              // a real query row
    n: u32,                  // keys it sees
    nmax: u32,               // keys its block walks: the block's largest visible count (visible
                             // grows with the row), the same for every invocation
    row: u32,                // flat over B, Hq, Sq (the block's last row when not live)
    kv0: u32,                // the first row of its key/value head
}

fn row_of(wg: u32, lane: u32) -> RowOf {
    let qb = wg % P.qblocks;
    let h = (wg / P.qblocks) % P.hq;
    let b = wg / (P.qblocks * P.hq);
    let i0 = qb * SWG;
    let i = i0 + lane;
    let live = i < P.sq;
    return RowOf(
        live,
        select(0u, visible(b, i), live),
        visible(b, min(i0 + SWG, P.sq) - 1u),
        (b * P.hq + h) * P.sq + min(i, P.sq - 1u),
        (b * P.hkv + h / (P.hq / P.hkv)) * P.skv,
    );
}

@compute @workgroup_size(SWG)
fn attn_rows(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let wg = wid.y * P.row_groups + wid.x;
    if (wg >= P.blocks) {
        return;
    }
    let r = row_of(wg, lid.x);
    let live = r.live;
    let n = r.n;
    let nmax = r.nmax;
    let row = r.row;
    let kv0 = r.kv0;
    let d = P.d;
    var qr: array<f32, DMAX_ALL>;
    var acc: array<f32, DMAX_ALL>;
    for (var c = 0u; c < d; c++) {
        var x = 0.0;
        if (live) {
            x = ld_q(row * P.in_pitch + c);
        }
        qr[c] = x;
        acc[c] = 0.0;
    }
    var m = -FMAX;
    var l = 0.0;
    var s: array<f32, CK>;
    for (var j0 = 0u; j0 < nmax; j0 += CK) {
        let kn = min(CK, nmax - j0);
        var mx = m;
        for (var jj = 0u; jj < kn; jj++) {
            let base = (kv0 + j0 + jj) * P.in_pitch;
            var dot = 0.0;
            for (var c = 0u; c < d; c++) {
                dot += qr[c] * ld_k(base + c);
            }
            let sc = select(-FMAX, dot * P.scale, j0 + jj < n);
            s[jj] = sc;
            mx = max(mx, sc);
        }
        let corr = exp_shifted(m, mx);
        m = mx;
        l *= corr;
        for (var jj = 0u; jj < kn; jj++) {
            let p = select(0.0, exp_shifted(s[jj], mx), j0 + jj < n);
            s[jj] = p;
            l += p;
        }
        for (var c = 0u; c < d; c++) {
            var a = acc[c] * corr;
            for (var jj = 0u; jj < kn; jj++) {
                a += s[jj] * ld_v((kv0 + j0 + jj) * P.in_pitch + c);
            }
            acc[c] = a;
        }
    }
    if (!live) {
        return;
    }
    // Whole words of the row (its pitch is even for 16-bit), zeros when no key was visible.
    let per = select(1u, 2u, is16(DT_OUT));
    let words = P.out_pitch / per;
    for (var w = 0u; w < words; w++) {
        var word = 0u;
        for (var hh = 0u; hh < per; hh++) {
            let c = w * per + hh;
            if (c < d) {
                let y = select(0.0, acc[c] / l, l > 0.0);
                word |= encoded(y, row, c) << (16u * hh);
            }
        }
        out[row * words + w] = word;
    }
}

// ---- The log-sum-exp of each query row (`lse` attention), on every adapter ----

// attn_rows without the values: one invocation per query row, keys walked with
// workgroup-uniform addresses, an online max and sum; out[row] is the f32 bits of
// m + ln(l) over the row's visible scaled scores, or −FMAX when it sees no key.
@compute @workgroup_size(SWG)
fn attn_lse(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let wg = wid.y * P.row_groups + wid.x;
    if (wg >= P.blocks) {
        return;
    }
    let r = row_of(wg, lid.x);
    let live = r.live;
    let n = r.n;
    let nmax = r.nmax;
    let row = r.row;
    let kv0 = r.kv0;
    let d = P.d;
    var qr: array<f32, DMAX_ALL>;
    for (var c = 0u; c < d; c++) {
        qr[c] = select(0.0, ld_q(row * P.in_pitch + c), live);
    }
    var m = -FMAX;
    var l = 0.0;
    for (var j = 0u; j < nmax; j++) {
        let base = (kv0 + j) * P.in_pitch;
        var dot = 0.0;
        for (var c = 0u; c < d; c++) {
            dot += qr[c] * ld_k(base + c);
        }
        if (j < n) {
            let s = dot * P.scale;
            let mx = max(m, s);
            l = l * exp_shifted(m, mx) + exp_shifted(s, mx);
            m = mx;
        }
    }
    if (live) {
        out[row] = bitcast<u32>(select(-FMAX, m + log(l), l > 0.0));
    }
}

// ---- GPUs: a workgroup per query block, key/value tiles in workgroup memory ----

const GWG: u32 = 64u;        // invocations per workgroup
const ACC: u32 = 32u;        // the most output elements one invocation owns
override BQ: u32 = 16u;      // query rows per workgroup (divides GWG)
override BK: u32 = 32u;      // keys per tile
override DMAX: u32 = 64u;    // this tile class's largest head dim
override Q_TILE: u32 = 1024u;     // BQ · DMAX
override KV_TILE: u32 = 2048u;    // BK · DMAX
override S_TILE: u32 = 512u;      // BQ · BK

var<workgroup> qs: array<f32, Q_TILE>;
var<workgroup> kvs: array<f32, KV_TILE>;    // the key tile, then the value tile
var<workgroup> ss: array<f32, S_TILE>;      // scores, then probabilities
var<workgroup> corr_s: array<f32, BQ>;
var<workgroup> l_s: array<f32, BQ>;

@compute @workgroup_size(GWG)
fn attn_tiles(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let t = lid.x;
    // Everything up to `nmax` depends on the workgroup id and the params alone (and lengths[b],
    // read-only at a uniform index): uniform, so the barriers below are in uniform control flow.
    let wg = wid.y * P.row_groups + wid.x;
    let valid = wg < P.blocks;
    let qb = wg % P.qblocks;
    let h = (wg / P.qblocks) % P.hq;
    let b = wg / (P.qblocks * P.hq);
    let i0 = qb * BQ;
    let rows = select(0u, min(BQ, P.sq - min(i0, P.sq)), valid);
    var nmax = 0u;
    if (rows > 0u) {
        nmax = visible(b, i0 + rows - 1u);
    }
    let row0 = (b * P.hq + h) * P.sq + i0;
    let kv0 = (b * P.hkv + h / (P.hq / P.hkv)) * P.skv;
    let d = P.d;

    for (var e = t; e < BQ * DMAX; e += GWG) {
        let r = e / DMAX;
        let c = e % DMAX;
        var x = 0.0;
        if (r < rows && c < d) {
            x = ld_q((row0 + r) * P.in_pitch + c);
        }
        qs[e] = x;
    }
    // Invocation t < BQ keeps row t's running max and sum.
    var my_n = 0u;
    if (t < rows) {
        my_n = visible(b, i0 + t);
    }
    var m = -FMAX;
    var l = 0.0;
    // Invocation t owns columns 2·(part + a·TPR) and the next one of row r: whole words.
    let tpr = GWG / BQ;
    let r = t / tpr;
    let part = t % tpr;
    let pairs = DMAX / (2u * tpr);
    var acc: array<f32, ACC>;
    for (var a = 0u; a < ACC; a++) {
        acc[a] = 0.0;
    }
    workgroupBarrier();

    for (var j0 = 0u; j0 < nmax; j0 += BK) {
        let kn = min(BK, nmax - j0);
        for (var e = t; e < BK * DMAX; e += GWG) {
            let j = e / DMAX;
            let c = e % DMAX;
            var x = 0.0;
            if (j < kn && c < d) {
                x = ld_k((kv0 + j0 + j) * P.in_pitch + c);
            }
            kvs[e] = x;
        }
        workgroupBarrier();
        for (var e = t; e < BQ * BK; e += GWG) {
            let rr = e / BK;
            let j = e % BK;
            var dot = 0.0;
            for (var c = 0u; c < d; c++) {
                dot += qs[rr * DMAX + c] * kvs[j * DMAX + c];
            }
            ss[e] = dot * P.scale;
        }
        workgroupBarrier();
        for (var e = t; e < BK * DMAX; e += GWG) {
            let j = e / DMAX;
            let c = e % DMAX;
            var x = 0.0;
            if (j < kn && c < d) {
                x = ld_v((kv0 + j0 + j) * P.in_pitch + c);
            }
            kvs[e] = x;
        }
        if (t < BQ) {
            var mx = m;
            for (var j = 0u; j < kn; j++) {
                if (j0 + j < my_n) {
                    mx = max(mx, ss[t * BK + j]);
                }
            }
            let corr = exp_shifted(m, mx);
            l *= corr;
            for (var j = 0u; j < BK; j++) {
                var p = 0.0;
                if (j0 + j < my_n) {
                    p = exp_shifted(ss[t * BK + j], mx);
                }
                ss[t * BK + j] = p;
                l += p;
            }
            m = mx;
            corr_s[t] = corr;
        }
        workgroupBarrier();
        let corr = corr_s[r];
        for (var a = 0u; a < pairs; a++) {
            let c0 = 2u * (part + a * tpr);
            var a0 = acc[2u * a] * corr;
            var a1 = acc[2u * a + 1u] * corr;
            for (var j = 0u; j < kn; j++) {
                let p = ss[r * BK + j];
                a0 += p * kvs[j * DMAX + c0];
                a1 += p * kvs[j * DMAX + c0 + 1u];
            }
            acc[2u * a] = a0;
            acc[2u * a + 1u] = a1;
        }
        // The next tile overwrites kvs, ss and corr_s.
        workgroupBarrier();
    }
    if (t < BQ) {
        l_s[t] = l;
    }
    workgroupBarrier();
    if (r >= rows) {
        return;
    }
    let lr = l_s[r];
    let row = row0 + r;
    for (var a = 0u; a < pairs; a++) {
        let c0 = 2u * (part + a * tpr);
        let y0 = select(0.0, acc[2u * a] / lr, lr > 0.0);
        let y1 = select(0.0, acc[2u * a + 1u] / lr, lr > 0.0);
        if (is16(DT_OUT)) {
            // The pitch is even: columns c0, c0 + 1 are one word of this row alone.
            if (c0 < P.out_pitch) {
                var word = 0u;
                if (c0 < d) {
                    word = encoded(y0, row, c0);
                }
                if (c0 + 1u < d) {
                    word |= encoded(y1, row, c0 + 1u) << 16u;
                }
                out[(row * P.out_pitch + c0) / 2u] = word;
            }
        } else {
            if (c0 < d) {
                out[row * P.out_pitch + c0] = encoded(y0, row, c0);
            }
            if (c0 + 1u < d) {
                out[row * P.out_pitch + c0 + 1u] = encoded(y1, row, c0 + 1u);
            }
        }
    }
}
