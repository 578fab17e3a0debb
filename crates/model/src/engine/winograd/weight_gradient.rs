//! The weight gradient of a Winograd convolution, by the adjoint of the forward algorithm,
//! accumulated a chunk of images at a time ([`WeightGradient`]).

use super::filter::{border, channel_means, outside};
use super::{POS, Shape, chunk_images, transform_input, transform_output_adjoint};
use crate::engine::buffer::Buffer;
use crate::engine::gemm::{Out, matmul_tn};
use crate::engine::profile::{Work, timed};
use crate::engine::real::Real;

/// `gw = sum over pixels of dz^T im2col(x)` (or `+=`): the weight gradient, `[c_out, 3, 3,
/// c_in]`, of the forward convolution of `x` (`[batch, h, w, c_in]`) for the conv-output
/// gradient `dz` (`[batch * h * w, c_out]`); see [`WeightGradient`].
#[inline(always)]
pub(crate) fn weight_gradient<T: Real>(s: &Shape, batch: usize, x: &[T], dz: &[T], gw: &mut [T], out: Out) {
    let px = s.h * s.w;
    let mut g = WeightGradient::new(s, batch, x);
    g.add(&x[..batch * px * s.c_in], &dz[..batch * px * s.c_out], batch);
    g.finish(gw, out);
}

/// A weight gradient accumulated a chunk of images at a time (the gradient pass feeds it each
/// chunk of `dz` as it produces it, while the chunk is in cache). By the adjoint of the
/// forward's algorithm: `dU_p = sum_tiles dM_p^T V_p` (16 products with the tiles as their
/// long inner dimension), then `dg = G^T dU G`; with the input centred as in [`Centring`],
/// whose `conv(mu, w)` term contributes `mu_i` times the sum of `dz` over the pixels whose tap
/// lies inside the image.
pub(crate) struct WeightGradient<T: Real> {
    s: Shape,
    /// The whole batch's per-channel input means (the forward pass's centring).
    mu: Vec<T>,
    step: usize,
    v: Buffer<T>,
    dm: Buffer<T>,
    /// `[16, c_out, c_in]`.
    du: Buffer<T>,
    /// Per border class and output channel, the sum of `dz` so far: `[16, c_out]`.
    class_sums: Vec<T>,
    started: bool,
}

impl<T: Real> WeightGradient<T> {
    /// For the forward convolution of `x` (`[batch, h, w, c_in]`: the whole batch, whose
    /// channel means centre the transforms).
    #[inline(always)]
    pub(crate) fn new(s: &Shape, batch: usize, x: &[T]) -> Self {
        let (px, tiles) = (s.h * s.w, s.tiles());
        let step = chunk_images(s, batch);
        WeightGradient {
            s: *s,
            mu: channel_means(&x[..batch * px * s.c_in], s.c_in),
            step,
            v: Buffer::scratch(POS * step * tiles * s.c_in),
            dm: Buffer::scratch(POS * step * tiles * s.c_out),
            du: Buffer::scratch(POS * s.c_in * s.c_out),
            class_sums: vec![T::default(); 16 * s.c_out],
            started: false,
        }
    }

    /// Adds `imgs` images: their input `x` (`[imgs, h, w, c_in]`) and conv-output gradient
    /// `dz` (`[imgs * h * w, c_out]`).
    #[inline(always)]
    pub(crate) fn add(&mut self, x: &[T], dz: &[T], imgs: usize) {
        let s = self.s;
        let (h, w, c_in, c_out) = (s.h, s.w, s.c_in, s.c_out);
        let (px, tiles, plane) = (h * w, s.tiles(), c_in * c_out);
        for i0 in (0..imgs).step_by(self.step) {
            let n = self.step.min(imgs - i0);
            let rows = n * tiles;
            let xc = &x[i0 * px * c_in..(i0 + n) * px * c_in];
            let dzc = &dz[i0 * px * c_out..(i0 + n) * px * c_out];
            let (v, dm, mu) = (&mut self.v, &mut self.dm, &self.mu);
            timed(
                Work::Im2col,
                #[inline(always)]
                || {
                    transform_input(&s, xc, n, Some(mu), v);
                    transform_output_adjoint(&s, dzc, n, dm);
                },
            );
            let first = if self.started { Out::Add } else { Out::Set };
            self.started = true;
            for p in 0..POS {
                matmul_tn(
                    &mut self.du[p * plane..(p + 1) * plane],
                    &self.dm[p * rows * c_out..(p + 1) * rows * c_out],
                    &self.v[p * rows * c_in..(p + 1) * rows * c_in],
                    [c_out, c_in, rows],
                    first,
                );
            }
            // The centring's term: per output channel, the sums of dz over each border
            // class's pixels.
            for img in 0..n {
                for y in 0..h {
                    for xx in 0..w {
                        let cls = border(y, h) * 4 + border(xx, w);
                        let row = &dzc[((img * h + y) * w + xx) * c_out..][..c_out];
                        self.class_sums[cls * c_out..][..c_out].iter_mut().zip(row).for_each(|(s, d)| *s += *d);
                    }
                }
            }
        }
    }

    /// Writes (or adds) the gradient into `gw` (`[c_out, 3, 3, c_in]`).
    ///
    /// `G^T dU G` as whole-plane passes over `[c_out, c_in]` (contiguous runs, vectorised at
    /// the caller's SIMD level), not per channel pair: gathering each pair's 16 values with a
    /// stride of a plane, through `array::from_fn` closures that were not inlined, was 12% of
    /// a 5-way 1-shot second-order step by perf (design point 18).
    #[inline(always)]
    pub(crate) fn finish(self, gw: &mut [T], out: Out) {
        let (c_in, c_out) = (self.s.c_in, self.s.c_out);
        let plane = c_in * c_out;
        let (du, mu, class_sums) = (&self.du, &self.mu, &self.class_sums);
        if !self.started {
            if out == Out::Set {
                gw[..9 * plane].fill(T::default());
            }
            return;
        }
        let half = T::from_f64(0.5);
        // G^T along each row r of positions (over q): rows[r * 3 + kx], then along the columns
        // (over r): taps[kx * 3 + ky] (column-major, so each column's pass writes its three
        // planes in place).
        let mut rows = Buffer::scratch(12 * plane);
        for (r, dst) in rows.chunks_exact_mut(3 * plane).enumerate() {
            let u = |q: usize| &du[(r * 4 + q) * plane..][..plane];
            g_t_planes([u(0), u(1), u(2), u(3)], dst, plane, half);
        }
        let mut taps = Buffer::scratch(9 * plane);
        for (kx, dst) in taps.chunks_exact_mut(3 * plane).enumerate() {
            let r = |r: usize| &rows[(r * 3 + kx) * plane..][..plane];
            g_t_planes([r(0), r(1), r(2), r(3)], dst, plane, half);
        }
        for o in 0..c_out {
            for t in 0..9 {
                let (ky, kx) = (t / 3, t % 3);
                // Sum of dz over the pixels whose tap (ky, kx) is inside the image.
                let mut inside = T::default();
                for cls in 0..16 {
                    if !outside(ky, cls / 4) && !outside(kx, cls % 4) {
                        inside += class_sums[cls * c_out + o];
                    }
                }
                let src = &taps[(kx * 3 + ky) * plane + o * c_in..][..c_in];
                let dst = &mut gw[(o * 9 + t) * c_in..][..c_in];
                match out {
                    Out::Set => dst.iter_mut().zip(src).zip(mu).for_each(|((d, s), m)| *d = *s + *m * inside),
                    Out::Add => dst.iter_mut().zip(src).zip(mu).for_each(|((d, s), m)| *d += *s + *m * inside),
                }
            }
        }
    }
}

/// `G^T u = [u0 + (u1 + u2) / 2, (u1 - u2) / 2, (u1 + u2) / 2 + u3]` elementwise over four
/// planes of `plane` values, into the three planes of `dst` (`[3, plane]`).
#[inline(always)]
fn g_t_planes<T: Real>([u0, u1, u2, u3]: [&[T]; 4], dst: &mut [T], plane: usize, half: T) {
    let (o0, rest) = dst[..3 * plane].split_at_mut(plane);
    let (o1, o2) = rest.split_at_mut(plane);
    for ((((((a, b), c), x0), x1), x2), x3) in
        o0.iter_mut().zip(o1.iter_mut()).zip(o2.iter_mut()).zip(u0).zip(u1).zip(u2).zip(u3)
    {
        *a = *x0 + (*x1 + *x2) * half;
        *b = (*x1 - *x2) * half;
        *c = (*x1 + *x2) * half + *x3;
    }
}
