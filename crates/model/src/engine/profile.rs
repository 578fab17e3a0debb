//! Where the engine's time goes, by kind of work, summed over threads: matrix products,
//! im2col/col2im, and the elementwise passes (batch-norm sums and dot products, fused linear
//! combinations, unpooling); everything else (pooling, softmax, bookkeeping) is the rest.
//! Counted only with the `profile` feature (`cargo xtask bench --time-split`); without it
//! [`timed`] is the bare call and [`take`] returns `None`.

/// A kind of work the engine times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// Matrix products.
    Gemm = 0,
    /// im2col and col2im.
    Im2col = 1,
    /// Elementwise passes over activations.
    Elementwise = 2,
}

#[cfg(feature = "profile")]
static NANOS: [std::sync::atomic::AtomicU64; 3] =
    [std::sync::atomic::AtomicU64::new(0), std::sync::atomic::AtomicU64::new(0), std::sync::atomic::AtomicU64::new(0)];

/// Run `f`, adding its time to `work`'s total (with the `profile` feature).
#[inline(always)]
pub fn timed<R>(work: Work, f: impl FnOnce() -> R) -> R {
    #[cfg(feature = "profile")]
    {
        let start = std::time::Instant::now();
        let r = f();
        NANOS[work as usize].fetch_add(start.elapsed().as_nanos() as u64, std::sync::atomic::Ordering::Relaxed);
        r
    }
    #[cfg(not(feature = "profile"))]
    {
        let _ = work;
        f()
    }
}

/// Seconds spent in gemm, im2col and elementwise passes since the last call (summed over
/// threads), resetting the counters; `None` without the `profile` feature.
pub fn take() -> Option<[f64; 3]> {
    #[cfg(feature = "profile")]
    {
        let s = |i: usize| NANOS[i].swap(0, std::sync::atomic::Ordering::Relaxed) as f64 * 1e-9;
        Some([s(0), s(1), s(2)])
    }
    #[cfg(not(feature = "profile"))]
    {
        None
    }
}
