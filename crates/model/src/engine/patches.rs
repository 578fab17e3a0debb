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

/// Independent partial sums per product in [`PatchMoments::of`].
const LANES: usize = 8;

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
    /// entries laid out as nine columns, then their sums and the 45 distinct sums of products
    /// in [`LANES`] independent lanes (for the vectoriser).
    #[inline(always)]
    pub fn of<T: Real>(images: &[T], batch: usize, h: usize, w: usize) -> PatchMoments {
        let px = h * w;
        let len = px.div_ceil(LANES) * LANES;
        let mut cols = vec![0f64; 9 * len]; // [9, len], zero past px
        let (mut sum, mut prod) = ([0f64; 9], [0f64; 45]);
        for img in images[..batch * px].chunks_exact(px) {
            for t in 0..9 {
                let (dy, dx) = ((t / 3) as isize - 1, (t % 3) as isize - 1);
                let col = &mut cols[t * len..][..px];
                for y in 0..h {
                    for x in 0..w {
                        let (sy, sx) = (y as isize + dy, x as isize + dx);
                        let inside = sy >= 0 && sy < h as isize && sx >= 0 && sx < w as isize;
                        col[y * w + x] = if inside { img[sy as usize * w + sx as usize].to_f64() } else { 0.0 };
                    }
                }
            }
            let (mut s, mut q) = ([[0f64; LANES]; 9], [[0f64; LANES]; 45]);
            for j in (0..len).step_by(LANES) {
                let v: [[f64; LANES]; 9] =
                    std::array::from_fn(|t| cols[t * len + j..][..LANES].try_into().expect("LANES values"));
                let mut k = 0;
                for t in 0..9 {
                    (0..LANES).for_each(|l| s[t][l] += v[t][l]);
                    for u in t..9 {
                        (0..LANES).for_each(|l| q[k][l] += v[t][l] * v[u][l]);
                        k += 1;
                    }
                }
            }
            sum.iter_mut().zip(&s).for_each(|(a, s)| *a += s.iter().sum::<f64>());
            prod.iter_mut().zip(&q).for_each(|(a, q)| *a += q.iter().sum::<f64>());
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
