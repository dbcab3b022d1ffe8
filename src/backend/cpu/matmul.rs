//! f32 matmul on the CPU through the `gemm` crate (blocked, AVX2/AVX-512/NEON microkernels,
//! multi-threaded): transposes become strides, so operands are never copied.

use gemm::Parallelism;
use rayon::prelude::*;

use crate::shape::broadcast_strides;

/// Below this many multiply-adds per matrix, a batch is spread over threads one matrix each
/// instead of splitting each matrix.
const SMALL_MATMUL: usize = 1 << 21;

/// Batched `[.., M, K] × [.., K, N] → out_shape = [batch.., M, N]` into `out` (cleared; its
/// capacity is reused), with broadcast batch dims.
/// `a` is stored `[.., K, M]` when `ta`, `b` is stored `[.., N, K]` when `tb`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(
    out: &mut Vec<f32>,
    a: &[f32],
    sa: &[usize],
    b: &[f32],
    sb: &[usize],
    ta: bool,
    tb: bool,
    out_shape: &[usize],
    threads: usize,
) {
    let r = out_shape.len();
    let (m, n) = (out_shape[r - 2], out_shape[r - 1]);
    let k = if ta {
        sa[sa.len() - 2]
    } else {
        sa[sa.len() - 1]
    };
    let batch = &out_shape[..r - 2];
    let nb: usize = batch.iter().product();
    let total = nb * m * n;
    if k == 0 || total == 0 {
        out.clear();
        out.resize(total, 0.0);
        return;
    }
    // Batch offsets, in elements, of each operand for output matrix `bi`.
    let stride_a = broadcast_strides(&sa[..sa.len() - 2], batch);
    let stride_b = broadcast_strides(&sb[..sb.len() - 2], batch);
    let offsets = |bi: usize| {
        let (mut rem, mut oa, mut ob) = (bi, 0, 0);
        for d in (0..batch.len()).rev() {
            let i = rem % batch[d];
            rem /= batch[d];
            oa += i * stride_a[d];
            ob += i * stride_b[d];
        }
        (oa * m * k, ob * k * n)
    };
    // (row stride, column stride) of the logical M×K and K×N operands.
    let (lhs_rs, lhs_cs) = if ta { (1, m as isize) } else { (k as isize, 1) };
    let (rhs_rs, rhs_cs) = if tb { (1, k as isize) } else { (n as isize, 1) };
    let gemm_one = |dst: &mut [std::mem::MaybeUninit<f32>], bi: usize, par: Parallelism| {
        let (oa, ob) = offsets(bi);
        let (lhs, rhs) = (&a[oa..], &b[ob..]);
        debug_assert!(dst.len() == m * n);
        // SAFETY: `dst` holds m·n elements written row-major (row stride n); `lhs` and `rhs`
        // start at a matrix of a validated shape, so every (row, col) visited by the strides lies
        // inside them. With `read_dst = false` gemm overwrites all of `dst` (k > 0 here), so the
        // uninitialised memory is never read.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                dst.as_mut_ptr().cast::<f32>(),
                1,
                n as isize,
                false,
                lhs.as_ptr(),
                lhs_cs,
                lhs_rs,
                rhs.as_ptr(),
                rhs_cs,
                rhs_rs,
                0.0,
                1.0,
                false,
                false,
                false,
                par,
            );
        }
    };
    out.clear();
    out.reserve(total);
    let spare = &mut out.spare_capacity_mut()[..total];
    if nb >= threads && m * n * k <= SMALL_MATMUL {
        spare
            .par_chunks_mut(m * n)
            .enumerate()
            .for_each(|(bi, dst)| gemm_one(dst, bi, Parallelism::None));
    } else {
        let par = if threads > 1 {
            Parallelism::Rayon(threads)
        } else {
            Parallelism::None
        };
        for (bi, dst) in spare.chunks_mut(m * n).enumerate() {
            gemm_one(dst, bi, par);
        }
    }
    // SAFETY: every one of the `total` elements was written by gemm above.
    unsafe { out.set_len(total) };
}

/// Decode's matrix-vector products: `a [m, k] · bᵀ` for m ≤ 4 rows with `b [n, k]` stored f16 or
/// bf16 (a weight in Hugging Face's `[out, in]` layout). The weight is read once, as stored, and
/// widened one row at a time into an L1-sized buffer: a decode step streams the weight's 16-bit
/// bytes, not a widened f32 copy (which would read them, write twice as many and read those
/// again). Rows of `b` run in parallel blocks. `None` for other storage.
pub(crate) fn matvec_t16(
    a: &[f32],
    m: usize,
    k: usize,
    b: crate::tensor::StorageRef<'_>,
    n: usize,
) -> Option<Vec<f32>> {
    use crate::tensor::StorageRef;
    use half::slice::HalfFloatSliceExt;
    match b {
        StorageRef::F16(w) => Some(matvec_rows(a, m, k, w, n, |row, buf| {
            row.convert_to_f32_slice(buf)
        })),
        // bf16 → f32 is a shift (NaN payloads pass through: the product is NaN either way).
        StorageRef::BF16(w) => Some(matvec_rows(a, m, k, w, n, |row, buf| {
            for (o, &x) in buf.iter_mut().zip(row) {
                *o = f32::from_bits(u32::from(x.to_bits()) << 16);
            }
        })),
        _ => None,
    }
}

fn matvec_rows<T: Sync>(
    a: &[f32],
    m: usize,
    k: usize,
    w: &[T],
    n: usize,
    widen: impl Fn(&[T], &mut [f32]) + Sync,
) -> Vec<f32> {
    use rayon::prelude::*;
    /// Weight rows per task.
    const NB: usize = 64;
    let mut yt = vec![0f32; n * m];
    yt.par_chunks_mut(NB * m.max(1))
        .enumerate()
        .for_each(|(blk, out)| {
            let mut buf = vec![0f32; k];
            for (j, o) in out.chunks_mut(m.max(1)).enumerate() {
                let row = blk * NB + j;
                widen(&w[row * k..(row + 1) * k], &mut buf);
                dots(a, k, &buf, o);
            }
        });
    // [n, m] → [m, n]
    let mut y = vec![0f32; m * n];
    for (j, row) in yt.chunks(m.max(1)).enumerate() {
        for (r, &v) in row.iter().enumerate() {
            y[r * n + j] = v;
        }
    }
    y
}

/// `out[r] = a[r] · row` for each of the `out.len()` rows of `a` (AVX2/FMA where present).
fn dots(a: &[f32], k: usize, row: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA (checked above).
        unsafe { dots_avx2(a, k, row, out) };
        return;
    }
    for (r, y) in out.iter_mut().enumerate() {
        *y = dot(&a[r * k..(r + 1) * k], row);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dots_avx2(a: &[f32], k: usize, row: &[f32], out: &mut [f32]) {
    for (r, y) in out.iter_mut().enumerate() {
        *y = dot(&a[r * k..(r + 1) * k], row);
    }
}

/// A dot product in 8 independent lanes (vectorised by the compiler; inlined into the AVX2
/// caller).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}
