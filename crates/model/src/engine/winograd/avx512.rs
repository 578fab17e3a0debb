//! The tile transforms (input, output and the output's adjoint) in AVX-512 registers, for f32
//! and channel counts that are multiples of 16 (the net's): 16 loads, the transform, 16 stores
//! per tile and 16 channels. Reached through the f32 gate (`fast_f32`) only.

use super::{Out, Shape};
use std::arch::x86_64::*;

/// [`super::transform_input`] for f32.
///
/// # Safety
/// The CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
pub unsafe fn transform_input(s: &Shape, x: &[f32], imgs: usize, mu: Option<&[f32]>, v: &mut [f32]) {
    let (h, w, c) = (s.h, s.w, s.c_in);
    let (ty_n, tx_n) = (h.div_ceil(2), s.tiles_x());
    let tiles = imgs * ty_n * tx_n;
    assert!(c % 16 == 0 && x.len() >= imgs * h * w * c && v.len() >= 16 * tiles * c);
    assert!(mu.is_none_or(|m| m.len() >= c));
    for img in 0..imgs {
        for ty in 0..ty_n {
            for tx in 0..tx_n {
                let t = (img * ty_n + ty) * tx_n + tx;
                let at = super::patch(s, img, ty, tx);
                for ch in (0..c).step_by(16) {
                    // SAFETY: ch + 16 <= c <= mu.len().
                    let centre = mu.map_or(_mm512_setzero_ps(), |m| unsafe { _mm512_loadu_ps(m.as_ptr().add(ch)) });
                    let mut d = [[_mm512_setzero_ps(); 4]; 4];
                    for i in 0..4 {
                        for j in 0..4 {
                            if let Some(o) = at[i][j] {
                                // SAFETY: o + ch + 16 <= imgs * h * w * c (a pixel inside the chunk).
                                d[i][j] = _mm512_sub_ps(unsafe { _mm512_loadu_ps(x.as_ptr().add(o + ch)) }, centre);
                            }
                        }
                    }
                    let mut b = [[_mm512_setzero_ps(); 4]; 4];
                    for j in 0..4 {
                        b[0][j] = _mm512_sub_ps(d[0][j], d[2][j]);
                        b[1][j] = _mm512_add_ps(d[1][j], d[2][j]);
                        b[2][j] = _mm512_sub_ps(d[2][j], d[1][j]);
                        b[3][j] = _mm512_sub_ps(d[1][j], d[3][j]);
                    }
                    for (r, row) in b.iter().enumerate() {
                        let out = [
                            _mm512_sub_ps(row[0], row[2]),
                            _mm512_add_ps(row[1], row[2]),
                            _mm512_sub_ps(row[2], row[1]),
                            _mm512_sub_ps(row[1], row[3]),
                        ];
                        for (q, o) in out.into_iter().enumerate() {
                            // SAFETY: ((r * 4 + q) * tiles + t) * c + ch + 16 <= 16 * tiles * c.
                            unsafe { _mm512_storeu_ps(v.as_mut_ptr().add(((r * 4 + q) * tiles + t) * c + ch), o) };
                        }
                    }
                }
            }
        }
    }
}

/// [`super::transform_output`] for f32.
///
/// # Safety
/// The CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
#[allow(clippy::needless_range_loop)] // indices of a 4x4 tile
pub unsafe fn transform_output(s: &Shape, m: &[f32], imgs: usize, bias: Option<&[f32]>, z: &mut [f32], out: Out) {
    let (h, w, c) = (s.h, s.w, s.c_out);
    let (ty_n, tx_n) = (h.div_ceil(2), s.tiles_x());
    let tiles = imgs * ty_n * tx_n;
    assert!(c % 16 == 0 && m.len() >= 16 * tiles * c && z.len() >= imgs * h * w * c);
    assert!(bias.is_none_or(|b| b.len() >= 16 * c));
    for img in 0..imgs {
        for ty in 0..ty_n {
            for tx in 0..tx_n {
                let t = (img * ty_n + ty) * tx_n + tx;
                for ch in (0..c).step_by(16) {
                    // SAFETY: ((i * 4 + j) * tiles + t) * c + ch + 16 <= 16 * tiles * c.
                    let mm = |i: usize, j: usize| unsafe {
                        _mm512_loadu_ps(m.as_ptr().add(((i * 4 + j) * tiles + t) * c + ch))
                    };
                    let mut a = [[_mm512_setzero_ps(); 4]; 2];
                    for j in 0..4 {
                        let (m1, m2) = (mm(1, j), mm(2, j));
                        a[0][j] = _mm512_add_ps(_mm512_add_ps(mm(0, j), m1), m2);
                        a[1][j] = _mm512_sub_ps(_mm512_sub_ps(m1, m2), mm(3, j));
                    }
                    for (r, row) in a.iter().enumerate() {
                        let y = 2 * ty + r;
                        let px = [
                            _mm512_add_ps(_mm512_add_ps(row[0], row[1]), row[2]),
                            _mm512_sub_ps(_mm512_sub_ps(row[1], row[2]), row[3]),
                        ];
                        for (b, p) in px.into_iter().enumerate() {
                            let xx = 2 * tx + b;
                            if y < h && xx < w {
                                // SAFETY: a pixel inside the chunk: its 16 channels from ch are in z.
                                let dst = unsafe { z.as_mut_ptr().add(((img * h + y) * w + xx) * c + ch) };
                                let p = match bias {
                                    // SAFETY: a class below 16, ch + 16 <= c: inside the [16, c] table.
                                    Some(b) => _mm512_add_ps(p, unsafe {
                                        _mm512_loadu_ps(
                                            b.as_ptr().add((super::border(y, h) * 4 + super::border(xx, w)) * c + ch),
                                        )
                                    }),
                                    None => p,
                                };
                                let p = match out {
                                    Out::Set => p,
                                    // SAFETY: as above.
                                    Out::Add => _mm512_add_ps(unsafe { _mm512_loadu_ps(dst) }, p),
                                };
                                // SAFETY: as above.
                                unsafe { _mm512_storeu_ps(dst, p) };
                            }
                        }
                    }
                }
            }
        }
    }
}

/// [`super::transform_output_adjoint`] for f32.
///
/// # Safety
/// The CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
#[allow(clippy::needless_range_loop)] // indices of a 4x4 tile
pub unsafe fn transform_output_adjoint(s: &Shape, dz: &[f32], imgs: usize, dm: &mut [f32]) {
    let (h, w, c) = (s.h, s.w, s.c_out);
    let (ty_n, tx_n) = (h.div_ceil(2), s.tiles_x());
    let tiles = imgs * ty_n * tx_n;
    assert!(c % 16 == 0 && dz.len() >= imgs * h * w * c && dm.len() >= 16 * tiles * c);
    let a = |y0: __m512, y1: __m512| {
        [y0, _mm512_add_ps(y0, y1), _mm512_sub_ps(y0, y1), _mm512_sub_ps(_mm512_setzero_ps(), y1)]
    };
    for img in 0..imgs {
        for ty in 0..ty_n {
            for tx in 0..tx_n {
                let t = (img * ty_n + ty) * tx_n + tx;
                for ch in (0..c).step_by(16) {
                    let dy = |p: usize, q: usize| {
                        let (y, xx) = (2 * ty + p, 2 * tx + q);
                        if y < h && xx < w {
                            // SAFETY: a pixel inside the chunk: its 16 channels from ch are in dz.
                            unsafe { _mm512_loadu_ps(dz.as_ptr().add(((img * h + y) * w + xx) * c + ch)) }
                        } else {
                            _mm512_setzero_ps()
                        }
                    };
                    let cols = [a(dy(0, 0), dy(1, 0)), a(dy(0, 1), dy(1, 1))];
                    for i in 0..4 {
                        for (j, lane) in a(cols[0][i], cols[1][i]).into_iter().enumerate() {
                            // SAFETY: ((i * 4 + j) * tiles + t) * c + ch + 16 <= 16 * tiles * c.
                            unsafe { _mm512_storeu_ps(dm.as_mut_ptr().add(((i * 4 + j) * tiles + t) * c + ch), lane) };
                        }
                    }
                }
            }
        }
    }
}
