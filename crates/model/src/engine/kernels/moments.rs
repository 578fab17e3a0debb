//! Per-channel sums and dot products, and the batch-norm moments of a buffer fed a chunk at a
//! time ([`Moments`]), by partial sums of [`PARTIAL_ROWS`] rows.

use crate::engine::profile::{Work, timed};
use crate::engine::real::Real;

/// Rows per partial sum of [`channel_sums`] and [`channel_dots`]: each output adds up
/// partial sums of this many rows, so an f32 sum over the 58,800 rows of a 75-image first layer
/// accumulates about 128 + 460 roundings instead of 58,800: the f32 meta-gradient's largest
/// norm-relative error at that shape fell from 7.1e-5 (batch-norm scale of the first block) to
/// 1.7e-6, with the same additions (`fewshot-meta`'s test
/// `f32_meta_gradients_stay_close_to_f64_at_the_paper_shape`).
pub(crate) const PARTIAL_ROWS: usize = 128;

/// Per-channel sums of `x` (`[n, c]`) into `out` (`[c]`), by partial sums of
/// [`PARTIAL_ROWS`] rows.
#[inline(always)]
pub fn channel_sums<T: Real>(x: &[T], c: usize, out: &mut [T]) {
    timed(
        Work::Elementwise,
        #[inline(always)]
        || {
            out.fill(T::default());
            let mut partial = vec![T::default(); c];
            for block in x.chunks(PARTIAL_ROWS * c) {
                partial.fill(T::default());
                for row in block.chunks_exact(c) {
                    for (p, v) in partial.iter_mut().zip(row) {
                        *p += *v;
                    }
                }
                out.iter_mut().zip(&partial).for_each(|(o, p)| *o += *p);
            }
        },
    )
}

/// Per-channel sums of `x * y`, by partial sums like [`channel_sums`].
#[inline(always)]
pub fn channel_dots<T: Real>(x: &[T], y: &[T], c: usize, out: &mut [T]) {
    timed(
        Work::Elementwise,
        #[inline(always)]
        || {
            out.fill(T::default());
            let mut partial = vec![T::default(); c];
            for (bx, by) in x.chunks(PARTIAL_ROWS * c).zip(y.chunks(PARTIAL_ROWS * c)) {
                partial.fill(T::default());
                for (rx, ry) in bx.chunks_exact(c).zip(by.chunks_exact(c)) {
                    for ((p, a), b) in partial.iter_mut().zip(rx).zip(ry) {
                        *p += *a * *b;
                    }
                }
                out.iter_mut().zip(&partial).for_each(|(o, p)| *o += *p);
            }
        },
    )
}

/// Per-channel mean and sum of squared deviations of rows of `c` values, added a chunk at a
/// time (the forward pass feeds it each chunk of the conv output while the chunk is still in
/// cache, so the batch-norm statistics cost no pass of their own over the block's largest
/// buffer). Each block of [`PARTIAL_ROWS`] rows is summed, then its squared deviations from
/// its own mean (the block stays in L1 between the two), and the blocks merge by Chan et al.'s
/// pairwise update `M2 = M2_a + M2_b + delta^2 n_a n_b / n`: as accurate as summing the whole
/// buffer by [`channel_sums`] and then its squared deviations from that mean, in one read.
#[derive(Debug, Clone)]
pub struct Moments<T: Real> {
    c: usize,
    n: usize,
    mean: Vec<T>,
    m2: Vec<T>,
    block_mean: Vec<T>,
    block_m2: Vec<T>,
}

impl<T: Real> Moments<T> {
    /// No rows yet, `c` channels.
    pub fn new(c: usize) -> Self {
        let zeros = vec![T::default(); c];
        Self { c, n: 0, mean: zeros.clone(), m2: zeros.clone(), block_mean: zeros.clone(), block_m2: zeros }
    }

    /// Adds the rows of `x` (`[rows, c]`).
    #[inline(always)]
    pub fn add(&mut self, x: &[T]) {
        timed(
            Work::Elementwise,
            #[inline(always)]
            || {
                let c = self.c;
                for block in x.chunks(PARTIAL_ROWS * c) {
                    let nb = block.len() / c;
                    if nb == 0 {
                        continue;
                    }
                    let (bm, bq) = (&mut self.block_mean, &mut self.block_m2);
                    bm.fill(T::default());
                    bq.fill(T::default());
                    for row in block.chunks_exact(c) {
                        bm.iter_mut().zip(row).for_each(|(m, v)| *m += *v);
                    }
                    let inv = T::from_f64(1.0 / nb as f64);
                    bm.iter_mut().for_each(|m| *m = *m * inv);
                    for row in block.chunks_exact(c) {
                        for ((q, v), m) in bq.iter_mut().zip(row).zip(bm.iter()) {
                            let d = *v - *m;
                            *q += d * d;
                        }
                    }
                    let n = self.n + nb;
                    let (wb, wab) =
                        (T::from_f64(nb as f64 / n as f64), T::from_f64(self.n as f64 * nb as f64 / n as f64));
                    for (((m, q), m_b), q_b) in
                        self.mean.iter_mut().zip(self.m2.iter_mut()).zip(bm.iter()).zip(bq.iter())
                    {
                        let delta = *m_b - *m;
                        *m += delta * wb;
                        *q += *q_b + delta * delta * wab;
                    }
                    self.n = n;
                }
            },
        )
    }

    /// Rows added so far.
    pub fn rows(&self) -> usize {
        self.n
    }

    /// `(mean, sum of squared deviations from it)`, per channel.
    pub fn finish(self) -> (Vec<T>, Vec<T>) {
        (self.mean, self.m2)
    }
}
