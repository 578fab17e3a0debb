//! [`Real`]: the float types the engine computes in (`f32` for speed, `f64` for
//! finite-difference tests), with the per-type hooks the rest of the engine needs.

use std::ops::{Add, AddAssign, Div, Mul, Neg, Sub, SubAssign};

use candle_core::{DType, Tensor};

use super::buffer::Pooled;
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
        }
    };
}
real!(f32, DType::F32);
real!(f64, DType::F64);
