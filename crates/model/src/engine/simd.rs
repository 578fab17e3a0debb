//! Run-time selection of the CPU's best vector extension, and where the engine's generic code
//! is compiled.
//!
//! [`with_best_simd`] calls its closure from a function compiled for AVX-512, or for AVX2 +
//! FMA, or for the baseline, whichever this CPU has. Since the closure and everything it calls
//! are `#[inline(always)]`, all of it is compiled again inside each of those functions: the
//! elementwise passes (batch norm, pooling, im2col) then use 16- or 8-wide vectors. Results are
//! identical at every level, since nothing is reassociated. (The matrix products choose their
//! own kernels inside the `gemm` crate; the hand-written AVX-512 kernels check for it
//! themselves.)
//!
//! The line is drawn per pass, not around a caller's whole computation: each of the engine's
//! passes (the forward pass, the backward pass, the Hessian-vector product) is one dispatch,
//! made by its [`Real`](super::Real) hook (`forward_pass`, `backward_pass`, `hvp_pass`). Those
//! hooks are ordinary (non-generic) functions of `f32` and `f64` in this crate, so the engine
//! is instantiated and optimised here, once: `f32` for each of the three levels, `f64` (for
//! reference checks) at the baseline alone ([`at_baseline`]). Callers in other crates, generic
//! or not, compile a call. (Wrapping a whole MAML task, forward, backward and Hessian-vector
//! passes, in one dispatch made LLVM optimise a few functions of that size in the downstream
//! crate, per level and float type: a 31-minute build; see `docs/performance.md`, "Build
//! time".)

/// Run `f` compiled for the best vector extension this CPU has. Write `f` as an
/// `#[inline(always)]` closure that calls only `#[inline(always)]` functions (the engine's
/// passes are), or it runs at the baseline level. Keep what `f` inlines to one pass's worth of
/// code: each call is compiled three times, as one function each.
#[inline(always)]
pub fn with_best_simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
        fn v4<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        #[target_feature(enable = "avx2,fma")]
        fn v3<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx512vl")
        {
            // SAFETY: the features v4 is compiled for were detected on this CPU just above.
            return unsafe { v4(f) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: as above, for v3's features.
            return unsafe { v3(f) };
        }
    }
    f()
}

/// Run `f` compiled for the baseline alone: [`with_best_simd`]'s stand-in where speed does not
/// matter (the `f64` passes), so the code is compiled once instead of three times.
#[inline(always)]
pub fn at_baseline<R>(f: impl FnOnce() -> R) -> R {
    f()
}
