//! The elementwise kernels whose zipped-lane form the compiler did not vectorise well
//! (perf at 5w1s15q, first order: [`unpool_lincomb`] was 9% of a step), in AVX-512 for f32
//! and channel counts that are multiples of 16, with the same operations in the same order
//! as their lane forms, so the same values.

use super::windows;
use crate::engine::layout::Block;
use std::arch::x86_64::*;

/// [`super::unpool_lincomb`] for f32; `[out, d, c_dy, xhat, c_x, bias]`.
///
/// # Safety
/// The CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
pub unsafe fn unpool_lincomb(
    bl: &Block,
    batch: usize,
    arg: &[u8],
    [out, d, c_dy, xhat, c_x, bias]: [&[f32]; 6],
    dz: &mut [f32],
) {
    let c = bl.c_out;
    let (rows_n, pooled_n) = (batch * bl.pixels() * c, batch * bl.pooled() * c);
    assert!(c.is_multiple_of(16) && c_dy.len() >= c && c_x.len() >= c && bias.len() >= c);
    assert!(xhat.len() >= rows_n && dz.len() >= rows_n);
    assert!(out.len() >= pooled_n && d.len() >= pooled_n && arg.len() >= pooled_n);
    // SAFETY (every load and store below): `ch + 16 <= c`, window rows are below
    // `batch * h * w` and pooled rows below `batch * oh * ow`, as asserted above.
    let ld = |p: &[f32], i: usize| unsafe { _mm512_loadu_ps(p.as_ptr().add(i)) };
    if bl.h % 2 == 1 || bl.w % 2 == 1 {
        // Rows outside every window (dy = 0 there); the window rows are rewritten below.
        for r in 0..batch * bl.pixels() {
            for ch in (0..c).step_by(16) {
                let v = _mm512_add_ps(_mm512_mul_ps(ld(c_x, ch), ld(xhat, r * c + ch)), ld(bias, ch));
                unsafe { _mm512_storeu_ps(dz.as_mut_ptr().add(r * c + ch), v) };
            }
        }
    }
    let zero = _mm512_setzero_ps();
    for (o, rows) in windows(bl, batch) {
        for ch in (0..c).step_by(16) {
            let (cdy, cx, b) = (ld(c_dy, ch), ld(c_x, ch), ld(bias, ch));
            let passed = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(ld(out, o * c + ch), zero);
            let g = _mm512_maskz_mov_ps(passed, ld(d, o * c + ch));
            let k = _mm512_cvtepu8_epi32(unsafe { _mm_loadu_si128(arg.as_ptr().add(o * c + ch).cast()) });
            for (j, r) in rows.into_iter().enumerate() {
                let at = _mm512_cmpeq_epi32_mask(k, _mm512_set1_epi32(j as i32));
                let dy = _mm512_maskz_mov_ps(at, g);
                let x = ld(xhat, r * c + ch);
                // (c_dy * dy + c_x * x) + bias, as the lane form rounds it.
                let v = _mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(cdy, dy), _mm512_mul_ps(cx, x)), b);
                unsafe { _mm512_storeu_ps(dz.as_mut_ptr().add(r * c + ch), v) };
            }
        }
    }
}
