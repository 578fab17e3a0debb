//! The f32 fast path's one gate. A kernel written for `f32` in AVX-512 registers runs when the
//! engine's `T` is `f32` and the CPU has AVX-512F: [`F32Avx512::for_type`] checks both, and
//! its token is the only way the engine reinterprets a `T` slice as `f32`.

use std::any::TypeId;

use super::real::Real;

/// Proof that the engine's float type is `f32` and this CPU runs AVX-512F.
#[derive(Debug, Clone, Copy)]
pub(crate) struct F32Avx512(());

impl F32Avx512 {
    /// The token when `T` is `f32` and the CPU has AVX-512F (the detection is cached by std);
    /// `None` otherwise (and always off x86-64).
    #[inline(always)]
    pub(crate) fn for_type<T: Real>() -> Option<F32Avx512> {
        #[cfg(target_arch = "x86_64")]
        if TypeId::of::<T>() == TypeId::of::<f32>() && std::arch::is_x86_feature_detected!("avx512f") {
            return Some(F32Avx512(()));
        }
        None
    }

    /// `x` as the `f32` slice it is.
    #[inline(always)]
    pub(crate) fn cast<T: Real>(self, x: &[T]) -> &[f32] {
        assert_eq!(TypeId::of::<T>(), TypeId::of::<f32>(), "the f32 fast path on another type");
        // SAFETY: T is f32 (asserted just above; the assertion folds away), so this is the same
        // memory under its own type.
        unsafe { std::slice::from_raw_parts(x.as_ptr().cast::<f32>(), x.len()) }
    }

    /// [`F32Avx512::cast`] for a mutable slice.
    #[inline(always)]
    pub(crate) fn cast_mut<T: Real>(self, x: &mut [T]) -> &mut [f32] {
        assert_eq!(TypeId::of::<T>(), TypeId::of::<f32>(), "the f32 fast path on another type");
        // SAFETY: as in `cast`; the borrow of `x` is handed on, so no alias remains.
        unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr().cast::<f32>(), x.len()) }
    }
}
