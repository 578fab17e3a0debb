//! The transformed filter `U = G g G^T` of a 3x3 convolution's weights, in both directions,
//! and its centred variant for a forward convolution (see [`Centring`]).

use super::{LANES, POS};
use crate::engine::buffer::Buffer;
use crate::engine::real::Real;

/// A transformed filter `U = G g G^T`: `[16, c_out_w, c_in_w]` for weights stored `[c_out_w,
/// 3, 3, c_in_w]`, in both directions (so that building it only copies contiguous channel
/// runs): the forward convolution multiplies by each position's matrix transposed, the input
/// gradient by the matrix itself.
pub(crate) struct Filter<T: Real> {
    pub(super) u: Buffer<T>,
    pub(super) adjoint: bool,
    /// The centring of a forward convolution's input, if any (see [`centred_filter`]).
    pub(super) centring: Option<Centring<T>>,
}

/// A forward convolution computed as `conv(x - mu, w) + conv(mu, w)` (`mu` inside the image,
/// zero padding outside): Winograd's transforms lose digits in proportion to the magnitudes
/// they add up, and a block's input (ReLU outputs, all positive) has a large per-channel mean
/// that batch norm then subtracts again. Transforming `x - mu` and adding the exact
/// `conv(mu, w)` afterwards (one of 16 vectors per output pixel, by which of its taps fall
/// outside the image) keeps the f32 meta-gradient within 1e-5 of f64's at the paper shape
/// (`fewshot-meta`'s `f32_meta_gradients_stay_close_to_f64_at_the_paper_shape`: 1.5e-4
/// uncentred).
pub(super) struct Centring<T: Real> {
    /// Per input channel: `[c_in]`.
    pub(super) mu: Vec<T>,
    /// `conv(mu, w)` per border class (see [`border`]): `[16, c_out]`.
    pub(super) bias: Vec<T>,
}

/// An output pixel's border class along one axis of size `n`: bit 0 if its tap before is
/// outside the image, bit 1 if its tap after is.
#[inline(always)]
pub(super) fn border(y: usize, n: usize) -> usize {
    (y == 0) as usize | (((y + 1 == n) as usize) << 1)
}

/// The transformed filter of weights `w` (`[c_out_w, 3, 3, c_in_w]`).
///
/// With `adjoint` false the convolution is the forward one (`c_in = c_in_w`, `c_out =
/// c_out_w`). With `adjoint` true it is the input gradient: the convolution of the
/// conv-output gradient (`c_out_w` channels) with the weights' taps rotated by 180 degrees and
/// their channel roles swapped, giving `c_in_w` channels.
#[inline(always)]
pub(crate) fn filter<T: Real>(w: &[T], c_out_w: usize, c_in_w: usize, adjoint: bool) -> Filter<T> {
    let plane = c_out_w * c_in_w;
    // The taps as 9 planes [c_out_w, c_in_w], rotated for the adjoint.
    let mut g = Buffer::scratch(9 * plane);
    for o in 0..c_out_w {
        for t in 0..9 {
            let src = if adjoint { 8 - t } else { t };
            g[t * plane + o * c_in_w..][..c_in_w].copy_from_slice(&w[(o * 9 + src) * c_in_w..][..c_in_w]);
        }
    }
    // G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]] on the rows (gg: [4, 3]
    // planes), then on the columns (u: [4, 4] planes).
    let half = T::from_f64(0.5);
    let mut gg = Buffer::scratch(12 * plane);
    let mut col = Buffer::scratch(4 * plane);
    for kx in 0..3 {
        let p = |ky: usize| &g[(ky * 3 + kx) * plane..][..plane];
        g_planes(&mut col, [p(0), p(1), p(2)], plane, half);
        for r in 0..4 {
            gg[(r * 3 + kx) * plane..][..plane].copy_from_slice(&col[r * plane..][..plane]);
        }
    }
    let mut u = Buffer::scratch(POS * plane);
    for r in 0..4 {
        let p = |kx: usize| &gg[(r * 3 + kx) * plane..][..plane];
        g_planes(&mut col, [p(0), p(1), p(2)], plane, half);
        for s in 0..4 {
            u[(r * 4 + s) * plane..][..plane].copy_from_slice(&col[s * plane..][..plane]);
        }
    }
    Filter { u, adjoint, centring: None }
}

/// `G g = [g0, (g0 + g1 + g2) / 2, (g0 - g1 + g2) / 2, g2]` elementwise over three planes of
/// `plane` values, into the four planes of `out` (`[4, plane]`). A function with
/// `#[inline(always)]`, not a closure: as a closure perf showed it compiled on its own at the
/// baseline SIMD level.
#[inline(always)]
fn g_planes<T: Real>(out: &mut [T], [p0, p1, p2]: [&[T]; 3], plane: usize, half: T) {
    let (o0, rest) = out[..4 * plane].split_at_mut(plane);
    let (o1, rest) = rest.split_at_mut(plane);
    let (o2, o3) = rest.split_at_mut(plane);
    o0.copy_from_slice(p0);
    o3.copy_from_slice(p2);
    for ((((a, b), x), y), z) in o1.iter_mut().zip(o2.iter_mut()).zip(p0).zip(p1).zip(p2) {
        *a = (*x + *y + *z) * half;
        *b = (*x - *y + *z) * half;
    }
}

/// Per-channel means of `x` (`[rows, c]`): the centre of [`Centring`] (any value gives the
/// same convolution in exact arithmetic; the mean makes the transformed values small).
#[inline(always)]
pub(super) fn channel_means<T: Real>(x: &[T], c: usize) -> Vec<T> {
    let mut mu = vec![T::default(); c];
    for px in x.chunks_exact(c) {
        mu.iter_mut().zip(px).for_each(|(m, v)| *m += *v);
    }
    let inv = T::from_f64(1.0 / (x.len() / c).max(1) as f64);
    mu.iter_mut().for_each(|m| *m = *m * inv);
    mu
}

/// Whether tap `k` (0, 1, 2) of an output pixel of border class `cls` (see [`border`]) falls
/// outside the image.
#[inline(always)]
pub(super) fn outside(k: usize, cls: usize) -> bool {
    (k == 0 && cls & 1 != 0) || (k == 2 && cls & 2 != 0)
}

/// The forward filter of weights `w` (`[c_out, 3, 3, c_in]`) with the centring of input `x`
/// (`[rows, c_in]`, every pixel of the batch): see [`Centring`].
#[inline(always)]
pub(crate) fn centred_filter<T: Real>(w: &[T], c_out: usize, c_in: usize, x: &[T]) -> Filter<T> {
    let mu = channel_means(x, c_in);
    // taps[o][t] = sum_c mu_c w[o, t, c]; then each class's sum over the taps inside.
    let mut bias = vec![T::default(); 16 * c_out];
    for o in 0..c_out {
        let mut taps = [T::default(); 9];
        for (t, tap) in taps.iter_mut().enumerate() {
            *tap = lane_dot(&w[(o * 9 + t) * c_in..][..c_in], &mu);
        }
        for cy in 0..4 {
            for cx in 0..4 {
                let mut sum = T::default();
                for ky in 0..3 {
                    for kx in 0..3 {
                        if !outside(ky, cy) && !outside(kx, cx) {
                            sum += taps[ky * 3 + kx];
                        }
                    }
                }
                bias[(cy * 4 + cx) * c_out + o] = sum;
            }
        }
    }
    Filter { centring: Some(Centring { mu, bias }), ..filter(w, c_out, c_in, false) }
}

/// `sum a_i b_i` in [`LANES`] partial sums (vectorised at the caller's SIMD level; a plain
/// fold is one chain of dependent additions, and as an `array::from_fn` closure it was not
/// inlined into the caller's SIMD level).
#[inline(always)]
pub(super) fn lane_dot<T: Real>(a: &[T], b: &[T]) -> T {
    let mut acc = [T::default(); LANES];
    let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    let mut sum = ar.iter().zip(br).fold(T::default(), |s, (x, y)| s + *x * *y);
    for v in acc {
        sum += v;
    }
    sum
}
