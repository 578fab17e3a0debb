//! The native engine: the same net as [`crate::forward`], written by hand on flat buffers for
//! one task at a time, with its gradient and an exact Hessian-vector product.
//!
//! candle's autograd builds a graph of small tensors per op; on a task of 10 images most of
//! its time goes to allocating, zeroing and walking that graph. Here the whole net is a few
//! matrix products (im2col + [`gemm`]) and fused elementwise passes over channels-last buffers,
//! and second order is a Hessian-vector product by forward-mode differentiation of the
//! backward pass (Pearlmutter's R-operator), not a graph of the gradient. MAML's meta-gradient
//! through `k` inner steps is then `k` Hessian-vector products:
//! `v <- v - inner_lr * H(theta_i) v` from the last step to the first.
//!
//! Layouts: images and activations are `[b, h, w, c]`; a conv weight is `[c_out, 3, 3, c_in]`
//! (so im2col rows are contiguous channel runs); the head sees each image's features in
//! `(h, w, c)` order. [`Layout::pack`] and [`Layout::unpack`] convert to and from the
//! PyTorch-layout [`crate::ParamMap`], and are the only place the two layouts meet.
//!
//! Everything is generic over [`Real`] (`f32` for speed, `f64` for finite-difference tests).

use std::ops::{Add, AddAssign, Div, Mul, Neg, Sub, SubAssign};

use candle_core::{DType, Device, Tensor};

use crate::error::Result;
use crate::net::{BN_EPS, ConvNetConfig};
use crate::params::{ParamMap, block_param};

/// A float type the engine computes in (`f32` or `f64`).
pub trait Real:
    Copy
    + Send
    + Sync
    + Default
    + PartialOrd
    + std::fmt::Debug
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + 'static
{
    /// The candle dtype of this type.
    const DTYPE: DType;
    /// Conversion from f64 (rounding).
    fn from_f64(x: f64) -> Self;
    /// Conversion to f64.
    fn to_f64(self) -> f64;
    /// Square root.
    fn sqrt(self) -> Self;
    /// Exponential.
    fn exp(self) -> Self;
    /// Values of a CPU tensor of this dtype, flattened.
    fn tensor_values(t: &Tensor) -> Result<Vec<Self>>;
    /// Run `f` on this thread's pool of recycled buffers of this type.
    fn with_pool<R>(f: impl FnOnce(&mut Vec<Vec<Self>>) -> R) -> R;
}

macro_rules! real {
    ($t:ty, $d:expr) => {
        impl Real for $t {
            const DTYPE: DType = $d;
            #[inline]
            fn from_f64(x: f64) -> Self {
                x as $t
            }
            #[inline]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline]
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            fn tensor_values(t: &Tensor) -> Result<Vec<Self>> {
                Ok(t.flatten_all()?.to_dtype($d)?.to_vec1::<$t>()?)
            }
            fn with_pool<R>(f: impl FnOnce(&mut Vec<Vec<Self>>) -> R) -> R {
                thread_local! {
                    static POOL: std::cell::RefCell<Vec<Vec<$t>>> = const { std::cell::RefCell::new(Vec::new()) };
                }
                POOL.with(|p| f(&mut p.borrow_mut()))
            }
        }
    };
}
real!(f32, DType::F32);
real!(f64, DType::F64);

/// A buffer of `len` elements with unspecified (recycled) contents, for outputs that are
/// written in full. Recycling this thread's buffers saves the allocator's page faults and the
/// zeroing of fresh memory, which profiles showed at 15% of a first-order step.
fn scratch<T: Real>(len: usize) -> Vec<T> {
    T::with_pool(|pool| pool.iter().position(|v| v.len() == len).map(|i| pool.swap_remove(i)))
        .unwrap_or_else(|| vec![T::default(); len])
}

/// Give a buffer back for [`scratch`] (small ones are not worth keeping).
fn recycle<T: Real>(v: Vec<T>) {
    if v.len() >= 1024 {
        T::with_pool(|pool| {
            if pool.len() < 256 {
                pool.push(v);
            }
        });
    }
}

/// `c = a · b` (or `c += a · b` with `accumulate`), all row-major; `a` is `[m, k]`, stored as
/// `[k, m]` when `ta`; `b` is `[k, n]`, stored as `[n, k]` when `tb`; `c` is `[m, n]`.
#[allow(clippy::too_many_arguments)]
fn matmul<T: Real>(c: &mut [T], a: &[T], b: &[T], m: usize, n: usize, k: usize, ta: bool, tb: bool, accumulate: bool) {
    assert!(c.len() >= m * n && a.len() >= m * k && b.len() >= k * n, "matmul operands too small");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c[..m * n].fill(T::default());
        }
        return;
    }
    let (a_cs, a_rs) = if ta { (m as isize, 1) } else { (1, k as isize) };
    let (b_cs, b_rs) = if tb { (k as isize, 1) } else { (1, n as isize) };
    // SAFETY: the asserts above bound every index gemm touches: a is m x k, b is k x n, c is
    // m x n with the strides given, and c does not alias a or b (distinct borrows).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            T::from_f64(1.0),
            T::from_f64(1.0),
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// One conv block's sizes.
#[derive(Debug, Clone, Copy)]
struct Block {
    h: usize,
    w: usize,
    c_in: usize,
    c_out: usize,
    oh: usize,
    ow: usize,
    /// Offsets of the conv weight `[c_out, 9 * c_in]`, batch-norm scale and shift `[c_out]`.
    weight: usize,
    scale: usize,
    shift: usize,
}

impl Block {
    fn k(&self) -> usize {
        9 * self.c_in
    }
    fn pixels(&self) -> usize {
        self.h * self.w
    }
    fn pooled(&self) -> usize {
        self.oh * self.ow
    }
}

/// Where each parameter lives in the engine's flat parameter vector, and the net's sizes.
#[derive(Debug, Clone)]
pub struct Layout {
    config: ConvNetConfig,
    blocks: Vec<Block>,
    head_weight: usize,
    head_bias: usize,
    len: usize,
}

impl Layout {
    /// The layout of `config`'s net.
    pub fn new(config: &ConvNetConfig) -> Result<Layout> {
        config.validate()?;
        let mut blocks = Vec::with_capacity(config.depth);
        let (mut size, mut c_in, mut at) = (config.image_size, config.in_channels, 0);
        for _ in 0..config.depth {
            let c_out = config.hidden;
            let weight = at;
            let scale = weight + c_out * 9 * c_in;
            let shift = scale + c_out;
            at = shift + c_out;
            blocks.push(Block { h: size, w: size, c_in, c_out, oh: size / 2, ow: size / 2, weight, scale, shift });
            size /= 2;
            c_in = c_out;
        }
        let head_weight = at;
        let head_bias = head_weight + config.n_way * config.features();
        let len = head_bias + config.n_way;
        Ok(Layout { config: *config, blocks, head_weight, head_bias, len })
    }

    /// Offset of the linear head (weight, then bias) in a flat vector: the head is the tail
    /// `head_start()..len()`, after every conv block's parameters.
    pub fn head_start(&self) -> usize {
        self.head_weight
    }

    /// Length of a flat parameter (or gradient) vector.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the vector is empty (never, for a valid config).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The net's shape.
    pub fn config(&self) -> &ConvNetConfig {
        &self.config
    }

    /// Input values per image (`in_channels * image_size^2`).
    pub fn image_len(&self) -> usize {
        self.config.in_channels * self.config.image_size * self.config.image_size
    }

    /// Flatten a PyTorch-layout parameter map (no task dimension) into the engine's layout.
    /// Conv biases are not used: batch norm cancels them (see [`crate::forward`]).
    pub fn pack<T: Real>(&self, params: &ParamMap) -> Result<Vec<T>> {
        crate::params::check_params(&self.config, params)?;
        let mut flat = vec![T::default(); self.len];
        for (i, b) in self.blocks.iter().enumerate() {
            let w = T::tensor_values(&params[&block_param(i, "conv.weight")])?; // [c_out, c_in, 3, 3]
            for o in 0..b.c_out {
                for c in 0..b.c_in {
                    for k in 0..9 {
                        flat[b.weight + o * b.k() + k * b.c_in + c] = w[(o * b.c_in + c) * 9 + k];
                    }
                }
            }
            flat[b.scale..b.scale + b.c_out].copy_from_slice(&T::tensor_values(&params[&block_param(i, "bn.weight")])?);
            flat[b.shift..b.shift + b.c_out].copy_from_slice(&T::tensor_values(&params[&block_param(i, "bn.bias")])?);
        }
        let w = T::tensor_values(&params["head.weight"])?; // [n_way, c * fh * fw]
        let (c, s) = (self.config.hidden, self.config.final_size() * self.config.final_size());
        for j in 0..self.config.n_way {
            for ch in 0..c {
                for p in 0..s {
                    flat[self.head_weight + j * c * s + p * c + ch] = w[j * c * s + ch * s + p];
                }
            }
        }
        let n = self.config.n_way;
        flat[self.head_bias..self.head_bias + n].copy_from_slice(&T::tensor_values(&params["head.bias"])?);
        Ok(flat)
    }

    /// The inverse of [`Layout::pack`], as tensors of `dtype` on `device`; conv biases get
    /// zeros (their gradient is exactly zero).
    pub fn unpack<T: Real>(&self, flat: &[T], dtype: DType, device: &Device) -> Result<ParamMap> {
        assert_eq!(flat.len(), self.len, "flat vector of the wrong length");
        let to_tensor = |values: Vec<f64>, shape: &[usize]| -> Result<Tensor> {
            Ok(Tensor::from_vec(values, shape, device)?.to_dtype(dtype)?)
        };
        let get = |range: std::ops::Range<usize>| flat[range].iter().map(|v| v.to_f64()).collect::<Vec<f64>>();
        let mut params = ParamMap::new();
        for (i, b) in self.blocks.iter().enumerate() {
            let mut w = vec![0f64; b.c_out * b.k()];
            for o in 0..b.c_out {
                for c in 0..b.c_in {
                    for k in 0..9 {
                        w[(o * b.c_in + c) * 9 + k] = flat[b.weight + o * b.k() + k * b.c_in + c].to_f64();
                    }
                }
            }
            params.insert(block_param(i, "conv.weight"), to_tensor(w, &[b.c_out, b.c_in, 3, 3])?);
            params.insert(block_param(i, "conv.bias"), to_tensor(vec![0.0; b.c_out], &[b.c_out])?);
            params.insert(block_param(i, "bn.weight"), to_tensor(get(b.scale..b.scale + b.c_out), &[b.c_out])?);
            params.insert(block_param(i, "bn.bias"), to_tensor(get(b.shift..b.shift + b.c_out), &[b.c_out])?);
        }
        let (n, c, s) = (self.config.n_way, self.config.hidden, self.config.final_size() * self.config.final_size());
        let mut w = vec![0f64; n * c * s];
        for j in 0..n {
            for ch in 0..c {
                for p in 0..s {
                    w[j * c * s + ch * s + p] = flat[self.head_weight + j * c * s + p * c + ch].to_f64();
                }
            }
        }
        params.insert("head.weight".to_owned(), to_tensor(w, &[n, c * s])?);
        params.insert("head.bias".to_owned(), to_tensor(get(self.head_bias..self.head_bias + n), &[n])?);
        Ok(params)
    }

    /// Convert images from `[b, c, h, w]` (PyTorch order) to the engine's `[b, h, w, c]`.
    pub fn images_to_channels_last<T: Real>(&self, images: &[T]) -> Vec<T> {
        let c = self.config.in_channels;
        if c == 1 {
            return images.to_vec();
        }
        let hw = self.config.image_size * self.config.image_size;
        let mut out = vec![T::default(); images.len()];
        for (img_in, img_out) in images.chunks_exact(c * hw).zip(out.chunks_exact_mut(c * hw)) {
            for ch in 0..c {
                for p in 0..hw {
                    img_out[p * c + ch] = img_in[ch * hw + p];
                }
            }
        }
        out
    }
}

/// What the forward pass keeps of one block for the backward pass and the Hessian-vector
/// product.
#[derive(Debug, Clone)]
struct BlockCache<T> {
    /// im2col of the block's input: `[b * h * w, 9 * c_in]`.
    cols: Vec<T>,
    /// Normalised conv output: `[b * h * w, c]`.
    xhat: Vec<T>,
    /// Per-channel `1 / sqrt(var + eps)`: `[c]`.
    inv_std: Vec<T>,
    /// For each pooled output, which of its window's four rows (see [`windows`]) holds
    /// the maximum: `[b * oh * ow, c]`.
    arg: Vec<u8>,
    /// The block's output `relu(max-pool(bn(conv x)))`: `[b, oh, ow, c]`.
    out: Vec<T>,
}

/// The forward pass of one batch, with everything its gradient needs.
#[derive(Debug, Clone)]
pub struct Forward<T> {
    batch: usize,
    blocks: Vec<BlockCache<T>>,
    /// Softmax probabilities: `[batch, n_way]`.
    probs: Vec<T>,
    /// Logits: `[batch, n_way]`.
    pub logits: Vec<T>,
}

impl<T: Real> Forward<T> {
    /// Hand the buffers back to this thread's pool for later passes.
    pub fn recycle(self) {
        for b in self.blocks {
            recycle(b.cols);
            recycle(b.xhat);
            recycle(b.out);
        }
    }

    /// Number of images.
    pub fn batch(&self) -> usize {
        self.batch
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

fn argmax<T: Real>(row: &[T]) -> usize {
    let mut best = 0;
    for (j, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = j;
        }
    }
    best
}

/// What the backward pass keeps for the Hessian-vector product.
#[derive(Debug, Clone)]
pub struct Backward<T> {
    /// `d loss / d logits`: `[batch, n_way]`.
    dlogits: Vec<T>,
    /// Per block: gradient at the batch-norm output (`[b * h * w, c]`) and at the conv output.
    dy: Vec<Vec<T>>,
    dz: Vec<Vec<T>>,
}

impl<T: Real> Backward<T> {
    /// Hand the buffers back to this thread's pool for later passes.
    pub fn recycle(self) {
        self.dy.into_iter().chain(self.dz).for_each(recycle);
    }
}

/// 3x3, pad 1 im2col of `x` (`[b, h, w, c]`) into `cols` (`[b * h * w, 9 * c]`).
#[inline(always)]
fn im2col<T: Real>(x: &[T], b: usize, h: usize, w: usize, c: usize, cols: &mut [T]) {
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
}

/// The adjoint of [`im2col`]: scatter-add `cols` back into `dx` (`[b, h, w, c]`).
#[inline(always)]
fn col2im<T: Real>(cols: &[T], b: usize, h: usize, w: usize, c: usize, dx: &mut [T]) {
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
}

/// Per-channel sums of `x` (`[n, c]`) into `out` (`[c]`).
#[inline(always)]
fn channel_sums<T: Real>(x: &[T], c: usize, out: &mut [T]) {
    out.fill(T::default());
    for row in x.chunks_exact(c) {
        for (o, v) in out.iter_mut().zip(row) {
            *o += *v;
        }
    }
}

/// Per-channel sums of `x * y`.
#[inline(always)]
fn channel_dots<T: Real>(x: &[T], y: &[T], c: usize, out: &mut [T]) {
    out.fill(T::default());
    for (rx, ry) in x.chunks_exact(c).zip(y.chunks_exact(c)) {
        for ((o, a), b) in out.iter_mut().zip(rx).zip(ry) {
            *o += *a * *b;
        }
    }
}

/// The pooled outputs of block `bl`, as `(o, rows)`: `o` is the output's row in the pooled
/// `[b * oh * ow, c]` buffer, `rows` the rows of its 2x2 window in the `[b * h * w, c]` input.
/// (An iterator, not a callback, so the loop body is compiled inside the caller's SIMD level.)
#[inline(always)]
fn windows(bl: &Block, batch: usize) -> impl Iterator<Item = (usize, [usize; 4])> {
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
fn lincomb1<T: Real>(out: &mut [T], keep: &[T], x1: &[T], c1: &[T], bias: &[T], c: usize) {
    for (o, r1) in out.chunks_exact_mut(c).zip(x1.chunks_exact(c)) {
        for ((((o, k), x1), c1), b) in o.iter_mut().zip(keep).zip(r1).zip(c1).zip(bias) {
            *o = *k * *o + *c1 * *x1 + *b;
        }
    }
}

/// `out = c1 * x1 + c2 * x2 + bias`, per channel over rows of `c`.
#[inline(always)]
fn lincomb2<T: Real>(out: &mut [T], x1: &[T], c1: &[T], x2: &[T], c2: &[T], bias: &[T], c: usize) {
    for ((o, r1), r2) in out.chunks_exact_mut(c).zip(x1.chunks_exact(c)).zip(x2.chunks_exact(c)) {
        for (((((o, x1), c1), x2), c2), b) in o.iter_mut().zip(r1).zip(c1).zip(r2).zip(c2).zip(bias) {
            *o = *c1 * *x1 + *c2 * *x2 + *b;
        }
    }
}

/// `out = keep * out + sum_i c_i * x_i + bias` for four inputs, per channel over rows of `c`.
#[inline(always)]
fn lincomb4<T: Real>(out: &mut [T], keep: &[T], xs: [&[T]; 4], cs: [&[T]; 4], bias: &[T], c: usize) {
    let rows = xs[0].chunks_exact(c).zip(xs[1].chunks_exact(c)).zip(xs[2].chunks_exact(c)).zip(xs[3].chunks_exact(c));
    for (o, (((r0, r1), r2), r3)) in out.chunks_exact_mut(c).zip(rows) {
        let lanes = o.iter_mut().zip(keep).zip(bias).zip(r0.iter().zip(cs[0])).zip(r1.iter().zip(cs[1]));
        for (((((o, k), b), (x0, c0)), (x1, c1)), ((x2, c2), (x3, c3))) in
            lanes.zip(r2.iter().zip(cs[2]).zip(r3.iter().zip(cs[3])))
        {
            *o = *k * *o + *c0 * *x0 + *c1 * *x1 + *c2 * *x2 + *c3 * *x3 + *b;
        }
    }
}

/// The pooling layer's backward pass (and its forward-mode twin): route the gradient `d` at
/// each pooled output to its window's arg-max row where the ReLU passed it; zeros elsewhere.
#[inline(always)]
fn unpool<T: Real>(bl: &Block, batch: usize, cache: &BlockCache<T>, d: &[T], dy: &mut [T]) {
    let (c, zero) = (bl.c_out, T::default());
    if bl.h % 2 == 1 || bl.w % 2 == 1 {
        dy.fill(zero); // rows outside every window
    }
    for (o, rows) in windows(bl, batch) {
        let (d, a, k) = (&d[o * c..o * c + c], &cache.out[o * c..o * c + c], &cache.arg[o * c..o * c + c]);
        for (j, r) in rows.into_iter().enumerate() {
            let dst = &mut dy[r * c..r * c + c];
            for (((dst, d), a), k) in dst.iter_mut().zip(d).zip(a).zip(k) {
                *dst = if *k == j as u8 && *a > zero { *d } else { zero };
            }
        }
    }
}

/// The forward pass of `images` (`[batch, h, w, c_in]`, channels last) at `theta`.
#[inline(always)]
pub fn forward<T: Real>(layout: &Layout, theta: &[T], images: &[T], batch: usize) -> Forward<T> {
    assert_eq!(theta.len(), layout.len, "parameter vector of the wrong length");
    assert_eq!(images.len(), batch * layout.image_len(), "images of the wrong size");
    let eps = T::from_f64(BN_EPS);
    let mut blocks: Vec<BlockCache<T>> = Vec::with_capacity(layout.blocks.len());
    for (i, bl) in layout.blocks.iter().enumerate() {
        let input: &[T] = if i == 0 { images } else { &blocks[i - 1].out };
        let (n, c) = (batch * bl.pixels(), bl.c_out);
        let mut cols = scratch(n * bl.k());
        im2col(input, batch, bl.h, bl.w, bl.c_in, &mut cols);
        let mut z = scratch(n * c);
        matmul(&mut z, &cols, &theta[bl.weight..], n, c, bl.k(), false, true, false);
        // Batch norm with the batch's statistics (biased variance).
        let inv_n = T::from_f64(1.0 / n as f64);
        let mut mean = vec![T::default(); c];
        channel_sums(&z, c, &mut mean);
        mean.iter_mut().for_each(|m| *m = *m * inv_n);
        for row in z.chunks_exact_mut(c) {
            for (v, m) in row.iter_mut().zip(&mean) {
                *v -= *m;
            }
        }
        let mut var = vec![T::default(); c];
        channel_dots(&z, &z, c, &mut var);
        let inv_std: Vec<T> = var.iter().map(|v| T::from_f64(1.0) / (*v * inv_n + eps).sqrt()).collect();
        for row in z.chunks_exact_mut(c) {
            for (v, s) in row.iter_mut().zip(&inv_std) {
                *v = *v * *s;
            }
        }
        let xhat = z;
        // Max-pool of y = scale * xhat + shift, then ReLU.
        let (scale, shift) = (&theta[bl.scale..bl.scale + c], &theta[bl.shift..bl.shift + c]);
        let mut arg = vec![0u8; batch * bl.pooled() * c];
        let mut out = scratch(batch * bl.pooled() * c);
        for (o, rows) in windows(bl, batch) {
            let x: [&[T]; 4] = std::array::from_fn(|j| &xhat[rows[j] * c..rows[j] * c + c]);
            let (o_arg, o_out) = (&mut arg[o * c..o * c + c], &mut out[o * c..o * c + c]);
            for ch in 0..c {
                // First maximum wins, like the candle op.
                let (mut best, mut k) = (scale[ch] * x[0][ch] + shift[ch], 0u8);
                for (j, xj) in x.iter().enumerate().skip(1) {
                    let y = scale[ch] * xj[ch] + shift[ch];
                    if y > best {
                        best = y;
                        k = j as u8;
                    }
                }
                o_arg[ch] = k;
                o_out[ch] = if best > T::default() { best } else { T::default() };
            }
        }
        blocks.push(BlockCache { cols, xhat, inv_std, arg, out });
    }
    // Head: logits = features · W^T + b, then a stable softmax.
    let n_way = layout.config.n_way;
    let features = layout.config.features();
    let h = &blocks.last().expect("depth >= 1").out;
    let mut logits = vec![T::default(); batch * n_way];
    matmul(&mut logits, h, &theta[layout.head_weight..], batch, n_way, features, false, true, false);
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
    Forward { batch, blocks, probs, logits }
}

/// The gradient of the mean cross-entropy against `labels` at `theta`, written into `grad`
/// (overwritten), from a forward pass at the same `theta`. With `keep`, also returns what
/// [`hvp`] needs.
#[inline(always)]
pub fn backward<T: Real>(
    layout: &Layout,
    theta: &[T],
    fwd: &Forward<T>,
    labels: &[u32],
    grad: &mut [T],
    keep: bool,
) -> Option<Backward<T>> {
    assert_eq!(grad.len(), layout.len, "gradient vector of the wrong length");
    assert_eq!(labels.len(), fwd.batch, "one label per image");
    let batch = fwd.batch;
    let n_way = layout.config.n_way;
    let features = layout.config.features();
    grad.fill(T::default());
    // d loss / d logits = (softmax - one_hot) / batch.
    let inv_b = T::from_f64(1.0 / batch as f64);
    let mut dlogits = fwd.probs.clone();
    for (i, &y) in labels.iter().enumerate() {
        dlogits[i * n_way + y as usize] -= T::from_f64(1.0);
    }
    dlogits.iter_mut().for_each(|d| *d = *d * inv_b);
    let h = &fwd.blocks.last().expect("depth >= 1").out;
    let (gw, gb) = grad[layout.head_weight..].split_at_mut(n_way * features);
    matmul(gw, &dlogits, h, n_way, features, batch, true, false, false);
    channel_sums(&dlogits, n_way, &mut gb[..n_way]);
    let mut da = vec![T::default(); batch * features];
    matmul(&mut da, &dlogits, &theta[layout.head_weight..], batch, features, n_way, false, false, false);

    let depth = layout.blocks.len();
    let (mut dys, mut dzs) = (vec![Vec::new(); depth], vec![Vec::new(); depth]);
    for i in (0..depth).rev() {
        let bl = &layout.blocks[i];
        let cache = &fwd.blocks[i];
        let (n, c) = (batch * bl.pixels(), bl.c_out);
        // Through ReLU and max-pool: route each output's gradient to its arg-max row.
        let mut dy = scratch(n * c);
        unpool(bl, batch, cache, &da, &mut dy);
        // Batch norm.
        let (mut dscale, mut dshift) = (vec![T::default(); c], vec![T::default(); c]);
        channel_dots(&dy, &cache.xhat, c, &mut dscale);
        channel_sums(&dy, c, &mut dshift);
        let scale = &theta[bl.scale..bl.scale + c];
        let inv_n = T::from_f64(1.0 / n as f64);
        let m1: Vec<T> = (0..c).map(|ch| scale[ch] * dshift[ch] * inv_n).collect();
        let m2: Vec<T> = (0..c).map(|ch| scale[ch] * dscale[ch] * inv_n).collect();
        // dz = s (scale dy - m1 - xhat m2)
        let s = &cache.inv_std;
        let a: Vec<T> = (0..c).map(|ch| s[ch] * scale[ch]).collect();
        let b: Vec<T> = (0..c).map(|ch| -s[ch] * m1[ch]).collect();
        let e: Vec<T> = (0..c).map(|ch| -s[ch] * m2[ch]).collect();
        let mut dz = scratch(n * c);
        lincomb2(&mut dz, &dy, &a, &cache.xhat, &e, &b, c);
        grad[bl.scale..bl.scale + c].copy_from_slice(&dscale);
        grad[bl.shift..bl.shift + c].copy_from_slice(&dshift);
        // Conv: dW = dz^T cols; dx = col2im(dz W).
        matmul(&mut grad[bl.weight..bl.weight + c * bl.k()], &dz, &cache.cols, c, bl.k(), n, true, false, false);
        if i > 0 {
            let mut dcols = scratch(n * bl.k());
            matmul(&mut dcols, &dz, &theta[bl.weight..], n, bl.k(), c, false, false, false);
            recycle(std::mem::replace(&mut da, scratch(n * bl.c_in)));
            col2im(&dcols, batch, bl.h, bl.w, bl.c_in, &mut da);
            recycle(dcols);
        }
        if keep {
            dys[i] = dy;
            dzs[i] = dz;
        } else {
            recycle(dy);
            recycle(dz);
        }
    }
    recycle(da);
    keep.then_some(Backward { dlogits, dy: dys, dz: dzs })
}

/// The Hessian of the loss at `theta` times `v`: the derivative of [`backward`]'s gradient in
/// direction `v`, computed exactly by forward-mode differentiation of the forward and backward
/// passes. `fwd` and `bwd` come from [`forward`] and [`backward`] (with `keep`) at `theta`, and
/// `grad` is the gradient [`backward`] wrote there. The result is written into `out`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn hvp<T: Real>(
    layout: &Layout,
    theta: &[T],
    fwd: &Forward<T>,
    bwd: &Backward<T>,
    grad: &[T],
    v: &[T],
    out: &mut [T],
) {
    assert!(theta.len() == layout.len && v.len() == layout.len && out.len() == layout.len && grad.len() == layout.len);
    let batch = fwd.batch;
    let depth = layout.blocks.len();
    let zero = T::default();
    out.fill(zero);
    // Forward mode: R(x) = d x / d eps at theta + eps v, block by block.
    let mut r_cols: Vec<Vec<T>> = vec![Vec::new(); depth];
    let mut r_xhat: Vec<Vec<T>> = vec![Vec::new(); depth];
    let mut r_inv_std_rel: Vec<Vec<T>> = vec![Vec::new(); depth]; // R(inv_std) / inv_std
    let mut r_x: Vec<T> = Vec::new(); // R of the block input (the images do not move)
    for (i, bl) in layout.blocks.iter().enumerate() {
        let cache = &fwd.blocks[i];
        let (n, c) = (batch * bl.pixels(), bl.c_out);
        let mut rz = scratch(n * c);
        matmul(&mut rz, &cache.cols, &v[bl.weight..], n, c, bl.k(), false, true, false);
        if i > 0 {
            let mut rc = scratch(n * bl.k());
            im2col(&r_x, batch, bl.h, bl.w, bl.c_in, &mut rc);
            matmul(&mut rz, &rc, &theta[bl.weight..], n, c, bl.k(), false, true, true);
            r_cols[i] = rc;
        }
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
        r_inv_std_rel[i] = (0..c).map(|ch| -s[ch] * q[ch]).collect();
        // R(y) = scale R(xhat) + v_scale xhat + v_shift, read at the arg-max rows; ReLU mask.
        let scale = &theta[bl.scale..bl.scale + c];
        let (v_scale, v_shift) = (&v[bl.scale..bl.scale + c], &v[bl.shift..bl.shift + c]);
        let mut r_out = scratch(cache.out.len());
        for (o, rows) in windows(bl, batch) {
            let (a, k) = (&cache.out[o * c..o * c + c], &cache.arg[o * c..o * c + c]);
            let rx: [&[T]; 4] = std::array::from_fn(|j| &rz[rows[j] * c..rows[j] * c + c]);
            let x: [&[T]; 4] = std::array::from_fn(|j| &cache.xhat[rows[j] * c..rows[j] * c + c]);
            let ro = &mut r_out[o * c..o * c + c];
            for ch in 0..c {
                let (mut r_sel, mut x_sel) = (rx[0][ch], x[0][ch]);
                for j in 1..4 {
                    if k[ch] == j as u8 {
                        (r_sel, x_sel) = (rx[j][ch], x[j][ch]);
                    }
                }
                ro[ch] = if a[ch] > zero { scale[ch] * r_sel + v_scale[ch] * x_sel + v_shift[ch] } else { zero };
            }
        }
        r_xhat[i] = rz;
        recycle(std::mem::replace(&mut r_x, r_out));
    }
    // Head, forward mode: R(logits) = R(h) W^T + h V^T + v_b; R(softmax); R(dlogits).
    let n_way = layout.config.n_way;
    let features = layout.config.features();
    let h = &fwd.blocks[depth - 1].out;
    let rh = r_x;
    let mut r_logits = vec![zero; batch * n_way];
    matmul(&mut r_logits, &rh, &theta[layout.head_weight..], batch, n_way, features, false, true, false);
    matmul(&mut r_logits, h, &v[layout.head_weight..], batch, n_way, features, false, true, true);
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
        matmul(ow, &r_dlogits, h, n_way, features, batch, true, false, false);
        matmul(ow, dlogits, &rh, n_way, features, batch, true, false, true);
        channel_sums(&r_dlogits, n_way, &mut ob[..n_way]);
    }
    let mut r_da = vec![zero; batch * features];
    matmul(&mut r_da, &r_dlogits, &theta[layout.head_weight..], batch, features, n_way, false, false, false);
    matmul(&mut r_da, dlogits, &v[layout.head_weight..], batch, features, n_way, false, false, true);

    for i in (0..depth).rev() {
        let bl = &layout.blocks[i];
        let cache = &fwd.blocks[i];
        let (n, c) = (batch * bl.pixels(), bl.c_out);
        let (dy, dz) = (&bwd.dy[i], &bwd.dz[i]);
        let mut r_dy = scratch(n * c);
        unpool(bl, batch, cache, &r_da, &mut r_dy);
        let scale = &theta[bl.scale..bl.scale + c];
        let v_scale = &v[bl.scale..bl.scale + c];
        let (dscale, dshift) = (&grad[bl.scale..bl.scale + c], &grad[bl.shift..bl.shift + c]);
        let rx = &r_xhat[i];
        // R(dscale) = sum(R(dy) xhat + dy R(xhat)); R(dshift) = sum(R(dy)).
        let (mut r_dscale, mut r_dshift, mut tmp) = (vec![zero; c], vec![zero; c], vec![zero; c]);
        channel_dots(&r_dy, &cache.xhat, c, &mut r_dscale);
        channel_dots(dy, rx, c, &mut tmp);
        r_dscale.iter_mut().zip(&tmp).for_each(|(a, b)| *a += *b);
        channel_sums(&r_dy, c, &mut r_dshift);
        let inv_n = T::from_f64(1.0 / n as f64);
        let m2: Vec<T> = (0..c).map(|ch| scale[ch] * dscale[ch] * inv_n).collect();
        let r_m1: Vec<T> = (0..c).map(|ch| (v_scale[ch] * dshift[ch] + scale[ch] * r_dshift[ch]) * inv_n).collect();
        let r_m2: Vec<T> = (0..c).map(|ch| (v_scale[ch] * dscale[ch] + scale[ch] * r_dscale[ch]) * inv_n).collect();
        // R(dz) = R(s)/s dz + s (R(dxhat) - R(m1) - R(xhat) m2 - xhat R(m2)), R(dxhat) = v_scale dy + scale R(dy).
        let s = &cache.inv_std;
        let rs = &r_inv_std_rel[i];
        // = s scale R(dy) + R(s)/s dz + s v_scale dy - s m2 R(xhat) - s R(m2) xhat - s R(m1),
        // computed in place over R(dy).
        let keep: Vec<T> = (0..c).map(|ch| s[ch] * scale[ch]).collect();
        let c_dy: Vec<T> = (0..c).map(|ch| s[ch] * v_scale[ch]).collect();
        let c_rx: Vec<T> = (0..c).map(|ch| -s[ch] * m2[ch]).collect();
        let c_x: Vec<T> = (0..c).map(|ch| -s[ch] * r_m2[ch]).collect();
        let bias: Vec<T> = (0..c).map(|ch| -s[ch] * r_m1[ch]).collect();
        let mut r_dz = r_dy;
        lincomb4(&mut r_dz, &keep, [dz, dy, rx, &cache.xhat], [rs, &c_dy, &c_rx, &c_x], &bias, c);
        out[bl.scale..bl.scale + c].copy_from_slice(&r_dscale);
        out[bl.shift..bl.shift + c].copy_from_slice(&r_dshift);
        // R(dW) = R(dz)^T cols + dz^T R(cols); R(dx) = col2im(R(dz) W + dz V).
        let ow = &mut out[bl.weight..bl.weight + c * bl.k()];
        matmul(ow, &r_dz, &cache.cols, c, bl.k(), n, true, false, false);
        if i > 0 {
            matmul(ow, dz, &r_cols[i], c, bl.k(), n, true, false, true);
            let mut r_dcols = scratch(n * bl.k());
            matmul(&mut r_dcols, &r_dz, &theta[bl.weight..], n, bl.k(), c, false, false, false);
            matmul(&mut r_dcols, dz, &v[bl.weight..], n, bl.k(), c, false, false, true);
            recycle(std::mem::replace(&mut r_da, scratch(n * bl.c_in)));
            col2im(&r_dcols, batch, bl.h, bl.w, bl.c_in, &mut r_da);
            recycle(r_dcols);
        }
        recycle(r_dz);
    }
    recycle(r_da);
    r_cols.into_iter().chain(r_xhat).for_each(recycle);
}

/// One task's images and labels, images channels last (see [`Layout::images_to_channels_last`]).
#[derive(Debug, Clone, Copy)]
pub struct TaskData<'a, T> {
    /// Support images: `[n_support, h, w, c]`.
    pub support: &'a [T],
    /// Support labels.
    pub support_labels: &'a [u32],
    /// Query images: `[n_query, h, w, c]`.
    pub query: &'a [T],
    /// Query labels.
    pub query_labels: &'a [u32],
}

/// Result of [`task_meta_gradient`].
#[derive(Debug, Clone)]
pub struct TaskOutcome<T> {
    /// Gradient of the query loss after adaptation with respect to the initial parameters
    /// (second order) or to the fast weights (first order).
    pub grad: Vec<T>,
    /// Query loss after adaptation.
    pub loss: f64,
    /// Query images classified correctly after adaptation.
    pub correct: usize,
}

/// `steps` SGD steps of `inner_lr` on the support set from `theta`, updating the parameters
/// `from..` of the flat layout (0: all; [`Layout::head_start`]: the head only, the rest frozen);
/// returns the fast weights, and with `keep` the forward/backward caches and gradients of every
/// step (for [`task_meta_gradient`]).
#[allow(clippy::type_complexity, clippy::too_many_arguments)]
#[inline(always)]
pub fn adapt<T: Real>(
    layout: &Layout,
    theta: &[T],
    support: &[T],
    labels: &[u32],
    inner_lr: f64,
    steps: usize,
    keep: bool,
    from: usize,
) -> (Vec<T>, Vec<(Vec<T>, Forward<T>, Backward<T>, Vec<T>)>) {
    let lr = T::from_f64(inner_lr);
    let mut fast = theta.to_vec();
    let mut kept = Vec::new();
    let mut grad = vec![T::default(); layout.len];
    for _ in 0..steps {
        let fwd = forward(layout, &fast, support, labels.len());
        let bwd = backward(layout, &fast, &fwd, labels, &mut grad, keep);
        let mut next = fast.clone();
        next[from..].iter_mut().zip(&grad[from..]).for_each(|(w, g)| *w -= lr * *g);
        match bwd {
            Some(bwd) => kept.push((std::mem::replace(&mut fast, next), fwd, bwd, grad.clone())),
            None => {
                fast = next;
                fwd.recycle();
            }
        }
    }
    (fast, kept)
}

/// Define `$name`, which runs `$body` compiled for the CPU's best vector extension, chosen at
/// run time: AVX-512, AVX2 + FMA, or the baseline. `$body` must call only `#[inline(always)]`
/// engine functions so that all of it is compiled with the extension: the elementwise passes
/// (batch norm, pooling, im2col) then use 16- or 8-wide vectors. Results are identical at every
/// level, since nothing is reassociated.
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident<T: Real>($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty $body:block) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name<T: Real>($($arg: $ty),*) -> $ret {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body<T: Real>($($arg: $ty),*) -> $ret $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn v4<T: Real>($($arg: $ty),*) -> $ret {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn v3<T: Real>($($arg: $ty),*) -> $ret {
                    body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512dq")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                {
                    // SAFETY: the features were detected on this CPU just above.
                    return unsafe { v4($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: as above.
                    return unsafe { v3($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

multiversion! {
    /// One task's MAML meta-gradient: adapt on the support set, take the query loss's gradient
    /// at the fast weights, and (second order) pull it back through every inner step with
    /// Hessian-vector products.
    pub fn task_meta_gradient<T: Real>(
        layout: &Layout,
        theta: &[T],
        task: &TaskData<'_, T>,
        inner_lr: f64,
        steps: usize,
        second_order: bool,
    ) -> TaskOutcome<T> {
            let (fast, kept) = adapt(layout, theta, task.support, task.support_labels, inner_lr, steps, second_order, 0);
            let fwd = forward(layout, &fast, task.query, task.query_labels.len());
            let mut grad = vec![T::default(); layout.len];
            backward(layout, &fast, &fwd, task.query_labels, &mut grad, false);
            if second_order {
                let lr = T::from_f64(inner_lr);
                let mut hv = vec![T::default(); layout.len];
                for (theta_i, f, b, g) in kept.iter().rev() {
                    hvp(layout, theta_i, f, b, g, &grad, &mut hv);
                    grad.iter_mut().zip(&hv).for_each(|(v, h)| *v -= lr * *h);
                }
    }
    for (_, f, b, _) in kept {
        f.recycle();
        b.recycle();
    }
    let (loss, correct) = (fwd.loss(task.query_labels), fwd.correct(task.query_labels));
    fwd.recycle();
    TaskOutcome { grad, loss, correct }
    }
}

multiversion! {
    /// Query logits (`[n_query, n_way]`) after `steps` inner steps on the support set, of every
    /// parameter or (`head_only`) of the linear head alone, the feature extractor frozen.
    pub fn adapted_logits<T: Real>(
        layout: &Layout,
        theta: &[T],
        support: &[T],
        support_labels: &[u32],
        query: &[T],
        n_query: usize,
        inner_lr: f64,
        steps: usize,
        head_only: bool,
    ) -> Vec<T> {
            let from = if head_only { layout.head_start() } else { 0 };
            let (fast, _) = adapt(layout, theta, support, support_labels, inner_lr, steps, false, from);
            let fwd = forward(layout, &fast, query, n_query);
            let logits = fwd.logits.clone();
            fwd.recycle();
            logits
    }
}
