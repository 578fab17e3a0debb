//! Run-time selection of the CPU's best vector extension for a whole computation.
//!
//! [`with_best_simd`] calls its closure from a function compiled for AVX-512, or for AVX2 +
//! FMA, or for the baseline, whichever this CPU has. Since the closure and everything it calls
//! are `#[inline(always)]`, all of it is compiled again inside each of those functions: the
//! elementwise passes (batch norm, pooling, im2col) then use 16- or 8-wide vectors. Results are
//! identical at every level, since nothing is reassociated. (The matrix products choose their
//! own kernels inside the `gemm` crate.)

/// Run `f` compiled for the best vector extension this CPU has. Write `f` as an
/// `#[inline(always)]` closure that calls only `#[inline(always)]` functions (the engine's
/// passes are), or it runs at the baseline level.
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
