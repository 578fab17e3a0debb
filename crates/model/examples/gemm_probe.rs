//! Matrix-product rates at the net's shapes, and the bf16/AMX study of `docs/performance.md`.
//!
//! ```sh
//! cargo run --release -p fewshot-model --example gemm_probe            # f32 products per layer shape
//! cargo run --release -p fewshot-model --example gemm_probe -- amx     # + bf16 on AMX tiles, where the CPU has them
//! ```
//!
//! The f32 part times the engine's own `matmul_nt` / `matmul_tn` / `matmul_nn` on each conv
//! block's forward product, weight gradient and input gradient, and the weight gradient in both
//! orientations at the chunk row counts `engine/conv.rs` uses. The AMX part is a measurement
//! kernel, not used by the engine: the forward product `z = cols · W^T` with `cols` converted
//! to bf16 in 16 x 32 tiles, `W` in the pair-interleaved (VNNI) layout, and f32 accumulation in
//! four 16 x 16 tiles per 16 rows (`tdpbf16ps`); it prints its time with and without the
//! conversion, and its largest error against the f32 product.

use fewshot_model::engine::{Out, matmul_nn, matmul_nt, matmul_tn, with_best_simd};
use std::time::Instant;

/// Best per-call time over 5 rounds of 20 calls (after 3 warm-up calls), printed with GFLOP/s.
#[inline(always)]
fn bench(name: &str, flops: f64, mut f: impl FnMut()) {
    // Inside the engine's vector-extension dispatch, as in training.
    let mut best = f64::MAX;
    with_best_simd(
        #[inline(always)]
        || {
            for _ in 0..3 {
                f();
            }
            for _ in 0..5 {
                let t = Instant::now();
                for _ in 0..20 {
                    f();
                }
                best = best.min(t.elapsed().as_secs_f64() / 20.0);
            }
        },
    );
    println!("{name:52} {:9.1} us {:7.1} GFLOP/s", best * 1e6, flops / best * 1e-9);
}

/// Deterministic values in [-0.5, 0.5).
fn filled(len: usize, prime: usize) -> Vec<f32> {
    (0..len).map(|i| (i * prime % 1000) as f32 / 1000.0 - 0.5).collect()
}

fn main() {
    let amx = std::env::args().any(|a| a == "amx");
    let big = 1024;
    let (a, b, mut c) = (filled(big * big, 7919), filled(big * big, 104_729), vec![0.0f32; big * big]);
    bench(
        "f32 peak: 1024 x 1024 x 1024",
        2.0 * (big * big * big) as f64,
        #[inline(always)]
        || matmul_nn(&mut c, &a, &b, [big, big, big], Out::Set),
    );
    // The weight gradient's two orientations at the row counts of the chunks `engine/conv.rs`
    // feeds it (`conv::weight_gradient` uses the transposed one from `TRANSPOSED_ROWS` rows).
    for rows in [98usize, 108, 196, 392, 784] {
        let (k, c_out) = (576, 64);
        let (cols, dz) = (filled(rows * k, 7919), filled(rows * c_out, 31));
        let (mut gw, mut gwt) = (vec![0.0f32; c_out * k], vec![0.0f32; c_out * k]);
        let flops = 2.0 * (rows * k * c_out) as f64;
        bench(
            &format!("{rows} chunk rows: gw = dz^T cols"),
            flops,
            #[inline(always)]
            || matmul_tn(&mut gw, &dz, &cols, [c_out, k, rows], Out::Add),
        );
        bench(
            &format!("{rows} chunk rows: gw^T = cols^T dz"),
            flops,
            #[inline(always)]
            || matmul_tn(&mut gwt, &cols, &dz, [k, c_out, rows], Out::Add),
        );
    }
    for images in [5usize, 20, 75] {
        for (pixels, c_in) in [(784usize, 1usize), (196, 64), (49, 64), (9, 64)] {
            let (n, k, c_out) = (images * pixels, 9 * c_in, 64);
            let (cols, w, dz) = (filled(n * k, 7919), filled(c_out * k, 104_729), filled(n * c_out, 31));
            let (mut z, mut gw, mut dcols) = (vec![0.0f32; n * c_out], vec![0.0f32; c_out * k], vec![0.0f32; n * k]);
            let flops = 2.0 * (n * k * c_out) as f64;
            let tag = format!("{images} images, {pixels} px, k {k}:");
            bench(
                &format!("{tag} forward  [{n}, {c_out}, {k}]"),
                flops,
                #[inline(always)]
                || matmul_nt(&mut z, &cols, &w, [n, c_out, k], Out::Set),
            );
            bench(
                &format!("{tag} weight gradient"),
                flops,
                #[inline(always)]
                || matmul_tn(&mut gw, &dz, &cols, [c_out, k, n], Out::Set),
            );
            if c_in == 1 {
                // The same product through the gemm crate, which the engine used before its
                // own first-block kernel (`engine/gemm.rs`, `taps`).
                bench(
                    &format!("{tag} weight gradient, gemm crate"),
                    flops,
                    #[inline(always)]
                    || unsafe {
                        // SAFETY: gw is [c_out, k], dz [n, c_out] (read as its transpose), cols [n, k].
                        gemm::gemm(
                            c_out,
                            k,
                            n,
                            gw.as_mut_ptr(),
                            1,
                            k as isize,
                            false,
                            dz.as_ptr(),
                            c_out as isize,
                            1,
                            cols.as_ptr(),
                            1,
                            k as isize,
                            0.0f32,
                            1.0f32,
                            false,
                            false,
                            false,
                            gemm::Parallelism::None,
                        )
                    },
                );
            }
            if c_in > 1 {
                bench(
                    &format!("{tag} input gradient"),
                    flops,
                    #[inline(always)]
                    || matmul_nn(&mut dcols, &dz, &w, [n, k, c_out], Out::Set),
                );
            }
            if amx {
                #[cfg(target_arch = "x86_64")]
                amx::study(&cols, &w, &z, [n, c_out, k]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod amx {
    use super::bench;
    use std::arch::asm;
    use std::arch::x86_64::*;

    /// Asks Linux for the AMX tile state (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`).
    fn enable() -> bool {
        let r: i64;
        // SAFETY: the arch_prctl system call (158) with a request that only changes this
        // process's permitted extended state; it reads no memory of ours.
        unsafe {
            asm!("syscall", inlateout("rax") 158i64 => r, in("rdi") 0x1023i64, in("rsi") 18i64,
                 lateout("rcx") _, lateout("r11") _, options(nostack));
        }
        r == 0
    }

    /// f32 to bf16, rounding to nearest even (finite inputs).
    fn bf16(x: f32) -> u16 {
        let b = x.to_bits();
        ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
    }

    /// `a` (`[m, k]` f32) as bf16 tiles `[mp / 16][kp / 32][16][32]`, zero padded.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    fn pack_a(a: &[f32], [m, k]: [usize; 2], [mp, kp]: [usize; 2], out: &mut [u16]) {
        let kt = kp / 32;
        for r in 0..mp {
            for t in 0..kt {
                let at = ((r / 16 * kt + t) * 16 + r % 16) * 32;
                let (k0, dst) = (t * 32, &mut out[at..at + 32]);
                if r < m && k0 + 32 <= k {
                    let src = &a[r * k + k0..r * k + k0 + 32];
                    // SAFETY: src has 32 floats and dst 32 bf16 (64 bytes); unaligned loads and store.
                    unsafe {
                        let v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(src[16..].as_ptr()), _mm512_loadu_ps(src.as_ptr()));
                        _mm512_storeu_si512(dst.as_mut_ptr().cast(), std::mem::transmute::<__m512bh, __m512i>(v));
                    }
                } else {
                    for (j, d) in dst.iter_mut().enumerate() {
                        *d = if r < m && k0 + j < k { bf16(a[r * k + k0 + j]) } else { 0 };
                    }
                }
            }
        }
    }

    /// `w` (`[n, k]`, the product being `a · w^T`) as pair-interleaved bf16 `[kp / 2][np][2]`.
    fn pack_b(w: &[f32], [n, k]: [usize; 2], [np, kp]: [usize; 2], out: &mut [u16]) {
        out[..kp * np].fill(0);
        for c in 0..n {
            for kk in 0..k {
                out[kk / 2 * np * 2 + c * 2 + kk % 2] = bf16(w[c * k + kk]);
            }
        }
    }

    #[repr(C, align(64))]
    struct TileConfig([u8; 64]);

    /// `c[mp, 64] = a · b` from [`pack_a`]'s and [`pack_b`]'s layouts (np = 64): per 16 rows,
    /// four f32 accumulator tiles, one A tile and the B tiles loaded in turn.
    ///
    /// # Safety
    /// AMX must be enabled ([`enable`]); `a` holds `mp * kp`, `b` `kp * 64` and `c` `mp * 64`
    /// elements, `mp` a multiple of 16 and `kp` of 32.
    unsafe fn product(a: &[u16], b: &[u16], c: &mut [f32], [mp, kp]: [usize; 2]) {
        assert!(a.len() >= mp * kp && b.len() >= kp * 64 && c.len() >= mp * 64);
        let mut cfg = TileConfig([0; 64]);
        cfg.0[0] = 1; // palette 1: every tile 16 rows of 64 bytes
        for t in 0..8 {
            cfg.0[16 + 2 * t] = 64;
            cfg.0[48 + t] = 16;
        }
        let (kt, sb, sc) = (kp / 32, 64 * 4usize, 64 * 4usize);
        // SAFETY: the caller enabled AMX; every tile load reads 16 rows of 64 bytes inside a or
        // b (a: 1 KB contiguous tiles; b: rows of 256 bytes, 16 pair-rows per k tile) and every
        // store writes 16 rows of 64 bytes inside c, by the assert above.
        unsafe {
            asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr());
            for r0 in (0..mp).step_by(16) {
                asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3");
                for t in 0..kt {
                    let pa = a.as_ptr().add((r0 / 16 * kt + t) * 512);
                    let pb = b.as_ptr().add(t * 16 * 128);
                    asm!(
                        "tileloadd tmm4, [{a} + {sa}*1]",
                        "tileloadd tmm5, [{b0} + {sb}*1]",
                        "tileloadd tmm6, [{b1} + {sb}*1]",
                        "tdpbf16ps tmm0, tmm4, tmm5",
                        "tileloadd tmm7, [{b2} + {sb}*1]",
                        "tdpbf16ps tmm1, tmm4, tmm6",
                        "tileloadd tmm5, [{b3} + {sb}*1]",
                        "tdpbf16ps tmm2, tmm4, tmm7",
                        "tdpbf16ps tmm3, tmm4, tmm5",
                        a = in(reg) pa, sa = in(reg) 64usize, sb = in(reg) sb,
                        b0 = in(reg) pb, b1 = in(reg) pb.add(32), b2 = in(reg) pb.add(64), b3 = in(reg) pb.add(96),
                    );
                }
                let pc = c.as_mut_ptr().add(r0 * 64);
                asm!(
                    "tilestored [{c0} + {sc}*1], tmm0",
                    "tilestored [{c1} + {sc}*1], tmm1",
                    "tilestored [{c2} + {sc}*1], tmm2",
                    "tilestored [{c3} + {sc}*1], tmm3",
                    c0 = in(reg) pc, c1 = in(reg) pc.add(16), c2 = in(reg) pc.add(32), c3 = in(reg) pc.add(48), sc = in(reg) sc,
                );
            }
            asm!("tilerelease");
        }
    }

    /// Times the bf16 forward product against `z`, the f32 one, and prints its largest error.
    pub fn study(cols: &[f32], w: &[f32], z: &[f32], [n, c_out, k]: [usize; 3]) {
        // CPUID leaf 7: EDX bit 22 is AMX-BF16, bit 24 AMX-TILE (their detection macro is unstable).
        let edx = __cpuid_count(7, 0).edx;
        let supported = is_x86_feature_detected!("avx512bf16") && edx & (1 << 22) != 0 && edx & (1 << 24) != 0;
        if c_out != 64 || !supported || !enable() {
            println!("  (no AMX bf16 here)");
            return;
        }
        let (mp, kp) = (n.div_ceil(16) * 16, k.div_ceil(32) * 32);
        let (mut ap, mut bp, mut cp) = (vec![0u16; mp * kp], vec![0u16; kp * 64], vec![0.0f32; mp * 64]);
        let flops = 2.0 * (n * k * c_out) as f64;
        // SAFETY (all three): AMX was enabled above and the buffers have the sizes `product` needs.
        bench(
            "  bf16 AMX: convert cols to tiles",
            flops,
            #[inline(always)]
            || unsafe { pack_a(cols, [n, k], [mp, kp], &mut ap) },
        );
        bench(
            "  bf16 AMX: product only",
            flops,
            #[inline(always)]
            || unsafe { product(&ap, &bp, &mut cp, [mp, kp]) },
        );
        bench(
            "  bf16 AMX: convert both + product",
            flops,
            #[inline(always)]
            || unsafe {
                pack_a(cols, [n, k], [mp, kp], &mut ap);
                pack_b(w, [c_out, k], [64, kp], &mut bp);
                product(&ap, &bp, &mut cp, [mp, kp]);
            },
        );
        let err = z.iter().zip(&cp).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        let max = z.iter().map(|x| x.abs()).fold(0.0f32, f32::max);
        println!("  bf16 AMX: largest error {err:.2e} (largest |z| {max:.2e})");
    }
}
