//! The native engine: the same net as [`crate::forward`], written by hand on flat buffers for
//! one task at a time, with its gradient and an exact Hessian-vector product.
//!
//! candle's autograd builds a graph of small tensors per op; on a task of 10 images most of
//! its time goes to allocating, zeroing and walking that graph. Here the whole net is a few
//! matrix products (im2col + [`gemm`](https://docs.rs/gemm)) and fused elementwise passes over
//! channels-last buffers, and second order is a Hessian-vector product by forward-mode
//! differentiation of the backward pass (Pearlmutter's R-operator), not a graph of the
//! gradient. The training algorithms built on it (MAML's inner loop and meta-gradient) live in
//! `fewshot-meta`; this module knows one pass of the net and its derivatives:
//!
//! - [`forward`] keeps a [`Forward`]; [`gradient`] writes the loss gradient; [`backward`] also
//!   keeps a [`Backward`], from which [`hvp`] computes `H v`.
//! - [`Layout`] places parameters in the flat vector: images and activations are
//!   `[b, h, w, c]`; a conv weight is `[c_out, 3, 3, c_in]` (so im2col rows are contiguous
//!   channel runs); the head sees each image's features in `(h, w, c)` order.
//!   [`Layout::pack`] and [`Layout::unpack`] convert to and from the PyTorch-layout
//!   [`crate::ParamMap`].
//! - Everything is generic over [`Real`] (`f32` for speed, `f64` for finite-difference
//!   tests), but each pass is instantiated once, here, behind [`Real`]'s per-type hooks: `f32`
//!   compiled for the CPU's best vector extension (chosen at run time per pass, see
//!   [`with_best_simd`]), `f64` at the baseline. Inside a pass everything is
//!   `#[inline(always)]`; across passes nothing is, so callers in other crates link the passes
//!   instead of compiling them.
//! - Large buffers come from a per-thread pool and go back to it when dropped ([`Buffer`]).
//!
//! Files: `real` (the float trait, and the per-type hooks that instantiate the passes),
//! `buffer` (the pool), `gemm` (matrix products), `conv` (a block's convolution and its
//! derivatives, a few images at a time), `winograd` (F(2x2, 3x3) for the multi-channel blocks'
//! convolutions and their derivatives), `direct` (the first block's convolution and weight
//! gradient in AVX-512 registers), `fast_f32` (the one gate of the f32 AVX-512 kernels), `layout`, `kernels` (elementwise passes), `patches` (the
//! first block's input-patch moments), `forward`, `backward`, `hvp`, `simd` (the dispatcher),
//! `profile` (time per kind of work, with the `profile` feature).

mod backward;
mod buffer;
mod conv;
mod direct;
mod fast_f32;
mod forward;
mod gemm;
mod hvp;
mod kernels;
mod layout;
mod patches;
pub mod profile;
mod real;
mod simd;
mod winograd;

pub use backward::{Backward, Upstream, backward, features_gradient, gradient};
pub use buffer::{Buffer, Pooled};
pub use conv::{ConvAlgorithm, conv_algorithm, set_conv_algorithm};
pub use forward::{Forward, forward, forward_for_gradient};
pub use gemm::{Out, matmul_nn, matmul_nt, matmul_tn};
pub use hvp::hvp;
pub use layout::Layout;
pub use real::Real;
pub use simd::with_best_simd;
