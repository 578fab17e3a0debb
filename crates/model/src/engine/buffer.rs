//! [`Buffer`]: a scratch vector that goes back to this thread's pool when dropped.
//!
//! A pass of the engine needs a few dozen large buffers (im2col matrices, activations and
//! their gradients) of the same sizes every time. Taking them from a per-thread pool saves the
//! allocator's page faults and the zeroing of fresh memory, which profiles showed at 15% of a
//! first-order step; returning them on drop means no code path has to remember to.

use std::ops::{Deref, DerefMut};

/// An element type with a per-thread pool of recycled vectors: the engine's floats and the
/// `u8` arg-max rows of max-pooling (a megabyte per first block at 80 images, whose fresh
/// pages the kernel zeroed on every forward pass: 2% of a 5w1s15q first-order step by perf).
pub trait Pooled: Copy + Default + 'static {
    /// Run `f` on this thread's pool of recycled vectors of this type.
    fn with_pool<R>(f: impl FnOnce(&mut Vec<Vec<Self>>) -> R) -> R;
}

macro_rules! pooled {
    ($($t:ty),*) => {$(
        impl Pooled for $t {
            fn with_pool<R>(f: impl FnOnce(&mut Vec<Vec<Self>>) -> R) -> R {
                thread_local! {
                    static POOL: std::cell::RefCell<Vec<Vec<$t>>> = const { std::cell::RefCell::new(Vec::new()) };
                }
                POOL.with(|p| f(&mut p.borrow_mut()))
            }
        }
    )*};
}
pooled!(u8, f32, f64);

/// Buffers shorter than this are not pooled (not worth keeping).
const MIN_POOLED: usize = 1024;
/// At most this many buffers wait in a thread's pool.
const MAX_POOLED: usize = 256;

/// A vector of `T` taken from (and returned to) this thread's pool.
#[derive(Debug, Clone)]
pub struct Buffer<T: Pooled> {
    data: Vec<T>,
}

impl<T: Pooled> Buffer<T> {
    /// A buffer of `len` elements with unspecified (recycled) contents, for outputs that are
    /// written in full before they are read.
    pub fn scratch(len: usize) -> Buffer<T> {
        let data = T::with_pool(|pool| pool.iter().position(|v| v.len() == len).map(|i| pool.swap_remove(i)))
            .unwrap_or_else(|| vec![T::default(); len]);
        Buffer { data }
    }

    /// An empty buffer (a placeholder; nothing is pooled).
    pub fn empty() -> Buffer<T> {
        Buffer { data: Vec::new() }
    }
}

impl<T: Pooled> Deref for Buffer<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.data
    }
}

impl<T: Pooled> DerefMut for Buffer<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.data
    }
}

impl<T: Pooled> Drop for Buffer<T> {
    fn drop(&mut self) {
        if self.data.len() >= MIN_POOLED {
            let data = std::mem::take(&mut self.data);
            T::with_pool(|pool| {
                if pool.len() < MAX_POOLED {
                    pool.push(data);
                }
            });
        }
    }
}
