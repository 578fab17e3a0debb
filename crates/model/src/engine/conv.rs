//! A block's 3x3 convolution and its two derivatives, computed a few images at a time.
//!
//! Each is im2col plus a matrix product, but the im2col matrix (`[b * h * w, 9 * c_in]`, nine
//! times the input) is never built for the whole batch: a chunk of images is expanded into a
//! small buffer that stays in L2 and is consumed at once, and the backward pass and the
//! Hessian-vector product expand it again from the block's input (kept anyway) instead of
//! reading a stored copy. At 20 images the second block's matrix is 9 MB: written once and read
//! three or four times per pass, it went through memory; a chunk is at most
//! [`CHUNK_VALUES`] values. Images are independent in im2col and col2im, so chunks are too.
//!
//! Where they apply, two other algorithms replace im2col: Winograd's F(2x2, 3x3) for the
//! multi-channel blocks ([`winograd`]) and, for the first block (one input channel) in f32 on
//! AVX-512, kernels that compute the convolution and its weight gradient straight from the
//! images ([`direct`]).

use super::buffer::Buffer;
use super::direct;
use super::gemm::{Out, matmul_nn, matmul_nt, matmul_tn};
use super::kernels::{col2im, im2col};
use super::layout::Block;
use super::profile::{Work, timed};
use super::real::Real;
use super::winograd;
use std::sync::atomic::{AtomicU8, Ordering};

/// How the engine computes the convolutions of blocks with more than one input channel (the
/// forward convolution, the input gradient and the weight gradient). The first block's (one
/// input channel) are [`direct`] kernels in f32 on AVX-512, im2col products otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvAlgorithm {
    /// im2col and one matrix product per chunk of images.
    Im2col = 0,
    /// Winograd's F(2x2, 3x3): 16 products with 2.25x fewer multiply-adds (see `winograd.rs`).
    Winograd = 1,
}

/// The process-wide [`ConvAlgorithm`] (Winograd unless set).
static ALGORITHM: AtomicU8 = AtomicU8::new(ConvAlgorithm::Winograd as u8);

/// Sets the [`ConvAlgorithm`] of every later pass in this process (a benchmark's switch: both
/// compute the same convolution, to rounding).
pub fn set_conv_algorithm(algorithm: ConvAlgorithm) {
    ALGORITHM.store(algorithm as u8, Ordering::Relaxed);
}

/// The current [`ConvAlgorithm`].
pub fn conv_algorithm() -> ConvAlgorithm {
    if ALGORITHM.load(Ordering::Relaxed) == ConvAlgorithm::Im2col as u8 {
        ConvAlgorithm::Im2col
    } else {
        ConvAlgorithm::Winograd
    }
}

/// The smallest image side whose convolutions go through Winograd. At 80 images of 64
/// channels (a 5-way task with 15 queries per class), forward and input gradient together:
/// 14x14 19.5 -> 12.8 ms, 7x7 5.0 -> 4.1 ms, but 3x3 0.87 -> 1.09 ms (its 2x2 tiles cover
/// 4x4, and the transforms cost more than the 1.27x fewer multiply-adds save).
const WINOGRAD_MIN_SIDE: usize = 4;

/// Whether block `bl`'s convolutions go through Winograd.
#[inline(always)]
fn winograd(bl: &Block) -> bool {
    bl.c_in > 1 && bl.h.min(bl.w) >= WINOGRAD_MIN_SIDE && conv_algorithm() == ConvAlgorithm::Winograd
}

/// The most values of an im2col chunk (256 KB in f32), unless one image alone is larger
/// (the second block's: 196 x 576).
const CHUNK_VALUES: usize = 1 << 16;

/// Images per chunk for block `bl` (at least one).
#[inline(always)]
fn chunk_images(bl: &Block) -> usize {
    (CHUNK_VALUES / (bl.pixels() * bl.k())).max(1)
}

/// The chunks of a batch: `(first image, images)`.
#[inline(always)]
fn chunks(bl: &Block, batch: usize) -> impl Iterator<Item = (usize, usize)> {
    let step = chunk_images(bl);
    (0..batch).step_by(step).map(move |i0| (i0, step.min(batch - i0)))
}

/// Calls `f(first_row, rows, cols)` for each chunk of images, `cols` being the chunk's im2col
/// matrix (`[rows, 9 * c_in]`) and `first_row` its first row in the batch's `[b * h * w, _]`
/// layout.
#[inline(always)]
fn for_each_expanded<T: Real>(bl: &Block, batch: usize, x: &[T], mut f: impl FnMut(usize, usize, &[T])) {
    let (px, k) = (bl.pixels(), bl.k());
    let mut cols = Buffer::scratch(chunk_images(bl).min(batch) * px * k);
    for (i0, imgs) in chunks(bl, batch) {
        let rows = imgs * px;
        im2col(&x[i0 * px * bl.c_in..], imgs, bl.h, bl.w, bl.c_in, &mut cols[..rows * k]);
        f(i0 * px, rows, &cols[..rows * k]);
    }
}

/// `z = conv(x, w)` (or `+=`): `x` is `[batch, h, w, c_in]`, `w` the `[c_out, 9 * c_in]`
/// weights, `z` `[batch * h * w, c_out]`.
#[inline(always)]
pub(crate) fn forward<T: Real>(bl: &Block, batch: usize, x: &[T], w: &[T], z: &mut [T], out: Out) {
    forward_with(bl, batch, x, w, z, out, |_| {});
}

/// [`forward`], calling `on_chunk` with each chunk of images' finished rows of `z` (in order)
/// while they are still in cache: the forward pass's batch-norm statistics.
#[inline(always)]
pub(crate) fn forward_with<T: Real>(
    bl: &Block,
    batch: usize,
    x: &[T],
    w: &[T],
    z: &mut [T],
    out: Out,
    on_chunk: impl FnMut(&[T]),
) {
    if winograd(bl) {
        let shape = winograd::Shape { h: bl.h, w: bl.w, c_in: bl.c_in, c_out: bl.c_out };
        let u = winograd::centred_filter(w, bl.c_out, bl.c_in, &x[..batch * bl.pixels() * bl.c_in]);
        return winograd::conv_with(&shape, batch, &[(x, &u)], z, out, on_chunk);
    }
    if direct::applies::<T>(bl.c_in, bl.c_out) {
        return forward_direct(bl, batch, x, w, z, out, on_chunk);
    }
    forward_im2col(bl, batch, x, w, z, out, on_chunk)
}

/// [`forward_with`] by [`direct`] (the first block, f32 on AVX-512), an image at a time.
#[inline(always)]
fn forward_direct<T: Real>(
    bl: &Block,
    batch: usize,
    x: &[T],
    w: &[T],
    z: &mut [T],
    out: Out,
    mut on_chunk: impl FnMut(&[T]),
) {
    let (px, c) = (bl.pixels(), bl.c_out);
    for i0 in 0..batch {
        let zc = &mut z[i0 * px * c..(i0 + 1) * px * c];
        timed(
            Work::Gemm,
            #[inline(always)]
            || direct::conv(&x[i0 * px..(i0 + 1) * px], 1, [bl.h, bl.w], w, c, zc, out),
        );
        on_chunk(zc);
    }
}

/// [`forward_with`] by im2col.
#[inline(always)]
fn forward_im2col<T: Real>(
    bl: &Block,
    batch: usize,
    x: &[T],
    w: &[T],
    z: &mut [T],
    out: Out,
    mut on_chunk: impl FnMut(&[T]),
) {
    let (k, c) = (bl.k(), bl.c_out);
    for_each_expanded(
        bl,
        batch,
        x,
        #[inline(always)]
        |r0, rows, cols| {
            let zc = &mut z[r0 * c..(r0 + rows) * c];
            matmul_nt(zc, cols, w, [rows, c, k], out);
            on_chunk(zc);
        },
    );
}

/// Rows (images x pixels) from which [`weight_gradient`] computes the transposed product.
const TRANSPOSED_ROWS: usize = 784;

/// `gw = dz^T im2col(x)` (or `+=`): the weight gradient, `[c_out, 9 * c_in]`, for the
/// conv-output gradient `dz` (`[batch * h * w, c_out]`); the chunks' products add up.
///
/// With many rows and more than one input channel it computes `gw^T = im2col(x)^T dz`
/// instead and transposes it once at the end: the gemm crate runs that shape (`[9 c_in, c_out]`
/// output) 14-26% faster at these sizes (`examples/gemm_probe.rs`), which pays for the
/// transpose from about [`TRANSPOSED_ROWS`] rows. (The first block's product, one input
/// channel, has its own kernel; see `super::gemm`.)
#[inline(always)]
pub(crate) fn weight_gradient<T: Real>(bl: &Block, batch: usize, x: &[T], dz: &[T], gw: &mut [T], out: Out) {
    if winograd(bl) {
        let shape = winograd::Shape { h: bl.h, w: bl.w, c_in: bl.c_in, c_out: bl.c_out };
        return winograd::weight_gradient(&shape, batch, x, dz, gw, out);
    }
    if direct::applies::<T>(bl.c_in, bl.c_out) {
        return timed(
            Work::Gemm,
            #[inline(always)]
            || direct::weight_gradient(x, batch, [bl.h, bl.w], dz, bl.c_out, gw, out),
        );
    }
    weight_gradient_im2col(bl, batch, x, dz, gw, out)
}

/// [`weight_gradient`] by im2col.
#[inline(always)]
fn weight_gradient_im2col<T: Real>(bl: &Block, batch: usize, x: &[T], dz: &[T], gw: &mut [T], out: Out) {
    let (k, c) = (bl.k(), bl.c_out);
    if bl.c_in > 1 && batch * bl.pixels() >= TRANSPOSED_ROWS {
        let mut gt = Buffer::scratch(k * c); // [k, c_out]
        for_each_expanded(
            bl,
            batch,
            x,
            #[inline(always)]
            |r0, rows, cols| {
                let first = if r0 == 0 { Out::Set } else { Out::Add };
                matmul_tn(&mut gt, cols, &dz[r0 * c..(r0 + rows) * c], [k, c, rows], first);
            },
        );
        transpose_into(&gt, gw, [c, k], out);
        return;
    }
    for_each_expanded(
        bl,
        batch,
        x,
        #[inline(always)]
        |r0, rows, cols| {
            let first = if r0 == 0 { out } else { Out::Add };
            matmul_tn(gw, &dz[r0 * c..(r0 + rows) * c], cols, [c, k, rows], first);
        },
    );
}

/// `gw = gt^T` (or `+=`): `gt` is `[k, c]`, `gw` `[c, k]`.
#[inline(always)]
fn transpose_into<T: Real>(gt: &[T], gw: &mut [T], [c, k]: [usize; 2], out: Out) {
    for (o, g) in gw[..c * k].chunks_exact_mut(k).enumerate() {
        let column = gt.iter().skip(o).step_by(c);
        match out {
            Out::Set => g.iter_mut().zip(column).for_each(|(g, t)| *g = *t),
            Out::Add => g.iter_mut().zip(column).for_each(|(g, t)| *g += *t),
        }
    }
}

/// The weight gradient `gw` (overwritten) and, with `dx`, the input gradient of block `bl`
/// for a conv-output gradient that `produce(first_image, images, dz)` writes a chunk of
/// images at a time (`dz`: `[images * h * w, c_out]`): each chunk is consumed by both while it
/// is in cache, so the gradient pass's `dz` never goes through memory whole (it was written
/// once and read two or three times: by the weight gradient, the input gradient and the
/// centring's border sums). The same values as [`weight_gradient`] and [`input_gradient`] of
/// the whole `dz`, whose chunks these are.
#[inline(always)]
pub(crate) fn gradients_chunked<T: Real>(
    bl: &Block,
    batch: usize,
    x: &[T],
    w: &[T],
    gw: &mut [T],
    mut dx: Option<&mut [T]>,
    mut produce: impl FnMut(usize, usize, &mut [T]),
) {
    let (px, c, c_in) = (bl.pixels(), bl.c_out, bl.c_in);
    if winograd(bl) {
        let shape = winograd::Shape { h: bl.h, w: bl.w, c_in, c_out: c };
        let adjoint = winograd::Shape { h: bl.h, w: bl.w, c_in: c, c_out: c_in };
        let step = winograd::chunk_images(&shape, batch);
        let mut g = winograd::WeightGradient::new(&shape, batch, x);
        let u = dx.is_some().then(|| winograd::filter(w, c, c_in, true));
        let mut dz = Buffer::scratch(step * px * c);
        for i0 in (0..batch).step_by(step) {
            let imgs = step.min(batch - i0);
            let dzc = &mut dz[..imgs * px * c];
            produce(i0, imgs, dzc);
            g.add(&x[i0 * px * c_in..(i0 + imgs) * px * c_in], dzc, imgs);
            if let (Some(dx), Some(u)) = (dx.as_deref_mut(), &u) {
                let dxc = &mut dx[i0 * px * c_in..(i0 + imgs) * px * c_in];
                winograd::conv(&adjoint, imgs, &[(&dzc[..], u)], dxc, Out::Set);
            }
        }
        g.finish(gw, Out::Set);
        return;
    }
    if dx.is_none() && direct::applies::<T>(c_in, c) {
        // The first block: no input gradient, and the weight gradient reads the images.
        let step = chunk_images(bl).min(batch);
        let mut dz = Buffer::scratch(step * px * c);
        for i0 in (0..batch).step_by(step) {
            let imgs = step.min(batch - i0);
            let dzc = &mut dz[..imgs * px * c];
            produce(i0, imgs, dzc);
            let first = if i0 == 0 { Out::Set } else { Out::Add };
            let xc = &x[i0 * px..(i0 + imgs) * px];
            timed(
                Work::Gemm,
                #[inline(always)]
                || direct::weight_gradient(xc, imgs, [bl.h, bl.w], dzc, c, gw, first),
            );
        }
        return;
    }
    let k = bl.k();
    let transposed = c_in > 1 && batch * px >= TRANSPOSED_ROWS;
    let mut gt = if transposed { Buffer::scratch(k * c) } else { Buffer::empty() }; // [k, c_out]
    let most = chunk_images(bl).min(batch) * px;
    let mut dz = Buffer::scratch(most * c);
    let mut dcols = if dx.is_some() { Buffer::scratch(most * k) } else { Buffer::empty() };
    for_each_expanded(
        bl,
        batch,
        x,
        #[inline(always)]
        |r0, rows, cols| {
            let (i0, imgs) = (r0 / px, rows / px);
            let dzc = &mut dz[..rows * c];
            produce(i0, imgs, dzc);
            let first = if r0 == 0 { Out::Set } else { Out::Add };
            if transposed {
                matmul_tn(&mut gt, cols, dzc, [k, c, rows], first);
            } else {
                matmul_tn(gw, dzc, cols, [c, k, rows], first);
            }
            if let Some(dx) = dx.as_deref_mut() {
                matmul_nn(&mut dcols[..rows * k], dzc, w, [rows, k, c], Out::Set);
                let dxc = &mut dx[i0 * px * c_in..(i0 + imgs) * px * c_in];
                col2im(&dcols[..rows * k], imgs, bl.h, bl.w, c_in, dxc);
            }
        },
    );
    if transposed {
        transpose_into(&gt, gw, [c, k], Out::Set);
    }
}

/// `dx = col2im(sum_j dz_j w_j)`: the input gradient, `[batch, h, w, c_in]`, of one or more
/// (conv-output gradient, weights) terms (the Hessian-vector product has two).
#[inline(always)]
pub(crate) fn input_gradient<T: Real>(bl: &Block, batch: usize, terms: &[(&[T], &[T])], dx: &mut [T]) {
    if winograd(bl) {
        // The adjoint convolution: of dz (c_out channels) with the rotated, transposed taps.
        let shape = winograd::Shape { h: bl.h, w: bl.w, c_in: bl.c_out, c_out: bl.c_in };
        let filters: Vec<_> = terms.iter().map(|(_, w)| winograd::filter(w, bl.c_out, bl.c_in, true)).collect();
        let terms: Vec<_> = terms.iter().zip(&filters).map(|((dz, _), u)| (*dz, u)).collect();
        return winograd::conv(&shape, batch, &terms, dx, Out::Set);
    }
    input_gradient_im2col(bl, batch, terms, dx)
}

/// [`input_gradient`] by im2col.
#[inline(always)]
fn input_gradient_im2col<T: Real>(bl: &Block, batch: usize, terms: &[(&[T], &[T])], dx: &mut [T]) {
    let (px, k, c) = (bl.pixels(), bl.k(), bl.c_out);
    let mut dcols = Buffer::scratch(chunk_images(bl).min(batch) * px * k);
    for (i0, imgs) in chunks(bl, batch) {
        let rows = imgs * px;
        for (j, (dz, w)) in terms.iter().enumerate() {
            let out = if j == 0 { Out::Set } else { Out::Add };
            matmul_nn(&mut dcols[..rows * k], &dz[i0 * px * c..(i0 * px + rows) * c], w, [rows, k, c], out);
        }
        col2im(&dcols[..rows * k], imgs, bl.h, bl.w, bl.c_in, &mut dx[i0 * px * bl.c_in..(i0 + imgs) * px * bl.c_in]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random(len: usize, rng: &mut impl Rng) -> Vec<f64> {
        (0..len).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    fn max_diff(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max)
    }

    /// Winograd's forward convolution and input gradient (one and two terms, Set and Add)
    /// equal the im2col path's in f64, at even, odd and tiny sizes and unequal channel counts.
    #[test]
    fn winograd_equals_im2col_in_f64() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for (h, w, c_in, c_out, batch) in [
            (14, 14, 3, 5, 3),
            (7, 7, 4, 2, 2),
            (3, 3, 2, 3, 5),
            (5, 6, 3, 4, 1),
            (1, 1, 2, 2, 2),
            (2, 3, 64, 64, 2),
            (6, 5, 32, 16, 3),
        ] {
            let bl = Block { h, w, c_in, c_out, oh: h / 2, ow: w / 2, weight: 0, scale: 0, shift: 0 };
            // Positive inputs with a mean, like a block's (ReLU outputs), so the centring matters.
            let x: Vec<f64> = random(batch * h * w * c_in, &mut rng).iter().map(|v| v + 1.5).collect();
            let (w1, w2) = (random(9 * c_in * c_out, &mut rng), random(9 * c_in * c_out, &mut rng));
            let start = random(batch * h * w * c_out, &mut rng);
            for out in [Out::Set, Out::Add] {
                let (mut direct, mut fast) = (start.clone(), start.clone());
                forward_im2col(&bl, batch, &x, &w1, &mut direct, out, |_| {});
                let shape = winograd::Shape { h, w, c_in, c_out };
                let u = winograd::centred_filter(&w1, c_out, c_in, &x);
                winograd::conv(&shape, batch, &[(&x, &u)], &mut fast, out);
                let scale = direct.iter().fold(0.0f64, |m, v| m.max(v.abs()));
                assert!(
                    max_diff(&direct, &fast) <= 1e-13 * scale,
                    "forward {h}x{w} {c_in}->{c_out} {out:?}: {}",
                    max_diff(&direct, &fast)
                );
            }
            let (dz1, dz2) = (random(batch * h * w * c_out, &mut rng), random(batch * h * w * c_out, &mut rng));
            let shape = winograd::Shape { h, w, c_in, c_out };
            for out in [Out::Set, Out::Add] {
                let start = random(9 * c_in * c_out, &mut rng);
                let (mut direct, mut fast) = (start.clone(), start.clone());
                weight_gradient_im2col(&bl, batch, &x, &dz1, &mut direct, out);
                winograd::weight_gradient(&shape, batch, &x, &dz1, &mut fast, out);
                let scale = direct.iter().fold(0.0f64, |m, v| m.max(v.abs()));
                let diff = max_diff(&direct, &fast);
                assert!(diff <= 1e-13 * scale, "weight gradient {h}x{w} {c_in}->{c_out} {out:?}: {diff}");
            }
            for terms in [vec![(&dz1[..], &w1[..])], vec![(&dz1[..], &w1[..]), (&dz2[..], &w2[..])]] {
                let (mut direct, mut fast) = (vec![0.0; batch * h * w * c_in], vec![9.0; batch * h * w * c_in]);
                input_gradient_im2col(&bl, batch, &terms, &mut direct);
                let shape = winograd::Shape { h, w, c_in: c_out, c_out: c_in };
                let filters: Vec<_> = terms.iter().map(|(_, w)| winograd::filter(w, c_out, c_in, true)).collect();
                let wterms: Vec<_> = terms.iter().zip(&filters).map(|((dz, _), u)| (*dz, u)).collect();
                winograd::conv(&shape, batch, &wterms, &mut fast, Out::Set);
                let scale = direct.iter().fold(0.0f64, |m, v| m.max(v.abs()));
                assert!(
                    max_diff(&direct, &fast) <= 1e-13 * scale,
                    "input gradient {h}x{w} {c_in}->{c_out}, {} terms: {}",
                    terms.len(),
                    max_diff(&direct, &fast)
                );
            }
        }
    }

    /// The first block's direct kernels (f32, AVX-512) equal the im2col path in f64 to f32
    /// rounding: forward (Set and Add) and weight gradient, at the net's 28x28 and at sides
    /// shorter than, equal to and not a multiple of the forward kernel's group of 8 outputs,
    /// with blocks of rows that span several images in the weight gradient.
    #[test]
    fn direct_first_block_equals_im2col() {
        if !direct::applies::<f32>(1, 16) {
            eprintln!("no AVX-512F: the direct kernels do not run on this CPU");
            return;
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(13);
        for (h, w, c_out, batch) in
            [(28, 28, 64, 3), (5, 7, 16, 9), (8, 8, 32, 2), (3, 17, 16, 4), (1, 1, 16, 5), (9, 3, 48, 1)]
        {
            let bl = Block { h, w, c_in: 1, c_out, oh: h / 2, ow: w / 2, weight: 0, scale: 0, shift: 0 };
            let x: Vec<f64> = random(batch * h * w, &mut rng).iter().map(|v| v + 0.5).collect();
            let wt = random(9 * c_out, &mut rng);
            let dz = random(batch * h * w * c_out, &mut rng);
            let f32s = |v: &[f64]| v.iter().map(|&v| v as f32).collect::<Vec<f32>>();
            let (x32, w32, dz32) = (f32s(&x), f32s(&wt), f32s(&dz));
            let close = |exact: &[f64], got: &[f32], tol: f64, what: &str| {
                let scale = exact.iter().fold(0.0f64, |m, v| m.max(v.abs()));
                let diff = exact.iter().zip(got).map(|(a, b)| (a - *b as f64).abs()).fold(0.0, f64::max);
                assert!(diff <= tol * scale, "{what} {h}x{w} -> {c_out}, {batch} images: {diff} of {scale}");
            };
            for out in [Out::Set, Out::Add] {
                let start = random(batch * h * w * c_out, &mut rng);
                let mut exact = start.clone();
                forward_im2col(&bl, batch, &x, &wt, &mut exact, out, |_| {});
                let mut got = f32s(&start);
                let mut rows = 0;
                forward_with(&bl, batch, &x32, &w32, &mut got, out, |zc| rows += zc.len() / c_out);
                assert_eq!(rows, batch * h * w, "every row handed to on_chunk once");
                close(&exact, &got, 1e-6, &format!("forward {out:?}"));
                let start = random(9 * c_out, &mut rng);
                let mut exact = start.clone();
                weight_gradient_im2col(&bl, batch, &x, &dz, &mut exact, out);
                let mut got = f32s(&start);
                weight_gradient(&bl, batch, &x32, &dz32, &mut got, out);
                close(&exact, &got, 1e-5, &format!("weight gradient {out:?}"));
            }
        }
    }

    /// In f32 at the net's channel counts (multiples of 16, so the AVX-512 transforms run where
    /// the CPU has them), Winograd stays within f32 rounding of the f64 convolution.
    #[test]
    fn winograd_in_f32_stays_close_to_f64() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        for (h, w, c_in, c_out, batch) in [(14, 14, 64, 64, 7), (7, 7, 64, 64, 20), (6, 5, 32, 16, 3)] {
            let bl = Block { h, w, c_in, c_out, oh: h / 2, ow: w / 2, weight: 0, scale: 0, shift: 0 };
            let x: Vec<f64> = random(batch * h * w * c_in, &mut rng).iter().map(|v| v + 1.5).collect();
            let wt = random(9 * c_in * c_out, &mut rng);
            let dz = random(batch * h * w * c_out, &mut rng);
            let f32s = |v: &[f64]| v.iter().map(|&v| v as f32).collect::<Vec<f32>>();
            let (x32, w32, dz32) = (f32s(&x), f32s(&wt), f32s(&dz));
            let close = |direct: &[f64], fast: &[f32], what: &str| {
                let scale = direct.iter().fold(0.0f64, |m, v| m.max(v.abs()));
                let diff = direct.iter().zip(fast).map(|(a, b)| (a - *b as f64).abs()).fold(0.0, f64::max);
                assert!(diff <= 1e-5 * scale, "{what} {h}x{w} {c_in}->{c_out}: {diff} of {scale}");
            };
            let start = random(batch * h * w * c_out, &mut rng);
            for out in [Out::Set, Out::Add] {
                let mut direct = start.clone();
                forward_im2col(&bl, batch, &x, &wt, &mut direct, out, |_| {});
                let mut fast = f32s(&start);
                let u = winograd::centred_filter(&w32, c_out, c_in, &x32);
                winograd::conv(&winograd::Shape { h, w, c_in, c_out }, batch, &[(&x32, &u)], &mut fast, out);
                close(&direct, &fast, "forward");
            }
            let mut direct = vec![0.0; 9 * c_in * c_out];
            weight_gradient_im2col(&bl, batch, &x, &dz, &mut direct, Out::Set);
            let mut fast = vec![0f32; 9 * c_in * c_out];
            winograd::weight_gradient(&winograd::Shape { h, w, c_in, c_out }, batch, &x32, &dz32, &mut fast, Out::Set);
            close(&direct, &fast, "weight gradient");
            let mut direct = vec![0.0; batch * h * w * c_in];
            input_gradient_im2col(&bl, batch, &[(&dz, &wt)], &mut direct);
            let mut fast = vec![0f32; batch * h * w * c_in];
            let u = winograd::filter(&w32, c_out, c_in, true);
            winograd::conv(
                &winograd::Shape { h, w, c_in: c_out, c_out: c_in },
                batch,
                &[(&dz32, &u)],
                &mut fast,
                Out::Set,
            );
            close(&direct, &fast, "input gradient");
        }
    }
}

#[cfg(test)]
mod timing {
    use super::*;

    /// Not a test: times the first block's direct kernels against im2col + gemm at a 5w1s15q
    /// task's 80 images (`cargo test --release -p fewshot-model --lib -- --ignored first_block_timing --nocapture`).
    #[test]
    #[ignore]
    fn first_block_timing() {
        let (h, w, c, batch) = (28, 28, 64, 80);
        let bl = Block { h, w, c_in: 1, c_out: c, oh: 14, ow: 14, weight: 0, scale: 0, shift: 0 };
        let x: Vec<f32> = (0..batch * h * w).map(|i| ((i * 7919) % 1000) as f32 / 1000.0).collect();
        let wt: Vec<f32> = (0..9 * c).map(|i| ((i * 31) % 17) as f32 / 17.0 - 0.5).collect();
        let dz: Vec<f32> = (0..batch * h * w * c).map(|i| ((i * 13) % 101) as f32 / 101.0 - 0.5).collect();
        let mut z = vec![0f32; batch * h * w * c];
        let mut gw = vec![0f32; 9 * c];
        let time = |f: &mut dyn FnMut()| {
            let mut best = f64::MAX;
            for _ in 0..20 {
                let t = std::time::Instant::now();
                f();
                best = best.min(t.elapsed().as_secs_f64() * 1e3);
            }
            best
        };
        use crate::engine::with_best_simd as simd;
        let a = time(&mut || {
            simd(
                #[inline(always)]
                || forward_im2col(&bl, batch, &x, &wt, &mut z, Out::Set, |_| {}),
            )
        });
        let b = time(&mut || {
            simd(
                #[inline(always)]
                || forward_direct(&bl, batch, &x, &wt, &mut z, Out::Set, |_| {}),
            )
        });
        let c2 = time(&mut || {
            simd(
                #[inline(always)]
                || weight_gradient_im2col(&bl, batch, &x, &dz, &mut gw, Out::Set),
            )
        });
        let d = time(&mut || {
            simd(
                #[inline(always)]
                || weight_gradient(&bl, batch, &x, &dz, &mut gw, Out::Set),
            )
        });
        eprintln!("forward: im2col {a:.3} ms, direct {b:.3} ms; weight gradient: im2col {c2:.3} ms, direct {d:.3} ms");
    }
}
