//! The forward pass of one batch on flat buffers ([`forward`]), keeping in a [`Forward`] what
//! the backward pass and the Hessian-vector product need; its loss and accuracy.

use super::buffer::Buffer;
use super::conv;
use super::gemm::{Out, matmul_nt};
use super::kernels::{Moments, argmax, normalize_pool};
use super::layout::{Block, Layout};
use super::patches::PatchMoments;
use super::real::Real;
use crate::net::BN_EPS;

/// What the forward pass keeps of one block for the backward pass and the Hessian-vector
/// product.
#[derive(Debug, Clone)]
pub(crate) struct BlockCache<T: Real> {
    /// Normalised conv output: `[b * h * w, c]`; empty where `lean` holds what the gradient
    /// needs instead.
    pub xhat: Buffer<T>,
    /// For the first block of a [`forward_for_gradient`] pass: in place of `xhat`.
    pub lean: Option<Lean<T>>,
    /// Per-channel `1 / sqrt(var + eps)`: `[c]`.
    pub inv_std: Vec<T>,
    /// For each pooled output, which of its window's four rows (see
    /// [`super::kernels::windows`]) holds the maximum: `[b * oh * ow, c]`.
    pub arg: Buffer<u8>,
    /// The block's output `relu(max-pool(bn(conv x)))`: `[b, oh, ow, c]`.
    pub out: Buffer<T>,
}

/// What the gradient needs of a one-channel first block whose normalised output was not kept:
/// `xhat` at each pooled output's arg-max row, and the moments of the block's input patches
/// (the closed forms of its batch-norm statistics and of its weight gradient's `xhat` term,
/// see [`super::patches`]).
#[derive(Debug, Clone)]
pub(crate) struct Lean<T: Real> {
    /// `xhat` at each window's arg-max row: `[b * oh * ow, c]`.
    pub xm: Buffer<T>,
    pub patches: PatchMoments,
}

impl<T: Real> BlockCache<T> {
    /// The pooled output and its arg-max rows, as [`super::kernels::unpool`] reads them.
    pub fn pooled(&self) -> (&[T], &[u8]) {
        (&self.out, &self.arg)
    }
}

/// The forward pass of one batch, with everything its gradient needs. Its buffers go back to
/// the thread's pool when it is dropped.
#[derive(Debug, Clone)]
pub struct Forward<T: Real> {
    pub(crate) batch: usize,
    /// The images, `[batch, h, w, c_in]`: the first block's input, which the backward pass and
    /// the Hessian-vector product expand again (see [`super::conv`]).
    pub(crate) images: Buffer<T>,
    pub(crate) blocks: Vec<BlockCache<T>>,
    /// Softmax probabilities: `[batch, n_way]`.
    pub(crate) probs: Vec<T>,
    /// Logits: `[batch, n_way]`.
    pub logits: Vec<T>,
}

impl<T: Real> Forward<T> {
    /// Number of images.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Block `i`'s max-pool routing: for each pooled output and channel, which of its window's
    /// four rows held the maximum (`[batch * oh * ow, c]`, rows in the order of
    /// [`super::kernels::windows`]). The backward pass and the Hessian-vector product send
    /// gradients along it, so two passes with equal routing differ only by rounding.
    pub fn routing(&self, i: usize) -> &[u8] {
        &self.blocks[i].arg
    }

    /// Block `i`'s input: the images for the first block, else the previous block's output.
    pub(crate) fn input(&self, i: usize) -> &[T] {
        if i == 0 { &self.images } else { &self.blocks[i - 1].out }
    }

    /// The last block's output, the head's input: `[batch, features]`.
    pub fn features(&self) -> &[T] {
        &self.blocks.last().expect("depth >= 1").out
    }

    /// Mean cross-entropy against `labels`.
    pub fn loss(&self, labels: &[u32]) -> f64 {
        // From the logits (log-sum-exp minus the label's logit), like the candle path: -ln of a
        // softmax probability that underflowed to 0 would report a finite loss as infinite.
        let n = self.logits.len() / self.batch;
        let per_image = |(row, &y): (&[T], &u32)| {
            let max = row[argmax(row)].to_f64();
            let sum: f64 = row.iter().map(|l| (l.to_f64() - max).exp()).sum();
            max + sum.ln() - row[y as usize].to_f64()
        };
        self.logits.chunks_exact(n).zip(labels).map(per_image).sum::<f64>() / self.batch as f64
    }

    /// Number of images whose arg-max logit is the label.
    pub fn correct(&self, labels: &[u32]) -> usize {
        let n = self.logits.len() / self.batch;
        labels.iter().enumerate().filter(|&(i, &y)| argmax(&self.logits[i * n..(i + 1) * n]) == y as usize).count()
    }
}

/// The forward pass of `images` (`[batch, h, w, c_in]`, channels last) at `theta`, keeping
/// everything [`super::backward`] and [`super::hvp`] need.
#[inline]
pub fn forward<T: Real>(layout: &Layout, theta: &[T], images: &[T], batch: usize) -> Forward<T> {
    T::forward_pass(layout, theta, images, batch, false)
}

/// [`forward`] for a pass that only feeds [`super::gradient`] (or only its logits are read):
/// a one-channel first block keeps neither its conv output nor its normalised output (12.8x
/// the images; 15 MB at 75 images in f32, written and read back twice by [`forward`]), but
/// each chunk of images is normalised and pooled while in cache, from batch-norm statistics
/// that the input patches' moments give in closed form (see [`super::patches`]). The same
/// logits and gradient as [`forward`], to rounding; [`super::backward`] and [`super::hvp`]
/// need [`forward`]'s pass and panic on this one.
#[inline]
pub fn forward_for_gradient<T: Real>(layout: &Layout, theta: &[T], images: &[T], batch: usize) -> Forward<T> {
    T::forward_pass(layout, theta, images, batch, true)
}

/// Whether block `i` of a lean pass keeps [`Lean`] instead of `xhat`.
#[inline(always)]
fn lean_block(i: usize, bl: &Block) -> bool {
    i == 0 && bl.c_in == 1
}

/// Images per chunk of a lean first block: its conv output stays under 256 KB in f32.
const LEAN_CHUNK_VALUES: usize = 1 << 16;

/// Both passes; instantiated only by [`Real::forward_pass`], inside its SIMD dispatch.
#[inline(always)]
pub(crate) fn pass<T: Real>(layout: &Layout, theta: &[T], images: &[T], batch: usize, lean: bool) -> Forward<T> {
    assert_eq!(theta.len(), layout.len(), "parameter vector of the wrong length");
    assert_eq!(images.len(), batch * layout.image_len(), "images of the wrong size");
    let eps = T::from_f64(BN_EPS);
    let mut blocks: Vec<BlockCache<T>> = Vec::with_capacity(layout.blocks.len());
    for (i, bl) in layout.blocks.iter().enumerate() {
        let input: &[T] = if i == 0 { images } else { &blocks[i - 1].out };
        let (n, c) = (batch * bl.pixels(), bl.c_out);
        let (scale, shift) = (&theta[bl.scale..bl.scale + c], &theta[bl.shift..bl.shift + c]);
        let inv_n = T::from_f64(1.0 / n as f64);
        let std_of =
            |var: &[T]| -> Vec<T> { var.iter().map(|v| T::from_f64(1.0) / (*v * inv_n + eps).sqrt()).collect() };
        // The closed-form statistics, unless they overflow `T`: then the streaming ones would
        // too, and the full pass lets the overflow reach the loss and the gradient as it always
        // did (a diverged run must stop with a non-finite loss, not train on at inv_std = 0).
        let closed = (lean && lean_block(i, bl))
            .then(|| {
                let patches = PatchMoments::of(input, batch, bl.h, bl.w);
                let (mean, var) = patches.conv_moments(&theta[bl.weight..bl.weight + c * 9], c);
                (patches, mean, var)
            })
            .filter(|(_, mean, var)| mean.iter().chain(var).all(|v| v.to_f64().is_finite()));
        if let Some((patches, mean, var)) = closed {
            let w = &theta[bl.weight..bl.weight + c * 9];
            let inv_std = std_of(&var);
            let (px, pp) = (bl.pixels(), bl.pooled());
            let step = (LEAN_CHUNK_VALUES / (px * c)).max(1).min(batch);
            let mut z = Buffer::scratch(step * px * c);
            let mut arg = Buffer::scratch(batch * pp * c);
            let mut out = Buffer::scratch(batch * pp * c); // [b, oh, ow, c]
            let mut xm = Buffer::scratch(batch * pp * c);
            for i0 in (0..batch).step_by(step) {
                let imgs = step.min(batch - i0);
                let zc = &mut z[..imgs * px * c];
                conv::forward(bl, imgs, &input[i0 * px..(i0 + imgs) * px], w, zc, Out::Set);
                let po = i0 * pp * c..(i0 + imgs) * pp * c;
                let (a, o, m) = (&mut arg[po.clone()], &mut out[po.clone()], &mut xm[po]);
                normalize_pool(bl, imgs, zc, (&mean, &inv_std), (scale, shift), a, o, Some(m));
            }
            let lean = Some(Lean { xm, patches });
            blocks.push(BlockCache { xhat: Buffer::empty(), lean, inv_std, arg, out });
            continue;
        }
        let mut z = Buffer::scratch(n * c); // [b * h * w, c]
        // Batch norm with the batch's statistics (biased variance), gathered from each chunk
        // of the conv output while it is in cache, then max-pool of y = scale * xhat + shift
        // and ReLU: one pass that writes xhat over z and the pooled output. (The closure is
        // inline(always) so that it compiles inside the caller's SIMD level, see `simd`.)
        let mut moments = Moments::new(c);
        conv::forward_with(
            bl,
            batch,
            input,
            &theta[bl.weight..],
            &mut z,
            Out::Set,
            #[inline(always)]
            |zc| moments.add(zc),
        );
        debug_assert_eq!(moments.rows(), n);
        let (mean, var) = moments.finish();
        let inv_std = std_of(&var);
        let mut arg = Buffer::scratch(batch * bl.pooled() * c);
        let mut out = Buffer::scratch(batch * bl.pooled() * c); // [b, oh, ow, c]
        normalize_pool(bl, batch, &mut z, (&mean, &inv_std), (scale, shift), &mut arg, &mut out, None);
        let xhat = z;
        blocks.push(BlockCache { xhat, lean: None, inv_std, arg, out });
    }
    // Head: logits = features · W^T + b, then a stable softmax.
    let n_way = layout.config().n_way;
    let features = layout.config().features();
    let h = &blocks.last().expect("depth >= 1").out;
    let mut logits = vec![T::default(); batch * n_way]; // [batch, n_way]
    matmul_nt(&mut logits, h, &theta[layout.head_weight..], [batch, n_way, features], Out::Set);
    let bias = &theta[layout.head_bias..layout.head_bias + n_way];
    let mut probs = vec![T::default(); batch * n_way];
    for (row, prow) in logits.chunks_exact_mut(n_way).zip(probs.chunks_exact_mut(n_way)) {
        row.iter_mut().zip(bias).for_each(|(l, b)| *l += *b);
        let max = row[argmax(row)];
        let mut sum = T::default();
        for (p, l) in prow.iter_mut().zip(row.iter()) {
            *p = (*l - max).exp();
            sum += *p;
        }
        prow.iter_mut().for_each(|p| *p = *p / sum);
    }
    let mut kept = Buffer::scratch(images.len());
    kept.copy_from_slice(images);
    Forward { batch, images: kept, blocks, probs, logits }
}
