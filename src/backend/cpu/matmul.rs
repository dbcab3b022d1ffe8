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
