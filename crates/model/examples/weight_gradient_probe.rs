//! The weight gradient's two product orientations at the row counts of the chunks
//! `engine/conv.rs` feeds it: `gw = dz^T cols` (`[c_out, 9 c_in]`) and `gw^T = cols^T dz`
//! (`[9 c_in, c_out]`), which `conv::weight_gradient` uses from `TRANSPOSED_ROWS` rows.
//!
//! `cargo run --release -p fewshot-model --example weight_gradient_probe`

use fewshot_model::engine::{Out, matmul_tn, with_best_simd};
use std::time::Instant;
/// Best per-call time over 7 rounds of 50 calls (after 3 warm-up calls), with GFLOP/s.
fn bench(name: &str, flops: f64, mut f: impl FnMut()) {
    let mut best = f64::MAX;
    with_best_simd(|| {
        for _ in 0..3 {
            f();
        }
        for _ in 0..7 {
            let t = Instant::now();
            for _ in 0..50 {
                f();
            }
            best = best.min(t.elapsed().as_secs_f64() / 50.0);
        }
    });
    println!("{name:40} {:9.2} us {:7.1} GFLOP/s", best * 1e6, flops / best * 1e-9);
}
/// Deterministic values in [-0.5, 0.5).
fn filled(len: usize, prime: usize) -> Vec<f32> {
    (0..len).map(|i| (i * prime % 1000) as f32 / 1000.0 - 0.5).collect()
}
fn main() {
    for rows in [98usize, 108, 196, 392, 784] {
        let (k, c) = (576, 64);
        let (cols, dz) = (filled(rows * k, 7919), filled(rows * c, 31));
        let (mut gw, mut gwt) = (vec![0f32; c * k], vec![0f32; c * k]);
        let flops = 2.0 * (rows * k * c) as f64;
        bench(&format!("rows {rows}: gw = dz^T cols"), flops, || {
            matmul_tn(&mut gw, &dz, &cols, [c, k, rows], Out::Add)
        });
        bench(&format!("rows {rows}: gw^T = cols^T dz"), flops, || {
            matmul_tn(&mut gwt, &cols, &dz, [k, c, rows], Out::Add)
        });
    }
}
