//! Matrix products for the engine: thin, bounds-checked wrappers over the [`gemm`] crate's
//! kernel, one per operand layout the net needs, all row-major and single-threaded (tasks run
//! in parallel instead).

use super::real::Real;

/// Whether a product overwrites its output or adds to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Out {
    /// `c = a · b`.
    Set,
    /// `c += a · b`.
    Add,
}

/// `c = a · b^T` (or `+=`): `a` is `[m, k]`, `b` is `[n, k]`, `c` is `[m, n]`.
#[inline(always)]
pub fn matmul_nt<T: Real>(c: &mut [T], a: &[T], b: &[T], [m, n, k]: [usize; 3], out: Out) {
    product(c, a, b, [m, n, k], (1, k as isize), (k as isize, 1), out);
}

/// `c = a · b` (or `+=`): `a` is `[m, k]`, `b` is `[k, n]`, `c` is `[m, n]`.
#[inline(always)]
pub fn matmul_nn<T: Real>(c: &mut [T], a: &[T], b: &[T], [m, n, k]: [usize; 3], out: Out) {
    product(c, a, b, [m, n, k], (1, k as isize), (1, n as isize), out);
}

/// `c = a^T · b` (or `+=`): `a` is `[k, m]`, `b` is `[k, n]`, `c` is `[m, n]`.
#[inline(always)]
pub fn matmul_tn<T: Real>(c: &mut [T], a: &[T], b: &[T], [m, n, k]: [usize; 3], out: Out) {
    #[cfg(target_arch = "x86_64")]
    if n == taps::TAPS
        && m % 16 == 0
        && let Some(f32_avx512) = super::fast_f32::F32Avx512::for_type::<T>()
    {
        assert!(c.len() >= m * n && a.len() >= m * k && b.len() >= k * n, "matmul operands too small");
        let (a, b, c) = (f32_avx512.cast(a), f32_avx512.cast(b), f32_avx512.cast_mut(c));
        return super::profile::timed(
            super::profile::Work::Gemm,
            #[inline(always)]
            // SAFETY: the token proves AVX-512F; the lengths were asserted.
            || unsafe { taps::weight_gradient(c, a, b, [m, k], out) },
        );
    }
    product(c, a, b, [m, n, k], (m as isize, 1), (1, n as isize), out);
}

/// The first block's weight gradient, `dW = dz^T · cols` with `cols` of 9 columns (a 3x3 conv
/// on one input channel): a contraction over every pixel of the batch into a `[64, 9]` result,
/// which `gemm` runs at 11-22 GFLOP/s against 78-134 for the other blocks' products
/// (`examples/gemm_probe.rs`). Here, for f32 on AVX-512: per 16 channels, nine accumulator
/// registers over the rows, with partial sums every `kernels::PARTIAL_ROWS` rows, the
/// batch-norm reductions' blocking. (Loops written for the compiler's vectoriser spilled.)
#[cfg(target_arch = "x86_64")]
mod taps {
    use super::super::kernels::PARTIAL_ROWS;
    use super::Out;
    use std::arch::x86_64::*;

    /// Columns of `cols` in the first block.
    pub const TAPS: usize = 9;

    /// `c = a^T · b` (or `+=`) for `a` `[k, m]` (`m` a multiple of 16), `b` `[k, 9]`, `c` `[m, 9]`.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `a`, `b` and `c` hold at least `k * m`, `k * 9` and `m * 9` values.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn weight_gradient(c: &mut [f32], a: &[f32], b: &[f32], [m, k]: [usize; 2], out: Out) {
        assert!(m % 16 == 0 && a.len() >= k * m && b.len() >= k * TAPS && c.len() >= m * TAPS);
        let mut total = vec![0.0f32; TAPS * m]; // [9, m]
        for r_start in (0..k).step_by(PARTIAL_ROWS) {
            // This block of rows of `a` (32 KB at 64 channels) stays in L1 across the passes.
            for c_start in (0..m).step_by(16) {
                let mut acc = [_mm512_setzero_ps(); TAPS];
                for r in r_start..(r_start + PARTIAL_ROWS).min(k) {
                    // SAFETY: r < k and c_start + 16 <= m, so the 16 values are inside `a`.
                    let x = unsafe { _mm512_loadu_ps(a.as_ptr().add(r * m + c_start)) };
                    let y = &b[r * TAPS..r * TAPS + TAPS];
                    for j in 0..TAPS {
                        acc[j] = _mm512_fmadd_ps(_mm512_set1_ps(y[j]), x, acc[j]);
                    }
                }
                for (j, acc_j) in acc.iter().enumerate() {
                    let t = &mut total[j * m + c_start..j * m + c_start + 16];
                    // SAFETY: t holds 16 values.
                    unsafe { _mm512_storeu_ps(t.as_mut_ptr(), _mm512_add_ps(_mm512_loadu_ps(t.as_ptr()), *acc_j)) };
                }
            }
        }
        for (ch, row) in c[..m * TAPS].chunks_exact_mut(TAPS).enumerate() {
            for (j, o) in row.iter_mut().enumerate() {
                match out {
                    Out::Set => *o = total[j * m + ch],
                    Out::Add => *o += total[j * m + ch],
                }
            }
        }
    }
}

/// The product with `a`'s and `b`'s (column, row) strides given.
#[inline(always)]
fn product<T: Real>(
    c: &mut [T],
    a: &[T],
    b: &[T],
    [m, n, k]: [usize; 3],
    (a_cs, a_rs): (isize, isize),
    (b_cs, b_rs): (isize, isize),
    out: Out,
) {
    assert!(c.len() >= m * n && a.len() >= m * k && b.len() >= k * n, "matmul operands too small");
    if m == 0 || n == 0 {
        return;
    }
    let accumulate = out == Out::Add;
    if k == 0 {
        if !accumulate {
            c[..m * n].fill(T::default());
        }
        return;
    }
    // SAFETY: the assert above bounds every index gemm touches: a is m x k, b is k x n, c is
    // m x n with the strides given (each stride pair describes a dense matrix of that shape),
    // and c does not alias a or b (a mutable and two shared borrows).
    super::profile::timed(
        super::profile::Work::Gemm,
        #[inline(always)]
        || unsafe {
            gemm::gemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                1,
                n as isize,
                accumulate,
                a.as_ptr(),
                a_cs,
                a_rs,
                b.as_ptr(),
                b_cs,
                b_rs,
                T::from_f64(1.0),
                T::from_f64(1.0),
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        },
    );
}
