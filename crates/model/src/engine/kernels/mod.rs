//! The elementwise kernels of the engine's passes over channels-last buffers: im2col and its
//! adjoint, per-channel sums and dot products, fused per-channel linear combinations, the
//! pooling windows and the unpooling of gradients. All `#[inline(always)]`, so they are
//! compiled inside the caller's SIMD level (see [`super::simd`]).

mod columns;
mod moments;
mod pool;

#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(test)]
mod tests;

pub use columns::{col2im, im2col};
pub(crate) use moments::PARTIAL_ROWS;
pub use moments::{Moments, channel_dots, channel_sums};
pub use pool::{
    lincomb1, lincomb2, normalize_pool, pooled_sums, unpool, unpool_lincomb, unpool_lincomb4, unpool_sums, windows,
};

use super::real::Real;

/// Index of the first maximum of `row`.
#[inline(always)]
pub fn argmax<T: Real>(row: &[T]) -> usize {
    let mut best = 0;
    for (j, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = j;
        }
    }
    best
}
