//! Batch norm, ReLU and max-pooling fused ([`normalize_pool`]), the pooling windows, the fused
//! per-channel linear combinations of the backward passes, and the unpooling of gradients.

use super::moments::PARTIAL_ROWS;
use crate::engine::layout::Block;
use crate::engine::profile::{Work, timed};
use crate::engine::real::Real;

/// The forward pass's batch norm, max-pool and ReLU in one pass over the conv output `z`
/// (`[b * h * w, c]`): `z` becomes `xhat = (z - mean) * inv_std` in place, and each pooled
/// output is `relu(max_j(scale * xhat_j + shift))` over its window (the first maximum wins;
/// `arg` records which row). Rows outside every window (odd sizes) are normalised too. With
/// `xm` (`[b * oh * ow, c]`), also each pooled output's `xhat` at its arg-max row: what the
/// gradient needs of `xhat` when the block's `z` is not kept (see
/// [`super::forward::forward_for_gradient`]).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn normalize_pool<T: Real>(
    bl: &Block,
    batch: usize,
    z: &mut [T],
    (mean, inv_std): (&[T], &[T]),
    (scale, shift): (&[T], &[T]),
    arg: &mut [u8],
    out: &mut [T],
    xm: Option<&mut [T]>,
) {
    match xm {
        Some(xm) => normalize_pool_impl::<T, true>(bl, batch, z, (mean, inv_std), (scale, shift), arg, out, xm),
        None => {
            let mut unused = vec![T::default(); bl.c_out];
            normalize_pool_impl::<T, false>(bl, batch, z, (mean, inv_std), (scale, shift), arg, out, &mut unused)
        }
    }
}

/// [`normalize_pool`], writing `xm` with `XM` (without it, `xm` is one row of scratch, never
/// written).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn normalize_pool_impl<T: Real, const XM: bool>(
    bl: &Block,
    batch: usize,
    z: &mut [T],
    (mean, inv_std): (&[T], &[T]),
    (scale, shift): (&[T], &[T]),
    arg: &mut [u8],
    out: &mut [T],
    xm: &mut [T],
) {
    timed(
        Work::Elementwise,
        #[inline(always)]
        || {
            let (c, zero) = (bl.c_out, T::default());
            let normalize = |row: &mut [T]| {
                for ((v, m), s) in row.iter_mut().zip(mean).zip(inv_std) {
                    *v = (*v - *m) * *s;
                }
            };
            if bl.h % 2 == 1 || bl.w % 2 == 1 {
                let (h, w) = (bl.h, bl.w);
                for (r, row) in z.chunks_exact_mut(c).enumerate() {
                    let (y, x) = ((r / w) % h, r % w);
                    if y >= 2 * bl.oh || x >= 2 * bl.ow {
                        normalize(row);
                    }
                }
            }
            for (o, rows) in windows(bl, batch) {
                for r in rows {
                    normalize(&mut z[r * c..r * c + c]);
                }
                let x: [&[T]; 4] = std::array::from_fn(|j| &z[rows[j] * c..rows[j] * c + c]);
                let (o_arg, o_out) = (&mut arg[o * c..o * c + c], &mut out[o * c..o * c + c]);
                let o_xm = if XM { &mut xm[o * c..o * c + c] } else { &mut xm[..c] };
                let xs = x[0].iter().zip(x[1]).zip(x[2]).zip(x[3]);
                for ((((a, y), m), (sc, sh)), (((x0, x1), x2), x3)) in
                    o_arg.iter_mut().zip(o_out.iter_mut()).zip(o_xm.iter_mut()).zip(scale.iter().zip(shift)).zip(xs)
                {
                    // First maximum wins, like the candle op; branch-free selects.
                    let (y0, y1, y2, y3) = (*sc * *x0 + *sh, *sc * *x1 + *sh, *sc * *x2 + *sh, *sc * *x3 + *sh);
                    let (mut best, mut k, mut xb) = (y0, 0u8, *x0);
                    k = if y1 > best { 1 } else { k };
                    xb = if y1 > best { *x1 } else { xb };
                    best = if y1 > best { y1 } else { best };
                    k = if y2 > best { 2 } else { k };
                    xb = if y2 > best { *x2 } else { xb };
                    best = if y2 > best { y2 } else { best };
                    k = if y3 > best { 3 } else { k };
                    xb = if y3 > best { *x3 } else { xb };
                    best = if y3 > best { y3 } else { best };
                    *a = k;
                    *y = if best > zero { best } else { zero };
                    if XM {
                        *m = xb;
                    }
                }
            }
        },
    )
}

/// The pooled outputs of block `bl`, as `(o, rows)`: `o` is the output's row in the pooled
/// `[b * oh * ow, c]` buffer, `rows` the rows of its 2x2 window in the `[b * h * w, c]` input.
/// (An iterator, not a callback, so the loop body is compiled inside the caller's SIMD level.)
#[inline(always)]
pub fn windows(bl: &Block, batch: usize) -> impl Iterator<Item = (usize, [usize; 4])> {
    let (h, w, oh, ow) = (bl.h, bl.w, bl.oh, bl.ow);
    (0..batch * oh * ow).map(move |o| {
        let (img, rest) = (o / (oh * ow), o % (oh * ow));
        let (oy, ox) = (rest / ow, rest % ow);
        let r = (img * h + 2 * oy) * w + 2 * ox;
        (o, [r, r + 1, r + w, r + w + 1])
    })
}

/// `out = keep * out + c1 * x1 + bias`, per channel over rows of `c`.
#[inline(always)]
pub fn lincomb1<T: Real>(out: &mut [T], keep: &[T], x1: &[T], c1: &[T], bias: &[T], c: usize) {
    timed(
        Work::Elementwise,
        #[inline(always)]
        || {
            for (o, r1) in out.chunks_exact_mut(c).zip(x1.chunks_exact(c)) {
                for ((((o, k), x1), c1), b) in o.iter_mut().zip(keep).zip(r1).zip(c1).zip(bias) {
                    *o = *k * *o + *c1 * *x1 + *b;
                }
            }
        },
    )
}

/// `out = c1 * x1 + c2 * x2 + bias`, per channel over rows of `c`.
#[inline(always)]
pub fn lincomb2<T: Real>(out: &mut [T], x1: &[T], c1: &[T], x2: &[T], c2: &[T], bias: &[T], c: usize) {
    timed(
        Work::Elementwise,
        #[inline(always)]
        || {
            for ((o, r1), r2) in out.chunks_exact_mut(c).zip(x1.chunks_exact(c)).zip(x2.chunks_exact(c)) {
                for (((((o, x1), c1), x2), c2), b) in o.iter_mut().zip(r1).zip(c1).zip(r2).zip(c2).zip(bias) {
                    *o = *c1 * *x1 + *c2 * *x2 + *b;
                }
            }
        },
    )
}

/// The pooling layer's backward pass (and its forward-mode twin): route the gradient `d` at
/// each pooled output to its window's arg-max row where the ReLU passed it; zeros elsewhere.
#[inline(always)]
pub fn unpool<T: Real>(bl: &Block, batch: usize, (out, arg): (&[T], &[u8]), d: &[T], dy: &mut [T]) {
    timed(
        Work::Elementwise,
        #[inline(always)]
        || {
            let (c, zero) = (bl.c_out, T::default());
            if bl.h % 2 == 1 || bl.w % 2 == 1 {
                dy.fill(zero); // rows outside every window
            }
            for (o, rows) in windows(bl, batch) {
                let (d, a, k) = (&d[o * c..o * c + c], &out[o * c..o * c + c], &arg[o * c..o * c + c]);
                for (j, r) in rows.into_iter().enumerate() {
                    let dst = &mut dy[r * c..r * c + c];
                    for (((dst, d), a), k) in dst.iter_mut().zip(d).zip(a).zip(k) {
                        *dst = if *k == j as u8 && *a > zero { *d } else { zero };
                    }
                }
            }
        },
    )
}

/// [`unpool`]'s output `dy`'s per-channel sums `sum dy * xhat` and `sum dy`, from the pooled
/// gradient `d` without building `dy`: it is zero except at each window's arg-max row where
/// the ReLU passed, so the sums run over pooled outputs (in partials of [`PARTIAL_ROWS`]).
#[inline(always)]
pub fn unpool_sums<T: Real>(
    bl: &Block,
    batch: usize,
    (out, arg): (&[T], &[u8]),
    d: &[T],
    xhat: &[T],
    (dscale, dshift): (&mut [T], &mut [T]),
) {
    timed(
        Work::Elementwise,
        #[inline(always)]
        || {
            let (c, zero) = (bl.c_out, T::default());
            dscale.fill(zero);
            dshift.fill(zero);
            let (mut ps, mut pt) = (vec![zero; c], vec![zero; c]);
            let mut flush = |ps: &mut [T], pt: &mut [T]| {
                dscale.iter_mut().zip(ps.iter_mut()).for_each(|(t, p)| *t += std::mem::take(p));
                dshift.iter_mut().zip(pt.iter_mut()).for_each(|(t, p)| *t += std::mem::take(p));
            };
            for (o, rows) in windows(bl, batch) {
                if o % PARTIAL_ROWS == 0 && o > 0 {
                    flush(&mut ps, &mut pt);
                }
                let (d, a, k) = (&d[o * c..o * c + c], &out[o * c..o * c + c], &arg[o * c..o * c + c]);
                let x: [&[T]; 4] = std::array::from_fn(|j| &xhat[rows[j] * c..rows[j] * c + c]);
                let xs = x[0].iter().zip(x[1]).zip(x[2]).zip(x[3]);
                let lanes = ps.iter_mut().zip(pt.iter_mut()).zip(d.iter().zip(a)).zip(k).zip(xs);
                for ((((ps, pt), (d, a)), k), (((x0, x1), x2), x3)) in lanes {
                    // Branch-free selects, as in `unpool`.
                    let g = if *a > zero { *d } else { zero };
                    let xk = if *k == 1 { *x1 } else { *x0 };
                    let xk = if *k == 2 { *x2 } else { xk };
                    let xk = if *k == 3 { *x3 } else { xk };
                    *ps += g * xk;
                    *pt += g;
                }
            }
            flush(&mut ps, &mut pt);
        },
    )
}

/// [`unpool_sums`] from [`normalize_pool`]'s `xm` (`xhat` at each window's arg-max
/// row, the only row where `dy` is not zero): `sum dy * xhat` and `sum dy` per channel over
/// the pooled outputs, in partials of [`PARTIAL_ROWS`]; the same terms as `unpool_sums`'.
#[inline(always)]
pub fn pooled_sums<T: Real>(c: usize, out: &[T], d: &[T], xm: &[T], (dscale, dshift): (&mut [T], &mut [T])) {
    timed(
        Work::Elementwise,
        #[inline(always)]
        || {
            let zero = T::default();
            dscale.fill(zero);
            dshift.fill(zero);
            let (mut ps, mut pt) = (vec![zero; c], vec![zero; c]);
            let blocks = out.chunks(PARTIAL_ROWS * c).zip(d.chunks(PARTIAL_ROWS * c)).zip(xm.chunks(PARTIAL_ROWS * c));
            for ((bo, bd), bx) in blocks {
                for ((ro, rd), rx) in bo.chunks_exact(c).zip(bd.chunks_exact(c)).zip(bx.chunks_exact(c)) {
                    for ((((ps, pt), a), d), x) in ps.iter_mut().zip(pt.iter_mut()).zip(ro).zip(rd).zip(rx) {
                        let g = if *a > zero { *d } else { zero };
                        *ps += g * *x;
                        *pt += g;
                    }
                }
                dscale.iter_mut().zip(ps.iter_mut()).for_each(|(t, p)| *t += std::mem::take(p));
                dshift.iter_mut().zip(pt.iter_mut()).for_each(|(t, p)| *t += std::mem::take(p));
            }
        },
    )
}

/// `dz = c_dy * dy + c_x * xhat + bias` per channel, with `dy` [`unpool`]'s output for the
/// pooled gradient `d`, in one pass that never builds `dy` (the same arithmetic as
/// [`lincomb2`] on it, so the same values).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn unpool_lincomb<T: Real>(
    bl: &Block,
    batch: usize,
    (out, arg): (&[T], &[u8]),
    d: &[T],
    c_dy: &[T],
    xhat: &[T],
    c_x: &[T],
    bias: &[T],
    dz: &mut [T],
) {
    timed(
        Work::Elementwise,
        #[inline(always)]
        || {
            #[cfg(target_arch = "x86_64")]
            if bl.c_out.is_multiple_of(16)
                && let Some(f32_avx512) = crate::engine::fast_f32::F32Avx512::for_type::<T>()
            {
                let f = |x| f32_avx512.cast(x);
                let args = [f(out), f(d), f(c_dy), f(xhat), f(c_x), f(bias)];
                let dz = f32_avx512.cast_mut(dz);
                // SAFETY: AVX-512F was detected; the kernel checks its bounds.
                return unsafe { super::avx512::unpool_lincomb(bl, batch, arg, args, dz) };
            }
            unpool_lincomb_lanes(bl, batch, (out, arg), d, c_dy, xhat, c_x, bias, dz);
        },
    )
}

/// [`unpool_lincomb`] as zipped lanes for the compiler's vectoriser (any `T`, any channel
/// count); for f32 on AVX-512 the explicit kernel gives the same values.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) fn unpool_lincomb_lanes<T: Real>(
    bl: &Block,
    batch: usize,
    (out, arg): (&[T], &[u8]),
    d: &[T],
    c_dy: &[T],
    xhat: &[T],
    c_x: &[T],
    bias: &[T],
    dz: &mut [T],
) {
    let (c, zero) = (bl.c_out, T::default());
    if bl.h % 2 == 1 || bl.w % 2 == 1 {
        // Rows outside every window (dy = 0 there); the window rows are rewritten below.
        for (o, x) in dz.chunks_exact_mut(c).zip(xhat.chunks_exact(c)) {
            for (((o, x), cx), b) in o.iter_mut().zip(x).zip(c_x).zip(bias) {
                *o = *cx * *x + *b;
            }
        }
    }
    for (o, rows) in windows(bl, batch) {
        let (d, a, k) = (&d[o * c..o * c + c], &out[o * c..o * c + c], &arg[o * c..o * c + c]);
        for (j, r) in rows.into_iter().enumerate() {
            let (dst, x) = (&mut dz[r * c..r * c + c], &xhat[r * c..r * c + c]);
            let lanes = dst.iter_mut().zip(x).zip(d.iter().zip(a)).zip(k).zip(c_dy.iter().zip(c_x)).zip(bias);
            for (((((dst, x), (d, a)), k), (cdy, cx)), b) in lanes {
                let dy = if *k == j as u8 && *a > zero { *d } else { zero };
                *dst = *cdy * dy + *cx * *x + *b;
            }
        }
    }
}

/// `out = keep * dy + sum_i c_i * x_i + bias` per channel over rows of `c`, with `dy`
/// [`unpool`]'s output for the pooled gradient `d`, in one pass over the windows that never
/// builds `dy` (the Hessian-vector product's `R(dz)`).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn unpool_lincomb4<T: Real>(
    bl: &Block,
    batch: usize,
    (pooled, arg): (&[T], &[u8]),
    d: &[T],
    keep: &[T],
    xs: [&[T]; 4],
    cs: [&[T]; 4],
    bias: &[T],
    out: &mut [T],
) {
    timed(
        Work::Elementwise,
        #[inline(always)]
        || {
            let (c, zero) = (bl.c_out, T::default());
            // One row `r` of the output, given its routed gradient row (`None`: zero).
            #[inline(always)]
            fn row<T: Real>(
                o: &mut [T],
                keep: &[T],
                dy: impl Iterator<Item = T>,
                x: [&[T]; 4],
                cs: [&[T]; 4],
                bias: &[T],
            ) {
                let lanes = o.iter_mut().zip(keep).zip(bias).zip(x[0].iter().zip(cs[0])).zip(x[1].iter().zip(cs[1]));
                for ((((((o, k), b), (x0, c0)), (x1, c1)), ((x2, c2), (x3, c3))), dy) in
                    lanes.zip(x[2].iter().zip(cs[2]).zip(x[3].iter().zip(cs[3]))).zip(dy)
                {
                    *o = *k * dy + *c0 * *x0 + *c1 * *x1 + *c2 * *x2 + *c3 * *x3 + *b;
                }
            }
            let at = |r: usize| -> [&[T]; 4] { std::array::from_fn(|i| &xs[i][r * c..r * c + c]) };
            if bl.h % 2 == 1 || bl.w % 2 == 1 {
                // Rows outside every window (the routed gradient is zero there); the window
                // rows are rewritten below.
                for (r, o) in out.chunks_exact_mut(c).enumerate() {
                    row(o, keep, std::iter::repeat(zero), at(r), cs, bias);
                }
            }
            for (o, rows) in windows(bl, batch) {
                let (d, a, k) = (&d[o * c..o * c + c], &pooled[o * c..o * c + c], &arg[o * c..o * c + c]);
                for (j, r) in rows.into_iter().enumerate() {
                    let dy =
                        d.iter().zip(a).zip(k).map(|((d, a), k)| if *k == j as u8 && *a > zero { *d } else { zero });
                    row(&mut out[r * c..r * c + c], keep, dy, at(r), cs, bias);
                }
            }
        },
    )
}
