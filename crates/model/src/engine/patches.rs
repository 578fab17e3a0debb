//! The mean and covariance of a one-channel block's 3x3 patches (the rows of its im2col
//! matrix, zero padding included), in f64: [`PatchMoments`].
//!
//! The first block's conv output is `z = P w_c` per channel `c`, with `P` the `[n, 9]` patch
//! matrix. Its batch-norm statistics follow from the patches' moments without a pass over `z`:
//! `mean_c = mu . w_c`, `var_c = w_c^T C w_c` (`mu`, `C` the patches' mean and covariance).
//! So does the part of its weight gradient that reads the normalised output:
//! `sum_p xhat_c(p) p = inv_std_c sum_p (p . w_c - mean_c) p = n inv_std_c C w_c`. That lets a
//! forward pass that only feeds a gradient drop the block's normalised output (`xhat`, 12.8x
//! the images, 15 MB at 75 images in f32): see [`super::forward::forward_for_gradient`].
//! Both are exact rewritings; in f64 the moments are at least as accurate as the streaming
//! sums they replace (the tests in `tests/engine.rs` compare the two paths).

use super::real::Real;
use super::simd::with_best_simd;

/// Independent partial sums per product in [`PatchMoments::of`] (four AVX-512 registers of
/// f64, so a dot product's chain of additions is a quarter as long).
const LANES: usize = 32;

/// `sum a * b` (`product`) or `sum a`, over lengths that are multiples of [`LANES`], in that
/// many partial sums.
#[inline(always)]
fn lanes_sum(a: &[f64], b: &[f64], product: bool) -> f64 {
    // Index loops over ranges, not iterator adaptors: their `fold` can stay out of line, and
    // then out of the caller's SIMD level.
    let n = a.len() / LANES * LANES;
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f64; LANES];
    let mut j = 0;
    while j < n {
        for l in 0..LANES {
            acc[l] += if product { a[j + l] * b[j + l] } else { a[j + l] };
        }
        j += LANES;
    }
    let mut total = 0.0;
    for v in &acc {
        total += *v;
    }
    total
}

/// Moments of the 3x3 patches (pad 1) of one-channel images. Patch entries are ordered as
/// im2col orders them: `ky * 3 + kx`.
#[derive(Debug, Clone)]
pub(crate) struct PatchMoments {
    /// Number of patches (images x pixels).
    pub n: usize,
    /// Their mean.
    pub mean: [f64; 9],
    /// Their covariance (divided by `n`), row-major.
    pub cov: [f64; 81],
}

impl PatchMoments {
    /// The moments of `images` (`[batch, h, w]`, one channel), in f64: each image's patch
    /// entries laid out as nine columns (from a zero-bordered copy), then their sums and the 45
    /// distinct dot products, each in [`LANES`] independent partial sums (plain indexed loops,
    /// which the vectoriser turns into a few wide multiply-adds per step; `perf` found an
    /// iterator form of this compiled as scalar code outside the SIMD closure, 9% of a step).
    ///
    /// Out of line, with its own [`with_best_simd`]: its fully unrolled loops inlined at every
    /// forward pass of every caller made `fewshot-meta` take minutes longer to compile.
    #[inline(never)]
    pub fn of<T: Real>(images: &[T], batch: usize, h: usize, w: usize) -> PatchMoments {
        with_best_simd(
            #[inline(always)]
            || Self::of_here(images, batch, h, w),
        )
    }

    /// [`Self::of`] at the caller's SIMD level.
    #[inline(always)]
    fn of_here<T: Real>(images: &[T], batch: usize, h: usize, w: usize) -> PatchMoments {
        let (px, pw) = (h * w, w + 2);
        let len = px.div_ceil(LANES) * LANES;
        let mut plane = vec![0f64; (h + 2) * pw];
        let mut cols = vec![0f64; 9 * len]; // [9, len], zero past px
        let (mut sum, mut prod) = ([0f64; 9], [0f64; 45]);
        for img in images[..batch * px].chunks_exact(px) {
            for y in 0..h {
                for x in 0..w {
                    plane[(y + 1) * pw + x + 1] = img[y * w + x].to_f64();
                }
            }
            for t in 0..9 {
                let (ky, kx) = (t / 3, t % 3);
                for y in 0..h {
                    let src = (y + ky) * pw + kx;
                    cols[t * len + y * w..t * len + (y + 1) * w].copy_from_slice(&plane[src..src + w]);
                }
            }
            let mut k = 0;
            for t in 0..9 {
                let ct = &cols[t * len..(t + 1) * len];
                sum[t] += lanes_sum(ct, ct, false);
                for u in t..9 {
                    prod[k] += lanes_sum(ct, &cols[u * len..(u + 1) * len], true);
                    k += 1;
                }
            }
        }
        let n = batch * px;
        let inv = 1.0 / n as f64;
        let mean = sum.map(|s| s * inv);
        let mut cov = [0f64; 81];
        let mut k = 0;
        for t in 0..9 {
            for u in t..9 {
                let c = prod[k] * inv - mean[t] * mean[u];
                cov[t * 9 + u] = c;
                cov[u * 9 + t] = c;
                k += 1;
            }
        }
        PatchMoments { n, mean, cov }
    }

    /// `(mean, sum of squared deviations)` of `z = P w_c` for each channel of `w`
    /// (`[c_out, 9]`), as [`super::kernels::Moments::finish`] gives them.
    pub fn conv_moments<T: Real>(&self, w: &[T], c_out: usize) -> (Vec<T>, Vec<T>) {
        let n = self.n as f64;
        let (mut mean, mut m2) = (Vec::with_capacity(c_out), Vec::with_capacity(c_out));
        for wc in w[..9 * c_out].chunks_exact(9) {
            let wc: [f64; 9] = std::array::from_fn(|t| wc[t].to_f64());
            mean.push(T::from_f64((0..9).map(|t| self.mean[t] * wc[t]).sum()));
            let cw = self.cov_times(&wc);
            m2.push(T::from_f64(n * (0..9).map(|t| wc[t] * cw[t]).sum::<f64>()));
        }
        (mean, m2)
    }

    /// `C w` for one channel's weights.
    pub fn cov_times(&self, w: &[f64; 9]) -> [f64; 9] {
        std::array::from_fn(|t| (0..9).map(|u| self.cov[t * 9 + u] * w[u]).sum())
    }
}
