//! The exact Hessian-vector product of the loss ([`hvp`]): forward-mode differentiation
//! (Pearlmutter's R-operator) of the forward and backward passes, reusing their caches.

use super::backward::Backward;
use super::buffer::Buffer;
use super::conv;
use super::forward::Forward;
use super::gemm::{Out, matmul_nn, matmul_nt, matmul_tn};
use super::kernels::{channel_dots, channel_sums, lincomb1, unpool_lincomb4, unpool_sums, windows};
use super::layout::Layout;
use super::real::Real;

/// The Hessian of the loss at `theta` times `v`: the derivative of [`super::backward`]'s
/// gradient in direction `v`, computed exactly by forward-mode differentiation of the forward
/// and backward passes. `fwd` and `bwd` come from [`super::forward`] and [`super::backward`]
/// at `theta`, and `grad` is the gradient the latter wrote there. The result is written into
/// `out`.
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn hvp<T: Real>(
    layout: &Layout,
    theta: &[T],
    fwd: &Forward<T>,
    bwd: &Backward<T>,
    grad: &[T],
    v: &[T],
    out: &mut [T],
) {
    T::hvp_pass(layout, theta, fwd, bwd, grad, v, out);
}

/// [`hvp`]; instantiated only by [`Real::hvp_pass`], inside its SIMD dispatch.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn pass<T: Real>(
    layout: &Layout,
    theta: &[T],
    fwd: &Forward<T>,
    bwd: &Backward<T>,
    grad: &[T],
    v: &[T],
    out: &mut [T],
) {
    let len = layout.len();
    assert!(theta.len() == len && v.len() == len && out.len() == len && grad.len() == len);
    assert!(fwd.blocks.iter().all(|b| b.lean.is_none()), "hvp() needs forward()'s pass, not forward_for_gradient()'s");
    let batch = fwd.batch;
    let depth = layout.blocks.len();
    let zero = T::default();
    out.fill(zero);
    // Forward mode: R(x) = d x / d eps at theta + eps v, block by block.
    // R of each block's input (empty for the first: the images do not move).
    let mut r_in: Vec<Buffer<T>> = Vec::with_capacity(depth);
    let mut r_xhat: Vec<Buffer<T>> = Vec::with_capacity(depth);
    let mut r_inv_std_rel: Vec<Vec<T>> = Vec::with_capacity(depth); // R(inv_std) / inv_std
    let mut r_x: Buffer<T> = Buffer::empty(); // R of the block input (the images do not move)
    for (i, bl) in layout.blocks.iter().enumerate() {
        let cache = &fwd.blocks[i];
        let (n, c) = (batch * bl.pixels(), bl.c_out);
        let mut rz = Buffer::scratch(n * c); // [b * h * w, c]
        conv::forward(bl, batch, fwd.input(i), &v[bl.weight..], &mut rz, Out::Set);
        if i > 0 {
            conv::forward(bl, batch, &r_x, &theta[bl.weight..], &mut rz, Out::Add);
        }
        r_in.push(std::mem::replace(&mut r_x, Buffer::empty()));
        // R(xhat) = s (Rz - mean(Rz) - xhat mean(xhat Rz)); R(s)/s = -s mean(xhat Rz).
        let inv_n = T::from_f64(1.0 / n as f64);
        let (mut mean_rz, mut q) = (vec![zero; c], vec![zero; c]);
        channel_sums(&rz, c, &mut mean_rz);
        channel_dots(&cache.xhat, &rz, c, &mut q);
        mean_rz.iter_mut().for_each(|m| *m = *m * inv_n);
        q.iter_mut().for_each(|m| *m = *m * inv_n);
        let s = &cache.inv_std;
        let b: Vec<T> = (0..c).map(|ch| -s[ch] * mean_rz[ch]).collect();
        let e: Vec<T> = (0..c).map(|ch| -s[ch] * q[ch]).collect();
        lincomb1(&mut rz, s, &cache.xhat, &e, &b, c);
        r_inv_std_rel.push((0..c).map(|ch| -s[ch] * q[ch]).collect());
        // R(y) = scale R(xhat) + v_scale xhat + v_shift, read at the arg-max rows; ReLU mask.
        let scale = &theta[bl.scale..bl.scale + c];
        let (v_scale, v_shift) = (&v[bl.scale..bl.scale + c], &v[bl.shift..bl.shift + c]);
        let mut r_out = Buffer::scratch(cache.out.len()); // [b, oh, ow, c]
        for (o, rows) in windows(bl, batch) {
            let (a, k) = (&cache.out[o * c..o * c + c], &cache.arg[o * c..o * c + c]);
            let rx: [&[T]; 4] = std::array::from_fn(|j| &rz[rows[j] * c..rows[j] * c + c]);
            let x: [&[T]; 4] = std::array::from_fn(|j| &cache.xhat[rows[j] * c..rows[j] * c + c]);
            let ro = &mut r_out[o * c..o * c + c];
            let rxs = rx[0].iter().zip(rx[1]).zip(rx[2]).zip(rx[3]);
            let xs = x[0].iter().zip(x[1]).zip(x[2]).zip(x[3]);
            let coef = scale.iter().zip(v_scale).zip(v_shift);
            // Zipped lanes with branch-free selects, so the loop vectorises.
            for (((((ro, a), k), ((sc, vsc), vsh)), (((r0, r1), r2), r3)), (((x0, x1), x2), x3)) in
                ro.iter_mut().zip(a).zip(k).zip(coef).zip(rxs).zip(xs)
            {
                let r_sel = if *k == 1 { *r1 } else { *r0 };
                let r_sel = if *k == 2 { *r2 } else { r_sel };
                let r_sel = if *k == 3 { *r3 } else { r_sel };
                let x_sel = if *k == 1 { *x1 } else { *x0 };
                let x_sel = if *k == 2 { *x2 } else { x_sel };
                let x_sel = if *k == 3 { *x3 } else { x_sel };
                *ro = if *a > zero { *sc * r_sel + *vsc * x_sel + *vsh } else { zero };
            }
        }
        r_xhat.push(rz);
        r_x = r_out;
    }
    // Head, forward mode: R(logits) = R(h) W^T + h V^T + v_b; R(softmax); R(dlogits).
    let n_way = layout.config().n_way;
    let features = layout.config().features();
    let head = [batch, n_way, features];
    let h = fwd.features();
    let rh = r_x;
    let mut r_logits = vec![zero; batch * n_way]; // [batch, n_way]
    matmul_nt(&mut r_logits, &rh, &theta[layout.head_weight..], head, Out::Set);
    matmul_nt(&mut r_logits, h, &v[layout.head_weight..], head, Out::Add);
    let v_bias = &v[layout.head_bias..layout.head_bias + n_way];
    let inv_b = T::from_f64(1.0 / batch as f64);
    let mut r_dlogits = vec![zero; batch * n_way];
    for ((rd, rl), p) in
        r_dlogits.chunks_exact_mut(n_way).zip(r_logits.chunks_exact(n_way)).zip(fwd.probs.chunks_exact(n_way))
    {
        let mut dot = zero;
        for j in 0..n_way {
            dot += p[j] * (rl[j] + v_bias[j]);
        }
        for j in 0..n_way {
            rd[j] = p[j] * (rl[j] + v_bias[j] - dot) * inv_b;
        }
    }
    // Head, reverse pass differentiated: R(dW) = R(dl)^T h + dl^T R(h); R(db); R(dh).
    let dlogits = &bwd.dlogits;
    {
        let (ow, ob) = out[layout.head_weight..].split_at_mut(n_way * features);
        matmul_tn(ow, &r_dlogits, h, [n_way, features, batch], Out::Set);
        matmul_tn(ow, dlogits, &rh, [n_way, features, batch], Out::Add);
        channel_sums(&r_dlogits, n_way, &mut ob[..n_way]);
    }
    let mut r_da = Buffer::scratch(batch * features); // [batch, features]
    matmul_nn(&mut r_da, &r_dlogits, &theta[layout.head_weight..], [batch, features, n_way], Out::Set);
    matmul_nn(&mut r_da, dlogits, &v[layout.head_weight..], [batch, features, n_way], Out::Add);

    for i in (0..depth).rev() {
        let bl = &layout.blocks[i];
        let cache = &fwd.blocks[i];
        let (n, c) = (batch * bl.pixels(), bl.c_out);
        let (dy, dz) = (&bwd.dy[i], &bwd.dz[i]);
        let scale = &theta[bl.scale..bl.scale + c];
        let v_scale = &v[bl.scale..bl.scale + c];
        let (dscale, dshift) = (&grad[bl.scale..bl.scale + c], &grad[bl.shift..bl.shift + c]);
        let rx = &r_xhat[i];
        // R(dscale) = sum(R(dy) xhat + dy R(xhat)); R(dshift) = sum(R(dy)). R(dy) is the
        // pooled R(da) routed to the arg-max rows like dy: its sums come from the pooled values
        // and it is never built (as in the backward pass).
        let (mut r_dscale, mut r_dshift, mut tmp) = (vec![zero; c], vec![zero; c], vec![zero; c]);
        unpool_sums(bl, batch, cache.pooled(), &r_da, &cache.xhat, (&mut r_dscale, &mut r_dshift));
        channel_dots(dy, rx, c, &mut tmp);
        r_dscale.iter_mut().zip(&tmp).for_each(|(a, b)| *a += *b);
        let inv_n = T::from_f64(1.0 / n as f64);
        let m2: Vec<T> = (0..c).map(|ch| scale[ch] * dscale[ch] * inv_n).collect();
        let r_m1: Vec<T> = (0..c).map(|ch| (v_scale[ch] * dshift[ch] + scale[ch] * r_dshift[ch]) * inv_n).collect();
        let r_m2: Vec<T> = (0..c).map(|ch| (v_scale[ch] * dscale[ch] + scale[ch] * r_dscale[ch]) * inv_n).collect();
        // R(dz) = R(s)/s dz + s (R(dxhat) - R(m1) - R(xhat) m2 - xhat R(m2)), R(dxhat) = v_scale dy + scale R(dy).
        let s = &cache.inv_std;
        let rs = &r_inv_std_rel[i];
        // = s scale R(dy) + R(s)/s dz + s v_scale dy - s m2 R(xhat) - s R(m2) xhat - s R(m1),
        // in one pass over the windows.
        let keep: Vec<T> = (0..c).map(|ch| s[ch] * scale[ch]).collect();
        let c_dy: Vec<T> = (0..c).map(|ch| s[ch] * v_scale[ch]).collect();
        let c_rx: Vec<T> = (0..c).map(|ch| -s[ch] * m2[ch]).collect();
        let c_x: Vec<T> = (0..c).map(|ch| -s[ch] * r_m2[ch]).collect();
        let bias: Vec<T> = (0..c).map(|ch| -s[ch] * r_m1[ch]).collect();
        let mut r_dz = Buffer::scratch(n * c); // [b * h * w, c]
        let (xs, cs) = ([&dz[..], &dy[..], &rx[..], &cache.xhat[..]], [&rs[..], &c_dy[..], &c_rx[..], &c_x[..]]);
        unpool_lincomb4(bl, batch, cache.pooled(), &r_da, &keep, xs, cs, &bias, &mut r_dz);
        out[bl.scale..bl.scale + c].copy_from_slice(&r_dscale);
        out[bl.shift..bl.shift + c].copy_from_slice(&r_dshift);
        // R(dW) = R(dz)^T cols + dz^T R(cols); R(dx) = col2im(R(dz) W + dz V), with
        // cols = im2col(x) and R(cols) = im2col(R(x)).
        let ow = &mut out[bl.weight..bl.weight + c * bl.k()];
        conv::weight_gradient(bl, batch, fwd.input(i), &r_dz, ow, Out::Set);
        if i > 0 {
            conv::weight_gradient(bl, batch, &r_in[i], dz, ow, Out::Add);
            r_da = Buffer::scratch(n * bl.c_in); // [b, h, w, c_in]
            conv::input_gradient(bl, batch, &[(&r_dz, &theta[bl.weight..]), (dz, &v[bl.weight..])], &mut r_da);
        }
    }
}
