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
/// widened in registers inside the dot products (AVX2: bf16 by a shift, f16 by F16C; elsewhere
/// one row at a time into an L1-sized buffer): a decode step streams the weight's 16-bit bytes,
/// not a widened f32 copy. Rows of `b` run in parallel blocks. `None` for other storage.
pub(crate) fn matvec_t16(
    a: &[f32],
    m: usize,
    k: usize,
    b: crate::tensor::StorageRef<'_>,
    n: usize,
) -> Option<Vec<f32>> {
    use crate::tensor::StorageRef;
    let (bits, bf16): (&[u16], bool) = match b {
        StorageRef::F16(w) => (bytemuck::cast_slice(w), false),
        StorageRef::BF16(w) => (bytemuck::cast_slice(w), true),
        _ => return None,
    };
    Some(matvec_rows(a, m, k, bits, n, bf16))
}

fn matvec_rows(a: &[f32], m: usize, k: usize, w: &[u16], n: usize, bf16: bool) -> Vec<f32> {
    use rayon::prelude::*;
    /// Weight rows per task.
    const NB: usize = 64;
    let m1 = m.max(1);
    let mut yt = vec![0f32; n * m1];
    yt.par_chunks_mut(NB * m1)
        .enumerate()
        .for_each(|(blk, out)| {
            let mut buf = Vec::new();
            for (j, o) in out.chunks_mut(m1).enumerate() {
                let row = blk * NB + j;
                dots16(a, k, &w[row * k..(row + 1) * k], bf16, o, &mut buf);
            }
        });
    // [n, m] → [m, n]
    let mut y = vec![0f32; m * n];
    for (j, row) in yt.chunks(m1).enumerate() {
        for (r, &v) in row.iter().enumerate() {
            y[r * n + j] = v;
        }
    }
    y
}

/// `out[r] = a[r] · widen(row)` for the `out.len()` ≤ 4 rows of `a`, `row` holding f16 or bf16
/// bits. `buf` is the widened row where there is no AVX2 kernel.
fn dots16(a: &[f32], k: usize, row: &[u16], bf16: bool, out: &mut [f32], buf: &mut Vec<f32>) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c")
    {
        debug_assert!(out.len() <= 4, "dots16 takes at most 4 rows");
        // SAFETY: the CPU has AVX2, FMA and F16C, checked above; `a` holds
        // `out.len()` rows of k and `row` k elements (the callers' validated shapes).
        unsafe {
            match out.len() {
                1 => x86::dots16::<1>(a, k, row, bf16, out),
                2 => x86::dots16::<2>(a, k, row, bf16, out),
                3 => x86::dots16::<3>(a, k, row, bf16, out),
                _ => x86::dots16::<4>(a, k, row, bf16, out),
            }
        }
        return;
    }
    buf.clear();
    buf.extend(row.iter().map(|&x| {
        if bf16 {
            f32::from_bits(u32::from(x) << 16)
        } else {
            half::f16::from_bits(x).to_f32()
        }
    }));
    dots(a, k, buf, out);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// 8 weights at `p` (8 readable u16) as f32.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn widen(p: *const u16, bf16: bool) -> __m256 {
        // SAFETY: the caller guarantees 8 readable u16 at `p`.
        let h = unsafe { _mm_loadu_si128(p.cast()) };
        if bf16 {
            _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
        } else {
            _mm256_cvtph_ps(h)
        }
    }

    /// [`super::dots16`] for `M` rows: 16 weights per step, widened in registers (bf16: zero-extend
    /// and shift; f16: `vcvtph2ps`), two accumulators per row; the tail in scalar code.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dots16<const M: usize>(
        a: &[f32],
        k: usize,
        row: &[u16],
        bf16: bool,
        out: &mut [f32],
    ) {
        assert!(a.len() >= M * k && row.len() >= k && out.len() >= M);
        let mut acc = [[_mm256_setzero_ps(); 2]; M];
        let body = k - k % 16;
        let mut i = 0;
        while i < body {
            // SAFETY: i + 16 ≤ k, so 16 weights and 16 elements of each of the M rows of `a`
            // (asserted above) are in bounds.
            unsafe {
                let w0 = widen(row.as_ptr().add(i), bf16);
                let w1 = widen(row.as_ptr().add(i + 8), bf16);
                for (r, acc) in acc.iter_mut().enumerate() {
                    let pa = a.as_ptr().add(r * k + i);
                    acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(pa), w0, acc[0]);
                    acc[1] = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(8)), w1, acc[1]);
                }
            }
            i += 16;
        }
        for (r, acc) in acc.iter().enumerate() {
            let mut lanes = [0f32; 8];
            // SAFETY: `lanes` holds 8 f32.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(acc[0], acc[1])) };
            let mut y: f32 = lanes.iter().sum();
            for j in body..k {
                let x = row[j];
                let w = if bf16 {
                    f32::from_bits(u32::from(x) << 16)
                } else {
                    half::f16::from_bits(x).to_f32()
                };
                y += a[r * k + j] * w;
            }
            out[r] = y;
        }
    }
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
