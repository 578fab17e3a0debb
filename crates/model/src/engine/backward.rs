//! The reverse pass: the gradient of the mean cross-entropy at the parameters of a
//! [`Forward`] pass ([`gradient`]), or the same keeping in a [`Backward`] what the
//! Hessian-vector product needs ([`backward`]).

use super::buffer::Buffer;
use super::conv;
use super::forward::Forward;
use super::gemm::{Out, matmul_nn, matmul_tn};
use super::kernels::{channel_dots, channel_sums, lincomb2, pooled_sums, unpool, unpool_lincomb, unpool_sums};
use super::layout::Layout;
use super::real::Real;

/// What the backward pass keeps for the Hessian-vector product. Its buffers go back to the
/// thread's pool when it is dropped.
#[derive(Debug, Clone)]
pub struct Backward<T: Real> {
    /// `d loss / d logits`: `[batch, n_way]`.
    pub(crate) dlogits: Vec<T>,
    /// Per block: gradient at the batch-norm output (`[b * h * w, c]`) and at the conv output.
    pub(crate) dy: Vec<Buffer<T>>,
    pub(crate) dz: Vec<Buffer<T>>,
}

/// Where the reverse pass starts.
#[derive(Debug, Clone, Copy)]
pub enum Upstream<'a, T> {
    /// The mean cross-entropy against these labels (one per image).
    Labels(&'a [u32]),
    /// A given gradient with respect to the head's input, the features (`[batch,
    /// features]`): the gradient of `<d, features>`, in which the head takes no part.
    Features(&'a [T]),
}

/// The gradient of the mean cross-entropy against `labels` at `theta`, written into `grad`
/// (overwritten), from a forward pass at the same `theta`.
#[inline]
pub fn gradient<T: Real>(layout: &Layout, theta: &[T], fwd: &Forward<T>, labels: &[u32], grad: &mut [T]) {
    T::backward_pass(layout, theta, fwd, Upstream::Labels(labels), grad, false);
}

/// The gradient of `<d, features>` at `theta` (`d`: `[batch, features]`, the gradient of some
/// loss with respect to the head's input), written into `grad` (overwritten; the head's part
/// is zero), from a forward pass at the same `theta`: the reverse pass of the feature
/// extractor alone, for losses the head does not compute (prototypes, say).
#[inline]
pub fn features_gradient<T: Real>(layout: &Layout, theta: &[T], fwd: &Forward<T>, d: &[T], grad: &mut [T]) {
    T::backward_pass(layout, theta, fwd, Upstream::Features(d), grad, false);
}

/// [`gradient`], also returning what [`super::hvp`] needs at `theta`.
#[inline]
pub fn backward<T: Real>(
    layout: &Layout,
    theta: &[T],
    fwd: &Forward<T>,
    labels: &[u32],
    grad: &mut [T],
) -> Backward<T> {
    T::backward_pass(layout, theta, fwd, Upstream::Labels(labels), grad, true)
}

/// The reverse pass; with `keep`, each block's `dy` and `dz` are kept for the Hessian-vector
/// product, otherwise they go back to the pool as soon as the block is done. Instantiated only
/// by [`Real::backward_pass`], inside its SIMD dispatch.
#[inline(always)]
pub(crate) fn pass<T: Real>(
    layout: &Layout,
    theta: &[T],
    fwd: &Forward<T>,
    upstream: Upstream<'_, T>,
    grad: &mut [T],
    keep: bool,
) -> Backward<T> {
    assert_eq!(grad.len(), layout.len(), "gradient vector of the wrong length");
    let batch = fwd.batch;
    let n_way = layout.config().n_way;
    let features = layout.config().features();
    grad.fill(T::default());
    let mut da = Buffer::scratch(batch * features); // [batch, features]
    let dlogits = match upstream {
        Upstream::Labels(labels) => {
            assert_eq!(labels.len(), fwd.batch, "one label per image");
            // d loss / d logits = (softmax - one_hot) / batch.
            let inv_b = T::from_f64(1.0 / batch as f64);
            let mut dlogits = fwd.probs.clone(); // [batch, n_way]
            for (i, &y) in labels.iter().enumerate() {
                dlogits[i * n_way + y as usize] -= T::from_f64(1.0);
            }
            dlogits.iter_mut().for_each(|d| *d = *d * inv_b);
            let h = fwd.features();
            let (gw, gb) = grad[layout.head_weight..].split_at_mut(n_way * features);
            matmul_tn(gw, &dlogits, h, [n_way, features, batch], Out::Set);
            channel_sums(&dlogits, n_way, &mut gb[..n_way]);
            matmul_nn(&mut da, &dlogits, &theta[layout.head_weight..], [batch, features, n_way], Out::Set);
            dlogits
        }
        Upstream::Features(d) => {
            assert_eq!(d.len(), batch * features, "one feature gradient per image and feature");
            assert!(!keep, "the Hessian-vector product starts from labels");
            da.copy_from_slice(d);
            Vec::new()
        }
    };

    let depth = layout.blocks.len();
    let (mut dys, mut dzs) = (Vec::with_capacity(depth), Vec::with_capacity(depth));
    for i in (0..depth).rev() {
        let bl = &layout.blocks[i];
        let cache = &fwd.blocks[i];
        let (n, c) = (batch * bl.pixels(), bl.c_out);
        // Through ReLU and max-pool (each output's gradient goes to its window's arg-max row),
        // then batch norm. Only the Hessian-vector product needs that routed gradient `dy`
        // itself: without `keep`, its sums and dz are computed from the pooled gradient and
        // `dy` is never built (three fewer passes over the block's largest buffers).
        let (mut dscale, mut dshift) = (vec![T::default(); c], vec![T::default(); c]);
        let lean_needs_full = keep && cache.lean.is_some();
        assert!(!lean_needs_full, "backward() needs forward()'s pass; this one is forward_for_gradient()'s");
        let dy = if let Some(lean) = &cache.lean {
            pooled_sums(c, &cache.out, &da, &lean.xm, (&mut dscale, &mut dshift));
            None
        } else if keep {
            let mut dy = Buffer::scratch(n * c); // [b * h * w, c]
            unpool(bl, batch, cache.pooled(), &da, &mut dy);
            channel_dots(&dy, &cache.xhat, c, &mut dscale);
            channel_sums(&dy, c, &mut dshift);
            Some(dy)
        } else {
            unpool_sums(bl, batch, cache.pooled(), &da, &cache.xhat, (&mut dscale, &mut dshift));
            None
        };
        let scale = &theta[bl.scale..bl.scale + c];
        let inv_n = T::from_f64(1.0 / n as f64);
        let m1: Vec<T> = (0..c).map(|ch| scale[ch] * dshift[ch] * inv_n).collect();
        let m2: Vec<T> = (0..c).map(|ch| scale[ch] * dscale[ch] * inv_n).collect();
        // dz = s (scale dy - m1 - xhat m2)
        let s = &cache.inv_std;
        let a: Vec<T> = (0..c).map(|ch| s[ch] * scale[ch]).collect();
        let b: Vec<T> = (0..c).map(|ch| -s[ch] * m1[ch]).collect();
        let e: Vec<T> = (0..c).map(|ch| -s[ch] * m2[ch]).collect();
        grad[bl.scale..bl.scale + c].copy_from_slice(&dscale);
        grad[bl.shift..bl.shift + c].copy_from_slice(&dshift);
        // Conv: dW = dz^T im2col(x); dx = col2im(dz W).
        let gw = &mut grad[bl.weight..bl.weight + c * bl.k()];
        let w = &theta[bl.weight..];
        if let Some(lean) = &cache.lean {
            first_block_lean(bl, batch, w, fwd.input(i), cache, lean, &da, (&a, &e, &b), gw);
            continue;
        }
        match dy {
            Some(dy) => {
                let mut dz = Buffer::scratch(n * c);
                lincomb2(&mut dz, &dy, &a, &cache.xhat, &e, &b, c);
                conv::weight_gradient(bl, batch, fwd.input(i), &dz, gw, Out::Set);
                if i > 0 {
                    da = Buffer::scratch(n * bl.c_in); // [b, h, w, c_in]
                    conv::input_gradient(bl, batch, &[(&dz, w)], &mut da);
                }
                dys.push(dy);
                dzs.push(dz);
            }
            None => {
                // dz a chunk of images at a time, consumed by both gradients while in cache.
                let mut dx = (i > 0).then(|| Buffer::scratch(n * bl.c_in)); // [b, h, w, c_in]
                let (pp, p) = (bl.pooled() * c, bl.pixels() * c);
                let (pooled, arg) = cache.pooled();
                conv::gradients_chunked(
                    bl,
                    batch,
                    fwd.input(i),
                    w,
                    gw,
                    dx.as_deref_mut(),
                    #[inline(always)]
                    |i0, imgs, dzc| {
                        let (po, pi) = (i0 * pp..(i0 + imgs) * pp, i0 * p..(i0 + imgs) * p);
                        let at = (&pooled[po.clone()], &arg[po.clone()]);
                        unpool_lincomb(bl, imgs, at, &da[po], &a, &cache.xhat[pi], &e, &b, dzc);
                    },
                );
                if let Some(dx) = dx {
                    da = dx;
                }
            }
        }
    }
    dys.reverse();
    dzs.reverse();
    Backward { dlogits, dy: dys, dz: dzs }
}

/// The weight gradient `gw` of a lean first block (see
/// [`super::forward::forward_for_gradient`]) from its pooled output gradient `da` and the
/// coefficients of `dz = a dy + e xhat + b` that [`pass`] computed: over the patch matrix `P`
/// it is `a (dy^T P) + e (xhat^T P) + b (1^T P)`, the first term the conv weight gradient of
/// the routed `dy` (built a chunk of images at a time, in cache), the other two closed forms
/// of the patches' moments, `xhat_c^T P = n inv_std_c C w_c` and `1^T P = n mu`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn first_block_lean<T: Real>(
    bl: &super::layout::Block,
    batch: usize,
    w: &[T],
    x: &[T],
    cache: &super::forward::BlockCache<T>,
    lean: &super::forward::Lean<T>,
    da: &[T],
    (a, e, b): (&[T], &[T], &[T]),
    gw: &mut [T],
) {
    let c = bl.c_out;
    let n = (batch * bl.pixels()) as f64;
    let pp = bl.pooled() * c;
    let (pooled, arg) = cache.pooled();
    conv::gradients_chunked(
        bl,
        batch,
        x,
        w,
        gw,
        None,
        #[inline(always)]
        |i0, imgs, dyc| {
            let po = i0 * pp..(i0 + imgs) * pp;
            unpool(bl, imgs, (&pooled[po.clone()], &arg[po.clone()]), &da[po], dyc);
        },
    );
    let mu = &lean.patches.mean;
    for ch in 0..c {
        let (s, a, e, b) = (cache.inv_std[ch].to_f64(), a[ch].to_f64(), e[ch].to_f64(), b[ch].to_f64());
        let wc: [f64; 9] = std::array::from_fn(|t| w[ch * 9 + t].to_f64());
        let cw = lean.patches.cov_times(&wc);
        for t in 0..9 {
            let g = &mut gw[ch * 9 + t];
            *g = T::from_f64(a * g.to_f64() + e * n * s * cw[t] + b * n * mu[t]);
        }
    }
}
