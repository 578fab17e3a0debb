//! im2col of a 3x3, pad 1 convolution's input and its adjoint (col2im).

use crate::engine::profile::{Work, timed};
use crate::engine::real::Real;

/// 3x3, pad 1 im2col of `x` (`[b, h, w, c]`) into `cols` (`[b * h * w, 9 * c]`).
#[inline(always)]
pub fn im2col<T: Real>(x: &[T], b: usize, h: usize, w: usize, c: usize, cols: &mut [T]) {
    timed(
        Work::Im2col,
        #[inline(always)]
        || {
            let k = 9 * c;
            for bi in 0..b {
                for yi in 0..h {
                    for xi in 0..w {
                        let row = &mut cols[((bi * h + yi) * w + xi) * k..][..k];
                        for ky in 0..3 {
                            let sy = yi as isize + ky as isize - 1;
                            for kx in 0..3 {
                                let sx = xi as isize + kx as isize - 1;
                                let at = (ky * 3 + kx) * c;
                                let inside = sy >= 0 && sy < h as isize && sx >= 0 && sx < w as isize;
                                let src = ((bi * h + sy.max(0) as usize) * w + sx.max(0) as usize) * c;
                                if c == 1 {
                                    // One channel (the first layer): a plain load, not a copy call.
                                    row[at] = if inside { x[src] } else { T::default() };
                                } else if inside {
                                    row[at..at + c].copy_from_slice(&x[src..src + c]);
                                } else {
                                    row[at..at + c].fill(T::default());
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// The adjoint of [`im2col`]: scatter-add `cols` back into `dx` (`[b, h, w, c]`).
#[inline(always)]
pub fn col2im<T: Real>(cols: &[T], b: usize, h: usize, w: usize, c: usize, dx: &mut [T]) {
    timed(
        Work::Im2col,
        #[inline(always)]
        || {
            let k = 9 * c;
            dx[..b * h * w * c].fill(T::default());
            for bi in 0..b {
                for yi in 0..h {
                    for xi in 0..w {
                        let row = &cols[((bi * h + yi) * w + xi) * k..][..k];
                        for ky in 0..3 {
                            let sy = yi as isize + ky as isize - 1;
                            if sy < 0 || sy >= h as isize {
                                continue;
                            }
                            for kx in 0..3 {
                                let sx = xi as isize + kx as isize - 1;
                                if sx < 0 || sx >= w as isize {
                                    continue;
                                }
                                let dst = &mut dx[((bi * h + sy as usize) * w + sx as usize) * c..][..c];
                                for (d, s) in dst.iter_mut().zip(&row[(ky * 3 + kx) * c..][..c]) {
                                    *d += *s;
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}
