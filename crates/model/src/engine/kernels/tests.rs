//! The AVX-512 kernel against its lane form, and the chunked moments against two passes.

use super::pool::unpool_lincomb_lanes;
use super::*;
use crate::engine::layout::Block;

/// Deterministic values with a large common offset per channel (as a conv output has), so
/// a one-pass `sum x^2 - n mean^2` would lose most of its digits in f32.
fn values(rows: usize, c: usize) -> Vec<f64> {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    (0..rows * c)
        .map(|i| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let u = (state >> 11) as f64 / (1u64 << 53) as f64;
            50.0 + (i % c) as f64 + (u - 0.5) * 3.0
        })
        .collect()
}

/// Mean and sum of squared deviations by two passes in f64 over the whole buffer.
fn reference(x: &[f64], c: usize) -> (Vec<f64>, Vec<f64>) {
    let n = (x.len() / c) as f64;
    let mean: Vec<f64> = (0..c).map(|ch| x.iter().skip(ch).step_by(c).sum::<f64>() / n).collect();
    let m2 = (0..c).map(|ch| x.iter().skip(ch).step_by(c).map(|v| (v - mean[ch]).powi(2)).sum()).collect();
    (mean, m2)
}

#[test]
fn unpool_lincomb_kernel_gives_the_lane_forms_values() {
    // Even and odd sides (odd ones have rows outside every window), 32 channels.
    for (h, w) in [(6, 6), (7, 5)] {
        let (batch, c) = (3, 32);
        let bl = Block { h, w, c_in: 1, c_out: c, oh: h / 2, ow: w / 2, weight: 0, scale: 0, shift: 0 };
        let (rows, pooled) = (batch * h * w * c, batch * bl.pooled() * c);
        let v = |n: usize, seed: usize| -> Vec<f32> {
            values(n / 16 + 1, 16).iter().skip(seed).take(n).map(|x| (*x as f32 - 58.0) / 7.0).collect()
        };
        let (xhat, d, out) = (v(rows, 0), v(pooled, 1), v(pooled, 2));
        let arg: Vec<u8> = (0..pooled).map(|i| ((i * 7 + i / 5) % 4) as u8).collect();
        let (c_dy, c_x, bias) = (v(c, 3), v(c, 4), v(c, 5));
        assert!(out.iter().any(|a| *a > 0.0) && out.iter().any(|a| *a <= 0.0));
        let mut fast = vec![f32::NAN; rows];
        unpool_lincomb(&bl, batch, (&out, &arg), &d, &c_dy, &xhat, &c_x, &bias, &mut fast);
        let mut lanes = vec![f32::NAN; rows];
        unpool_lincomb_lanes(&bl, batch, (&out, &arg), &d, &c_dy, &xhat, &c_x, &bias, &mut lanes);
        let same = fast.iter().zip(&lanes).all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "{h}x{w}: the AVX-512 kernel differs from the lane form");
    }
}

#[test]
fn moments_match_two_passes_whatever_the_chunks() {
    let (rows, c) = (1000, 16);
    let x = values(rows, c);
    let (mean, m2) = reference(&x, c);
    // Chunks that straddle the partial-sum blocks, a single row, and the whole buffer.
    for chunk_rows in [1, 7, 128, 300, rows] {
        let mut m = Moments::<f64>::new(c);
        x.chunks(chunk_rows * c).for_each(|chunk| m.add(chunk));
        assert_eq!(m.rows(), rows);
        let (got_mean, got_m2) = m.finish();
        for ch in 0..c {
            assert!((got_mean[ch] - mean[ch]).abs() <= 1e-12 * mean[ch].abs(), "mean of channel {ch}");
            assert!((got_m2[ch] - m2[ch]).abs() <= 1e-11 * m2[ch], "m2 of channel {ch}: {} vs {}", got_m2[ch], m2[ch]);
        }
    }
    // In f32 the deviations survive the offset: within 1e-5 of the f64 figure.
    let x32: Vec<f32> = x.iter().map(|v| *v as f32).collect();
    let mut m = Moments::<f32>::new(c);
    x32.chunks(300 * c).for_each(|chunk| m.add(chunk));
    let (_, got_m2) = m.finish();
    for ch in 0..c {
        assert!((got_m2[ch] as f64 - m2[ch]).abs() <= 1e-5 * m2[ch], "f32 m2 of channel {ch}");
    }
}
