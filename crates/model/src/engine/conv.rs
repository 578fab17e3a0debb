//! A block's 3x3 convolution and its two derivatives, computed a few images at a time.
//!
//! Each is im2col plus a matrix product, but the im2col matrix (`[b * h * w, 9 * c_in]`, nine
//! times the input) is never built for the whole batch: a chunk of images is expanded into a
//! small buffer that stays in L2 and is consumed at once, and the backward pass and the
//! Hessian-vector product expand it again from the block's input (kept anyway) instead of
//! reading a stored copy. At 20 images the second block's matrix is 9 MB: written once and read
//! three or four times per pass, it went through memory; a chunk is at most
//! [`CHUNK_VALUES`] values. Images are independent in im2col and col2im, so chunks are too.

use super::buffer::Buffer;
use super::gemm::{Out, matmul_nn, matmul_nt, matmul_tn};
use super::kernels::{col2im, im2col};
use super::layout::Block;
use super::real::Real;

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
    let (k, c) = (bl.k(), bl.c_out);
    for_each_expanded(
        bl,
        batch,
        x,
        #[inline(always)]
        |r0, rows, cols| matmul_nt(&mut z[r0 * c..(r0 + rows) * c], cols, w, [rows, c, k], out),
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
        for (o, g) in gw[..c * k].chunks_exact_mut(k).enumerate() {
            let column = gt.iter().skip(o).step_by(c);
            match out {
                Out::Set => g.iter_mut().zip(column).for_each(|(g, t)| *g = *t),
                Out::Add => g.iter_mut().zip(column).for_each(|(g, t)| *g += *t),
            }
        }
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

/// `dx = col2im(sum_j dz_j w_j)`: the input gradient, `[batch, h, w, c_in]`, of one or more
/// (conv-output gradient, weights) terms (the Hessian-vector product has two).
#[inline(always)]
pub(crate) fn input_gradient<T: Real>(bl: &Block, batch: usize, terms: &[(&[T], &[T])], dx: &mut [T]) {
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
