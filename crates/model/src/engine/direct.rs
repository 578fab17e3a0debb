//! The first block's convolution and weight gradient (a 3x3 convolution of one input channel)
//! computed directly in AVX-512 registers, for f32.
//!
//! Through im2col, the first block's forward product is `[rows, 9] x [9, c_out]`: an inner
//! dimension of 9, which the gemm crate runs at 49-65 GFLOP/s against 111-146 for the other
//! blocks' products (`examples/gemm_probe.rs`), after an im2col pass that writes nine values
//! per pixel. Here each image is copied once into a zero-bordered `(h + 2) x (w + 2)` plane
//! (a few KB, in L1), and each output's 16 channels are nine fused multiply-adds of a
//! broadcast pixel with a register of weights: no im2col, no packing. The weight gradient
//! reads the same plane instead of im2col's columns, with the blocking of the kernel it
//! replaces (`super::gemm`'s `taps`): per 16 channels nine accumulators over
//! [`PARTIAL_ROWS`] rows, added to the total at the end of each block of rows.
//!
//! The sums are the same as the im2col path's, in another order; the tests in `conv.rs`
//! compare the two.

use super::buffer::Buffer;
use super::fast_f32::F32Avx512;
use super::gemm::Out;
use super::kernels::PARTIAL_ROWS;
use super::real::Real;

/// Whether the direct kernels run for a block of `c_in` input and `c_out` output channels in
/// `T`: f32, one input channel, `c_out` a multiple of 16, a CPU with AVX-512F.
#[inline(always)]
pub(crate) fn applies<T: Real>(c_in: usize, c_out: usize) -> bool {
    c_in == 1 && c_out.is_multiple_of(16) && F32Avx512::for_type::<T>().is_some()
}

/// The token of the f32 fast path, where [`applies`] holds.
#[inline(always)]
fn token<T: Real>(c_out: usize) -> F32Avx512 {
    F32Avx512::for_type::<T>().filter(|_| applies::<T>(1, c_out)).expect("the direct kernels outside their case")
}

/// Copies `imgs` images (`[imgs, h, w]`) into zero-bordered planes (`[imgs, h + 2, w + 2]`).
#[inline(always)]
fn pad(x: &[f32], imgs: usize, h: usize, w: usize) -> Buffer<f32> {
    let (ph, pw) = (h + 2, w + 2);
    let mut planes = Buffer::scratch(imgs * ph * pw);
    planes.fill(0.0);
    for img in 0..imgs {
        for y in 0..h {
            let dst = (img * ph + y + 1) * pw + 1;
            planes[dst..dst + w].copy_from_slice(&x[(img * h + y) * w..][..w]);
        }
    }
    planes
}

/// `z = conv(x, w)` (or `+=`) for `x` `[imgs, h, w]` (one channel), `w` `[c_out, 9]`, `z`
/// `[imgs * h * w, c_out]`. Only where [`applies`] holds.
#[inline(always)]
pub(crate) fn conv<T: Real>(x: &[T], imgs: usize, [h, w]: [usize; 2], wts: &[T], c_out: usize, z: &mut [T], out: Out) {
    let f = token::<T>(c_out);
    let (x, wts, z) = (f.cast(x), f.cast(wts), f.cast_mut(z));
    assert!(x.len() >= imgs * h * w && wts.len() >= 9 * c_out && z.len() >= imgs * h * w * c_out);
    let planes = pad(x, imgs, h, w);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `applies` checked AVX-512F; the lengths were asserted.
    unsafe {
        avx512::conv(&planes, imgs, [h, w], wts, c_out, z, out)
    }
}

/// `gw = dz^T im2col(x)` (or `+=`): the weight gradient, `[c_out, 9]`, for `x` `[imgs, h, w]`
/// (one channel) and `dz` `[imgs * h * w, c_out]`. Only where [`applies`] holds.
#[inline(always)]
pub(crate) fn weight_gradient<T: Real>(
    x: &[T],
    imgs: usize,
    [h, w]: [usize; 2],
    dz: &[T],
    c_out: usize,
    gw: &mut [T],
    out: Out,
) {
    let f = token::<T>(c_out);
    let (x, dz, gw) = (f.cast(x), f.cast(dz), f.cast_mut(gw));
    assert!(x.len() >= imgs * h * w && dz.len() >= imgs * h * w * c_out && gw.len() >= 9 * c_out);
    let planes = pad(x, imgs, h, w);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `applies` checked AVX-512F; the lengths were asserted.
    unsafe {
        avx512::weight_gradient(&planes, imgs, [h, w], dz, c_out, gw, out)
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Out, PARTIAL_ROWS};
    use std::arch::x86_64::*;

    /// Outputs per group of the forward kernel: eight accumulators and nine weight registers.
    const GROUP: usize = 8;

    /// [`super::conv`] on padded planes.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `planes` holds `imgs` planes of `(h + 2) x (w + 2)`, `wts` at
    /// least `9 * c_out` values, `z` at least `imgs * h * w * c_out`; `c_out.is_multiple_of(16)`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn conv(
        planes: &[f32],
        imgs: usize,
        [h, w]: [usize; 2],
        wts: &[f32],
        c: usize,
        z: &mut [f32],
        out: Out,
    ) {
        let (ph, pw) = (h + 2, w + 2);
        assert!(
            c.is_multiple_of(16) && planes.len() >= imgs * ph * pw && wts.len() >= 9 * c && z.len() >= imgs * h * w * c
        );
        // The weights tap-major, `[9, c]`: one register load per tap and 16 channels.
        let mut wt = vec![0f32; 9 * c];
        for o in 0..c {
            for j in 0..9 {
                wt[j * c + o] = wts[o * 9 + j];
            }
        }
        let add = out == Out::Add;
        for img in 0..imgs {
            let plane = planes[img * ph * pw..].as_ptr();
            let zi = z[img * h * w * c..].as_mut_ptr();
            for cs in (0..c).step_by(16) {
                // SAFETY: j * c + cs + 16 <= 9 * c.
                let wv: [__m512; 9] = std::array::from_fn(|j| unsafe { _mm512_loadu_ps(wt.as_ptr().add(j * c + cs)) });
                for y in 0..h {
                    let mut x0 = 0;
                    while x0 + GROUP <= w {
                        // SAFETY: the group's taps are inside the plane (rows y..y + 3, columns
                        // x0..x0 + GROUP + 2 of a (h + 2) x (w + 2) plane) and its outputs
                        // inside the image's rows of z.
                        unsafe { group::<GROUP>(plane, pw, y, x0, &wv, zi.add((y * w + x0) * c + cs), c, add) };
                        x0 += GROUP;
                    }
                    while x0 < w {
                        // SAFETY: as above, for one output.
                        unsafe { group::<1>(plane, pw, y, x0, &wv, zi.add((y * w + x0) * c + cs), c, add) };
                        x0 += 1;
                    }
                }
            }
        }
    }

    /// `N` consecutive outputs of row `y` from column `x0`, 16 channels: the taps in order
    /// (ky, kx), each a fused multiply-add from zero.
    ///
    /// # Safety
    /// AVX-512F; the plane holds rows `y..y + 3` of width `pw >= x0 + N + 2`; `dst` points at
    /// `N` outputs `c` values apart.
    #[target_feature(enable = "avx512f")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn group<const N: usize>(
        plane: *const f32,
        pw: usize,
        y: usize,
        x0: usize,
        wv: &[__m512; 9],
        dst: *mut f32,
        c: usize,
        add: bool,
    ) {
        let mut acc = [_mm512_setzero_ps(); N];
        for ky in 0..3 {
            for kx in 0..3 {
                // SAFETY: inside the plane, per the contract.
                let row = unsafe { plane.add((y + ky) * pw + x0 + kx) };
                for (p, a) in acc.iter_mut().enumerate() {
                    // SAFETY: p < N, inside the row per the contract.
                    *a = _mm512_fmadd_ps(_mm512_set1_ps(unsafe { *row.add(p) }), wv[ky * 3 + kx], *a);
                }
            }
        }
        for (p, a) in acc.iter().enumerate() {
            // SAFETY: output p's 16 channels, per the contract.
            unsafe {
                let d = dst.add(p * c);
                let v = if add { _mm512_add_ps(_mm512_loadu_ps(d), *a) } else { *a };
                _mm512_storeu_ps(d, v);
            }
        }
    }

    /// [`super::weight_gradient`] on padded planes.
    ///
    /// # Safety
    /// As [`conv`], with `dz` (`imgs * h * w * c` values) in place of `z` and `gw` holding
    /// `9 * c`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn weight_gradient(
        planes: &[f32],
        imgs: usize,
        [h, w]: [usize; 2],
        dz: &[f32],
        c: usize,
        gw: &mut [f32],
        out: Out,
    ) {
        let (ph, pw) = (h + 2, w + 2);
        let rows = imgs * h * w;
        assert!(c.is_multiple_of(16) && planes.len() >= imgs * ph * pw && dz.len() >= rows * c && gw.len() >= 9 * c);
        let mut total = vec![0f32; 9 * c]; // [9, c]
        for r_start in (0..rows).step_by(PARTIAL_ROWS) {
            let r_end = (r_start + PARTIAL_ROWS).min(rows);
            // This block of dz's rows (32 KB at 64 channels) stays in L1 across the passes.
            for cs in (0..c).step_by(16) {
                let mut acc = [_mm512_setzero_ps(); 9];
                let (mut img, mut y, mut x) = (r_start / (h * w), (r_start % (h * w)) / w, r_start % w);
                for r in r_start..r_end {
                    // SAFETY: r < rows and cs + 16 <= c.
                    let d = unsafe { _mm512_loadu_ps(dz.as_ptr().add(r * c + cs)) };
                    let at = (img * ph + y) * pw + x;
                    for ky in 0..3 {
                        for kx in 0..3 {
                            // SAFETY: the tap is inside image img's plane.
                            let v = unsafe { *planes.get_unchecked(at + ky * pw + kx) };
                            acc[ky * 3 + kx] = _mm512_fmadd_ps(_mm512_set1_ps(v), d, acc[ky * 3 + kx]);
                        }
                    }
                    x += 1;
                    if x == w {
                        x = 0;
                        y += 1;
                        if y == h {
                            y = 0;
                            img += 1;
                        }
                    }
                }
                for (j, a) in acc.iter().enumerate() {
                    let t = &mut total[j * c + cs..j * c + cs + 16];
                    // SAFETY: t holds 16 values.
                    unsafe { _mm512_storeu_ps(t.as_mut_ptr(), _mm512_add_ps(_mm512_loadu_ps(t.as_ptr()), *a)) };
                }
            }
        }
        for (o, row) in gw[..c * 9].chunks_exact_mut(9).enumerate() {
            for (j, g) in row.iter_mut().enumerate() {
                match out {
                    Out::Set => *g = total[j * c + o],
                    Out::Add => *g += total[j * c + o],
                }
            }
        }
    }
}
