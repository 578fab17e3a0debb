//! [`Real`]: the float types the engine computes in (`f32` for speed, `f64` for
//! finite-difference tests), with the per-type hooks the rest of the engine needs, among them
//! the engine's passes compiled at that type (see [`super::simd`] for where the generic code is
//! instantiated and where the vector extension is chosen).

use std::ops::{Add, AddAssign, Div, Mul, Neg, Sub, SubAssign};

use candle_core::{DType, Tensor};

use super::backward::{self, Backward, Upstream};
use super::buffer::Pooled;
use super::forward::{self, Forward};
use super::hvp;
use super::layout::Layout;
use super::simd::{at_baseline, with_best_simd};
use crate::error::Result;

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
    + Pooled
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

    // The engine's passes at this type: the only instances of the engine's generic code,
    // compiled here in `fewshot-model` (`f32` once per vector extension, `f64` at the baseline
    // alone) so that crates calling [`super::forward`] and the rest link them instead of
    // compiling the engine again. Reach them through those functions.

    /// [`super::forward`] (`lean`: [`super::forward_for_gradient`]) at this type.
    #[doc(hidden)]
    fn forward_pass(layout: &Layout, theta: &[Self], images: &[Self], batch: usize, lean: bool) -> Forward<Self>;
    /// [`super::backward`] (`keep`), [`super::gradient`] or [`super::features_gradient`] at
    /// this type.
    #[doc(hidden)]
    fn backward_pass(
        layout: &Layout,
        theta: &[Self],
        fwd: &Forward<Self>,
        upstream: Upstream<'_, Self>,
        grad: &mut [Self],
        keep: bool,
    ) -> Backward<Self>;
    /// [`super::hvp`] at this type.
    #[doc(hidden)]
    #[allow(clippy::too_many_arguments)]
    fn hvp_pass(
        layout: &Layout,
        theta: &[Self],
        fwd: &Forward<Self>,
        bwd: &Backward<Self>,
        grad: &[Self],
        v: &[Self],
        out: &mut [Self],
    );
}

/// `Real` for `$t`, whose passes run through `$level` (the dispatcher that picks the vector
/// extension they are compiled for, see [`super::simd`]).
macro_rules! real {
    ($t:ty, $d:expr, $level:ident) => {
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
            fn forward_pass(layout: &Layout, theta: &[$t], images: &[$t], batch: usize, lean: bool) -> Forward<$t> {
                $level(
                    #[inline(always)]
                    || forward::pass(layout, theta, images, batch, lean),
                )
            }
            fn backward_pass(
                layout: &Layout,
                theta: &[$t],
                fwd: &Forward<$t>,
                upstream: Upstream<'_, $t>,
                grad: &mut [$t],
                keep: bool,
            ) -> Backward<$t> {
                $level(
                    #[inline(always)]
                    || backward::pass(layout, theta, fwd, upstream, grad, keep),
                )
            }
            fn hvp_pass(
                layout: &Layout,
                theta: &[$t],
                fwd: &Forward<$t>,
                bwd: &Backward<$t>,
                grad: &[$t],
                v: &[$t],
                out: &mut [$t],
            ) {
                $level(
                    #[inline(always)]
                    || hvp::pass(layout, theta, fwd, bwd, grad, v, out),
                )
            }
        }
    };
}
// f32 is what trains: its passes are compiled for AVX-512, AVX2 + FMA and the baseline. f64
// is for reference checks (finite differences, the candle comparison): correct, not fast.
real!(f32, DType::F32, with_best_simd);
real!(f64, DType::F64, at_baseline);
