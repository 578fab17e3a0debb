//! The elementwise kernels of the engine's passes over channels-last buffers: im2col and its
//! adjoint, per-channel sums and dot products, fused per-channel linear combinations, the
//! pooling windows and the unpooling of gradients. All `#[inline(always)]`, so they are
//! compiled inside the caller's SIMD level (see [`super::simd`]).

use super::layout::Block;
use super::profile::{Work, timed};
use super::real::Real;

/// 3x3, pad 1 im2col of `x` (`[b, h, w, c]`) into `cols` (`[b * h * w, 9 * c]`).
#[inline(always)]
pub fn im2col<T: Real>(x: &[T], b: usize, h: usize, w: usize, c: usize, cols: &mut [T]) {
    timed(
        Work::Im2col,
        #[inline(always)]
        || {
            let k = 9 * c;
            for bi in 0..b {
                for yi in 0..h {
                    for xi in 0..w {
                        let row = &mut cols[((bi * h + yi) * w + xi) * k..][..k];
                        for ky in 0..3 {
                            let sy = yi as isize + ky as isize - 1;
                            for kx in 0..3 {
                                let sx = xi as isize + kx as isize - 1;
                                let at = (ky * 3 + kx) * c;
                                let inside = sy >= 0 && sy < h as isize && sx >= 0 && sx < w as isize;
                                let src = ((bi * h + sy.max(0) as usize) * w + sx.max(0) as usize) * c;
                                if c == 1 {
                                    // One channel (the first layer): a plain load, not a copy call.
                                    row[at] = if inside { x[src] } else { T::default() };
                                } else if inside {
                                    row[at..at + c].copy_from_slice(&x[src..src + c]);
                                } else {
                                    row[at..at + c].fill(T::default());
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// The adjoint of [`im2col`]: scatter-add `cols` back into `dx` (`[b, h, w, c]`).
#[inline(always)]
pub fn col2im<T: Real>(cols: &[T], b: usize, h: usize, w: usize, c: usize, dx: &mut [T]) {
    timed(
        Work::Im2col,
        #[inline(always)]
        || {
            let k = 9 * c;
            dx[..b * h * w * c].fill(T::default());
            for bi in 0..b {
                for yi in 0..h {
                    for xi in 0..w {
                        let row = &cols[((bi * h + yi) * w + xi) * k..][..k];
                        for ky in 0..3 {
                            let sy = yi as isize + ky as isize - 1;
                            if sy < 0 || sy >= h as isize {
                                continue;
                            }
                            for kx in 0..3 {
                                let sx = xi as isize + kx as isize - 1;
                                if sx < 0 || sx >= w as isize {
                                    continue;
                                }
                                let dst = &mut dx[((bi * h + sy as usize) * w + sx as usize) * c..][..c];
                                for (d, s) in dst.iter_mut().zip(&row[(ky * 3 + kx) * c..][..c]) {
                                    *d += *s;
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// Rows per partial sum of [`channel_sums`] and [`channel_dots`]: each output adds up
/// partial sums of this many rows, so an f32 sum over the 58,800 rows of a 75-image first layer
/// accumulates about 128 + 460 roundings instead of 58,800: the f32 meta-gradient's largest
/// norm-relative error at that shape fell from 7.1e-5 (batch-norm scale of the first block) to
/// 1.7e-6, with the same additions (`fewshot-meta`'s test
/// `f32_meta_gradients_stay_close_to_f64_at_the_paper_shape`).
pub(super) const PARTIAL_ROWS: usize = 128;

/// Per-channel sums of `x` (`[n, c]`) into `out` (`[c]`), by partial sums of
/// [`PARTIAL_ROWS`] rows.
#[inline(always)]
pub fn channel_sums<T: Real>(x: &[T], c: usize, out: &mut [T]) {
    timed(
        Work::Elementwise,
        #[inline(always)]
        || {
            out.fill(T::default());
            let mut partial = vec![T::default(); c];
            for block in x.chunks(PARTIAL_ROWS * c) {
                partial.fill(T::default());
                for row in block.chunks_exact(c) {
                    for (p, v) in partial.iter_mut().zip(row) {
                        *p += *v;
                    }
                }
                out.iter_mut().zip(&partial).for_each(|(o, p)| *o += *p);
            }
        },
    )
}

/// Per-channel sums of `x * y`, by partial sums like [`channel_sums`].
#[inline(always)]
pub fn channel_dots<T: Real>(x: &[T], y: &[T], c: usize, out: &mut [T]) {
    timed(
        Work::Elementwise,
        #[inline(always)]
        || {
            out.fill(T::default());
            let mut partial = vec![T::default(); c];
            for (bx, by) in x.chunks(PARTIAL_ROWS * c).zip(y.chunks(PARTIAL_ROWS * c)) {
                partial.fill(T::default());
                for (rx, ry) in bx.chunks_exact(c).zip(by.chunks_exact(c)) {
                    for ((p, a), b) in partial.iter_mut().zip(rx).zip(ry) {
                        *p += *a * *b;
                    }
                }
                out.iter_mut().zip(&partial).for_each(|(o, p)| *o += *p);
            }
        },
    )
}

/// Per-channel mean and sum of squared deviations of rows of `c` values, added a chunk at a
/// time (the forward pass feeds it each chunk of the conv output while the chunk is still in
/// cache, so the batch-norm statistics cost no pass of their own over the block's largest
/// buffer). Each block of [`PARTIAL_ROWS`] rows is summed, then its squared deviations from
/// its own mean (the block stays in L1 between the two), and the blocks merge by Chan et al.'s
/// pairwise update `M2 = M2_a + M2_b + delta^2 n_a n_b / n`: as accurate as summing the whole
/// buffer by [`channel_sums`] and then its squared deviations from that mean, in one read.
#[derive(Debug, Clone)]
pub struct Moments<T: Real> {
    c: usize,
    n: usize,
    mean: Vec<T>,
    m2: Vec<T>,
    block_mean: Vec<T>,
    block_m2: Vec<T>,
}

impl<T: Real> Moments<T> {
    /// No rows yet, `c` channels.
    pub fn new(c: usize) -> Self {
        let zeros = vec![T::default(); c];
        Self { c, n: 0, mean: zeros.clone(), m2: zeros.clone(), block_mean: zeros.clone(), block_m2: zeros }
    }

    /// Adds the rows of `x` (`[rows, c]`).
    #[inline(always)]
    pub fn add(&mut self, x: &[T]) {
        timed(
            Work::Elementwise,
            #[inline(always)]
            || {
                let c = self.c;
                for block in x.chunks(PARTIAL_ROWS * c) {
                    let nb = block.len() / c;
                    if nb == 0 {
                        continue;
                    }
                    let (bm, bq) = (&mut self.block_mean, &mut self.block_m2);
                    bm.fill(T::default());
                    bq.fill(T::default());
                    for row in block.chunks_exact(c) {
                        bm.iter_mut().zip(row).for_each(|(m, v)| *m += *v);
                    }
                    let inv = T::from_f64(1.0 / nb as f64);
                    bm.iter_mut().for_each(|m| *m = *m * inv);
                    for row in block.chunks_exact(c) {
                        for ((q, v), m) in bq.iter_mut().zip(row).zip(bm.iter()) {
                            let d = *v - *m;
                            *q += d * d;
                        }
                    }
                    let n = self.n + nb;
                    let (wb, wab) =
                        (T::from_f64(nb as f64 / n as f64), T::from_f64(self.n as f64 * nb as f64 / n as f64));
                    for (((m, q), m_b), q_b) in
                        self.mean.iter_mut().zip(self.m2.iter_mut()).zip(bm.iter()).zip(bq.iter())
                    {
                        let delta = *m_b - *m;
                        *m += delta * wb;
                        *q += *q_b + delta * delta * wab;
                    }
                    self.n = n;
                }
            },
        )
    }

    /// Rows added so far.
    pub fn rows(&self) -> usize {
        self.n
    }

    /// `(mean, sum of squared deviations from it)`, per channel.
    pub fn finish(self) -> (Vec<T>, Vec<T>) {
        (self.mean, self.m2)
    }
}

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
                && std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()
                && std::arch::is_x86_feature_detected!("avx512f")
            {
                // SAFETY: T is f32 (checked just above).
                let f = |x: &[T]| unsafe { std::slice::from_raw_parts(x.as_ptr().cast::<f32>(), x.len()) };
                let dz = unsafe { std::slice::from_raw_parts_mut(dz.as_mut_ptr().cast::<f32>(), dz.len()) };
                let args = [f(out), f(d), f(c_dy), f(xhat), f(c_x), f(bias)];
                // SAFETY: AVX-512F was detected; the kernel checks its bounds.
                return unsafe { avx512::unpool_lincomb(bl, batch, arg, args, dz) };
            }
            unpool_lincomb_lanes(bl, batch, (out, arg), d, c_dy, xhat, c_x, bias, dz);
        },
    )
}

/// [`unpool_lincomb`] as zipped lanes for the compiler's vectoriser (any `T`, any channel
/// count); for f32 on AVX-512 the explicit kernel gives the same values.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn unpool_lincomb_lanes<T: Real>(
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

/// Index of the first maximum of `row`.
#[inline(always)]
pub fn argmax<T: Real>(row: &[T]) -> usize {
    let mut best = 0;
    for (j, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = j;
        }
    }
    best
}

/// The elementwise kernels whose zipped-lane form the compiler did not vectorise well
/// (perf at 5w1s15q, first order: [`unpool_lincomb`] was 9% of a step), in AVX-512 for f32
/// and channel counts that are multiples of 16, with the same operations in the same order
/// as their lane forms, so the same values.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Block, windows};
    use std::arch::x86_64::*;

    /// [`super::unpool_lincomb`] for f32; `[out, d, c_dy, xhat, c_x, bias]`.
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn unpool_lincomb(
        bl: &Block,
        batch: usize,
        arg: &[u8],
        [out, d, c_dy, xhat, c_x, bias]: [&[f32]; 6],
        dz: &mut [f32],
    ) {
        let c = bl.c_out;
        let (rows_n, pooled_n) = (batch * bl.pixels() * c, batch * bl.pooled() * c);
        assert!(c.is_multiple_of(16) && c_dy.len() >= c && c_x.len() >= c && bias.len() >= c);
        assert!(xhat.len() >= rows_n && dz.len() >= rows_n);
        assert!(out.len() >= pooled_n && d.len() >= pooled_n && arg.len() >= pooled_n);
        // SAFETY (every load and store below): `ch + 16 <= c`, window rows are below
        // `batch * h * w` and pooled rows below `batch * oh * ow`, as asserted above.
        let ld = |p: &[f32], i: usize| unsafe { _mm512_loadu_ps(p.as_ptr().add(i)) };
        if bl.h % 2 == 1 || bl.w % 2 == 1 {
            // Rows outside every window (dy = 0 there); the window rows are rewritten below.
            for r in 0..batch * bl.pixels() {
                for ch in (0..c).step_by(16) {
                    let v = _mm512_add_ps(_mm512_mul_ps(ld(c_x, ch), ld(xhat, r * c + ch)), ld(bias, ch));
                    unsafe { _mm512_storeu_ps(dz.as_mut_ptr().add(r * c + ch), v) };
                }
            }
        }
        let zero = _mm512_setzero_ps();
        for (o, rows) in windows(bl, batch) {
            for ch in (0..c).step_by(16) {
                let (cdy, cx, b) = (ld(c_dy, ch), ld(c_x, ch), ld(bias, ch));
                let passed = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(ld(out, o * c + ch), zero);
                let g = _mm512_maskz_mov_ps(passed, ld(d, o * c + ch));
                let k = _mm512_cvtepu8_epi32(unsafe { _mm_loadu_si128(arg.as_ptr().add(o * c + ch).cast()) });
                for (j, r) in rows.into_iter().enumerate() {
                    let at = _mm512_cmpeq_epi32_mask(k, _mm512_set1_epi32(j as i32));
                    let dy = _mm512_maskz_mov_ps(at, g);
                    let x = ld(xhat, r * c + ch);
                    // (c_dy * dy + c_x * x) + bias, as the lane form rounds it.
                    let v = _mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(cdy, dy), _mm512_mul_ps(cx, x)), b);
                    unsafe { _mm512_storeu_ps(dz.as_mut_ptr().add(r * c + ch), v) };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values with a large common offset per channel (as a conv output has), so
    /// a one-pass `sum x^2 - n mean^2` would lose most of its digits in f32.
    fn values(rows: usize, c: usize) -> Vec<f64> {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        (0..rows * c)
            .map(|i| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let u = (state >> 11) as f64 / (1u64 << 53) as f64;
                50.0 + (i % c) as f64 + (u - 0.5) * 3.0
            })
            .collect()
    }

    /// Mean and sum of squared deviations by two passes in f64 over the whole buffer.
    fn reference(x: &[f64], c: usize) -> (Vec<f64>, Vec<f64>) {
        let n = (x.len() / c) as f64;
        let mean: Vec<f64> = (0..c).map(|ch| x.iter().skip(ch).step_by(c).sum::<f64>() / n).collect();
        let m2 = (0..c).map(|ch| x.iter().skip(ch).step_by(c).map(|v| (v - mean[ch]).powi(2)).sum()).collect();
        (mean, m2)
    }

    #[test]
    fn unpool_lincomb_kernel_gives_the_lane_forms_values() {
        // Even and odd sides (odd ones have rows outside every window), 32 channels.
        for (h, w) in [(6, 6), (7, 5)] {
            let (batch, c) = (3, 32);
            let bl = Block { h, w, c_in: 1, c_out: c, oh: h / 2, ow: w / 2, weight: 0, scale: 0, shift: 0 };
            let (rows, pooled) = (batch * h * w * c, batch * bl.pooled() * c);
            let v = |n: usize, seed: usize| -> Vec<f32> {
                values(n / 16 + 1, 16).iter().skip(seed).take(n).map(|x| (*x as f32 - 58.0) / 7.0).collect()
            };
            let (xhat, d, out) = (v(rows, 0), v(pooled, 1), v(pooled, 2));
            let arg: Vec<u8> = (0..pooled).map(|i| ((i * 7 + i / 5) % 4) as u8).collect();
            let (c_dy, c_x, bias) = (v(c, 3), v(c, 4), v(c, 5));
            assert!(out.iter().any(|a| *a > 0.0) && out.iter().any(|a| *a <= 0.0));
            let mut fast = vec![f32::NAN; rows];
            unpool_lincomb(&bl, batch, (&out, &arg), &d, &c_dy, &xhat, &c_x, &bias, &mut fast);
            let mut lanes = vec![f32::NAN; rows];
            unpool_lincomb_lanes(&bl, batch, (&out, &arg), &d, &c_dy, &xhat, &c_x, &bias, &mut lanes);
            let same = fast.iter().zip(&lanes).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{h}x{w}: the AVX-512 kernel differs from the lane form");
        }
    }

    #[test]
    fn moments_match_two_passes_whatever_the_chunks() {
        let (rows, c) = (1000, 16);
        let x = values(rows, c);
        let (mean, m2) = reference(&x, c);
        // Chunks that straddle the partial-sum blocks, a single row, and the whole buffer.
        for chunk_rows in [1, 7, 128, 300, rows] {
            let mut m = Moments::<f64>::new(c);
            x.chunks(chunk_rows * c).for_each(|chunk| m.add(chunk));
            assert_eq!(m.rows(), rows);
            let (got_mean, got_m2) = m.finish();
            for ch in 0..c {
                assert!((got_mean[ch] - mean[ch]).abs() <= 1e-12 * mean[ch].abs(), "mean of channel {ch}");
                assert!(
                    (got_m2[ch] - m2[ch]).abs() <= 1e-11 * m2[ch],
                    "m2 of channel {ch}: {} vs {}",
                    got_m2[ch],
                    m2[ch]
                );
            }
        }
        // In f32 the deviations survive the offset: within 1e-5 of the f64 figure.
        let x32: Vec<f32> = x.iter().map(|v| *v as f32).collect();
        let mut m = Moments::<f32>::new(c);
        x32.chunks(300 * c).for_each(|chunk| m.add(chunk));
        let (_, got_m2) = m.finish();
        for ch in 0..c {
            assert!((got_m2[ch] as f64 - m2[ch]).abs() <= 1e-5 * m2[ch], "f32 m2 of channel {ch}");
        }
    }
}
