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
    product(c, a, b, [m, n, k], (m as isize, 1), (1, n as isize), out);
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
