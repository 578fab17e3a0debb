//! 3x3 convolutions (stride 1, zero padding 1) by Winograd's minimal filtering F(2x2, 3x3)
//! (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", 2016).
//!
//! Each 2x2 block of output pixels (a tile) is computed from the 4x4 input patch around it:
//! `Y = A^T [ sum_c (G g_c G^T) ⊙ (B^T d_c B) ] A`. The sum over input channels is, for each of
//! the 16 positions of the 4x4 transformed tile, one matrix product `[tiles, c_in] x [c_in,
//! c_out]`: 16 multiply-adds per 4 output pixels and channel pair instead of im2col's 36, so
//! 2.25x fewer on even sizes (1.72x at 7x7, whose tiles cover 8x8; 1.27x at 3x3). The
//! transforms' coefficients are 0, ±1 and ±1/2, exact in binary, so in f64 the result equals
//! the direct convolution to rounding (tested against the im2col path in [`super::conv`]).
//!
//! Layouts: input `[batch, h, w, c_in]`, output `[batch * h * w, c_out]` (as the im2col
//! path's); the transformed input `V` is `[16, tiles, c_in]`, the transformed filter `U`
//! `[16, c_in, c_out]`, the products `M` `[16, tiles, c_out]`, for a chunk of images at a time.

mod filter;
mod weight_gradient;

use filter::border;
pub(crate) use filter::{Filter, centred_filter, filter};
pub(crate) use weight_gradient::{WeightGradient, weight_gradient};

use super::buffer::Buffer;
use super::fast_f32::F32Avx512;
use super::gemm::{Out, matmul_nn, matmul_nt};
use super::profile::{Work, timed};
use super::real::Real;

/// Positions of a transformed 4x4 tile.
const POS: usize = 16;

/// The most values of a chunk's transformed input or products (1 MB in f32), unless one image
/// alone is larger: large enough that each of the 16 products has a few hundred rows.
const CHUNK_VALUES: usize = 1 << 18;

/// Sizes of one convolution: input `[batch, h, w, c_in]`, output `[batch * h * w, c_out]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    pub h: usize,
    pub w: usize,
    pub c_in: usize,
    pub c_out: usize,
}

impl Shape {
    fn tiles_x(&self) -> usize {
        self.w.div_ceil(2)
    }
    /// Tiles per image.
    fn tiles(&self) -> usize {
        self.h.div_ceil(2) * self.tiles_x()
    }
}

/// Channels a transform handles at once: one AVX-512 register of f32 (two of f64).
const LANES: usize = 16;

/// A run of up to [`LANES`] channels of one pixel.
type Lane<T> = [T; LANES];

/// The first `n` values of `src` as a lane (the rest zero).
#[inline(always)]
fn load<T: Real>(src: &[T], n: usize) -> Lane<T> {
    if n == LANES {
        *<&Lane<T>>::try_from(&src[..LANES]).expect("a full lane")
    } else {
        let mut lane = [T::default(); LANES];
        lane[..n].copy_from_slice(&src[..n]);
        lane
    }
}

/// Writes (or adds) the first `n` values of `lane` to `dst`.
#[inline(always)]
fn store<T: Real>(dst: &mut [T], lane: &Lane<T>, n: usize, out: Out) {
    match (out, n == LANES) {
        (Out::Set, true) => dst[..LANES].copy_from_slice(lane),
        (Out::Set, false) => dst[..n].copy_from_slice(&lane[..n]),
        (Out::Add, _) => dst[..n].iter_mut().zip(lane).for_each(|(d, v)| *d += *v),
    }
}

/// `a + b` or `a - b`, lane by lane.
#[inline(always)]
fn add<T: Real>(a: &Lane<T>, b: &Lane<T>) -> Lane<T> {
    std::array::from_fn(|i| a[i] + b[i])
}
#[inline(always)]
fn sub<T: Real>(a: &Lane<T>, b: &Lane<T>) -> Lane<T> {
    std::array::from_fn(|i| a[i] - b[i])
}

/// `B^T d` on four lanes: `[d0 - d2, d1 + d2, d2 - d1, d1 - d3]`.
#[inline(always)]
fn b_t<T: Real>([d0, d1, d2, d3]: &[Lane<T>; 4]) -> [Lane<T>; 4] {
    [sub(d0, d2), add(d1, d2), sub(d2, d1), sub(d1, d3)]
}

/// `A^T m` on four lanes: `[m0 + m1 + m2, m1 - m2 - m3]`.
#[inline(always)]
fn a_t<T: Real>([m0, m1, m2, m3]: &[Lane<T>; 4]) -> [Lane<T>; 2] {
    [add(&add(m0, m1), m2), sub(&sub(m1, m2), m3)]
}

/// The offsets in the input (`[imgs, h, w, c_in]`) of the 4x4 patch of tile `(ty, tx)` of
/// image `img`, or `None` outside the image (zero padding).
#[inline(always)]
fn patch(s: &Shape, img: usize, ty: usize, tx: usize) -> [[Option<usize>; 4]; 4] {
    // Plain loops: as `array::from_fn` closures this was not inlined into the AVX-512 kernel
    // and cost 2.7% of a 5w1s15q first-order step (perf, line tables).
    let (h, w, c) = (s.h as isize, s.w as isize, s.c_in);
    let mut at = [[None; 4]; 4];
    for (i, row) in at.iter_mut().enumerate() {
        let y = (2 * ty + i) as isize - 1;
        if y < 0 || y >= h {
            continue;
        }
        for (j, o) in row.iter_mut().enumerate() {
            let xx = (2 * tx + j) as isize - 1;
            if xx >= 0 && xx < w {
                *o = Some(((img * s.h + y as usize) * s.w + xx as usize) * c);
            }
        }
    }
    at
}

/// `V = B^T d B` of every tile of `imgs` images of `x`, into `v` (`[16, tiles, c]`, `tiles`
/// being the chunk's): per tile and run of [`LANES`] channels, 16 loads, the transform in
/// registers, 16 stores.
#[inline(always)]
fn transform_input<T: Real>(s: &Shape, x: &[T], imgs: usize, mu: Option<&[T]>, v: &mut [T]) {
    #[cfg(target_arch = "x86_64")]
    if s.c_in.is_multiple_of(16)
        && let Some(f) = F32Avx512::for_type::<T>()
    {
        let (x, v, mu) = (f.cast(x), f.cast_mut(v), mu.map(|m| f.cast(m)));
        // SAFETY: the token proves AVX-512F; the kernel checks its bounds.
        return unsafe { avx512::transform_input(s, x, imgs, mu, v) };
    }
    let (h, c) = (s.h, s.c_in);
    let (ty_n, tx_n) = (h.div_ceil(2), s.tiles_x());
    let tiles = imgs * ty_n * tx_n;
    let zeros = [T::default(); LANES];
    for img in 0..imgs {
        for ty in 0..ty_n {
            for tx in 0..tx_n {
                let t = (img * ty_n + ty) * tx_n + tx;
                let at = patch(s, img, ty, tx);
                for ch in (0..c).step_by(LANES) {
                    let n = LANES.min(c - ch);
                    let d = |i: usize, j: usize| match at[i][j] {
                        Some(o) => match mu {
                            Some(mu) => sub(&load(&x[o + ch..], n), &load(&mu[ch..], n)),
                            None => load(&x[o + ch..], n),
                        },
                        None => zeros,
                    };
                    // B^T on the columns of d, then on the rows of the result.
                    let cols: [[Lane<T>; 4]; 4] = std::array::from_fn(|j| b_t(&[d(0, j), d(1, j), d(2, j), d(3, j)]));
                    for r in 0..4 {
                        let row = b_t(&[cols[0][r], cols[1][r], cols[2][r], cols[3][r]]);
                        for (q, lane) in row.iter().enumerate() {
                            store(&mut v[((r * 4 + q) * tiles + t) * c + ch..], lane, n, Out::Set);
                        }
                    }
                }
            }
        }
    }
}

/// `z = A^T M A` (or `+=`) of every tile of `imgs` images, from `m` (`[16, tiles, c]`) into
/// `z` (`[imgs * h * w, c]`), dropping the pixels of tiles that overhang the image.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // indices of a 4x4 tile
fn transform_output<T: Real>(s: &Shape, m: &[T], imgs: usize, bias: Option<&[T]>, z: &mut [T], out: Out) {
    #[cfg(target_arch = "x86_64")]
    if s.c_out.is_multiple_of(16)
        && let Some(f) = F32Avx512::for_type::<T>()
    {
        let (m, z, bias) = (f.cast(m), f.cast_mut(z), bias.map(|b| f.cast(b)));
        // SAFETY: AVX-512F was detected; the kernel checks its bounds.
        return unsafe { avx512::transform_output(s, m, imgs, bias, z, out) };
    }
    let (h, w, c) = (s.h, s.w, s.c_out);
    let (ty_n, tx_n) = (h.div_ceil(2), s.tiles_x());
    let tiles = imgs * ty_n * tx_n;
    for img in 0..imgs {
        for ty in 0..ty_n {
            for tx in 0..tx_n {
                let t = (img * ty_n + ty) * tx_n + tx;
                for ch in (0..c).step_by(LANES) {
                    let n = LANES.min(c - ch);
                    let mm = |i: usize, j: usize| load(&m[((i * 4 + j) * tiles + t) * c + ch..], n);
                    // A^T on the columns of M, then on the rows of the result.
                    let cols: [[Lane<T>; 2]; 4] =
                        std::array::from_fn(|j| a_t(&[mm(0, j), mm(1, j), mm(2, j), mm(3, j)]));
                    for a in 0..2 {
                        let y = 2 * ty + a;
                        let row = a_t(&[cols[0][a], cols[1][a], cols[2][a], cols[3][a]]);
                        for (b, lane) in row.iter().enumerate() {
                            let xx = 2 * tx + b;
                            if y < h && xx < w {
                                let lane = match bias {
                                    Some(bias) => {
                                        add(lane, &load(&bias[(border(y, h) * 4 + border(xx, w)) * c + ch..], n))
                                    }
                                    None => *lane,
                                };
                                store(&mut z[((img * h + y) * w + xx) * c + ch..], &lane, n, out);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `z = sum_t conv(x_t, U_t)` (or `+=`) over the `terms` (input `[batch, h, w, c_in]`,
/// transformed filter from [`filter`]); `z` is `[batch * h * w, c_out]`. The terms' products
/// add up in `M`, so the output transform runs once.
#[inline(always)]
pub(crate) fn conv<T: Real>(s: &Shape, batch: usize, terms: &[(&[T], &Filter<T>)], z: &mut [T], out: Out) {
    conv_with(s, batch, terms, z, out, |_| {});
}

/// [`conv`], calling `on_chunk` with each chunk of images' finished output rows (`[imgs * h *
/// w, c_out]`, in order) while they are still in cache.
#[inline(always)]
pub(crate) fn conv_with<T: Real>(
    s: &Shape,
    batch: usize,
    terms: &[(&[T], &Filter<T>)],
    z: &mut [T],
    out: Out,
    mut on_chunk: impl FnMut(&[T]),
) {
    let (px, tiles) = (s.h * s.w, s.tiles());
    let step = chunk_images(s, batch);
    let mut v = Buffer::scratch(POS * step * tiles * s.c_in);
    let mut m = Buffer::scratch(POS * step * tiles * s.c_out);
    // The centred terms' conv(mu, w), added in the output transform.
    let mut bias: Option<Vec<T>> = None;
    for c in terms.iter().filter_map(|(_, u)| u.centring.as_ref()) {
        match &mut bias {
            None => bias = Some(c.bias.clone()),
            Some(b) => b.iter_mut().zip(&c.bias).for_each(|(b, c)| *b += *c),
        }
    }
    for i0 in (0..batch).step_by(step) {
        let imgs = step.min(batch - i0);
        let rows = imgs * tiles;
        for (j, (x, u)) in terms.iter().enumerate() {
            let x = &x[i0 * px * s.c_in..(i0 + imgs) * px * s.c_in];
            timed(
                Work::Im2col,
                #[inline(always)]
                || transform_input(s, x, imgs, u.centring.as_ref().map(|c| &c.mu[..]), &mut v),
            );
            let first = if j == 0 { Out::Set } else { Out::Add };
            let plane = s.c_in * s.c_out;
            for p in 0..POS {
                let mp = &mut m[p * rows * s.c_out..(p + 1) * rows * s.c_out];
                let vp = &v[p * rows * s.c_in..(p + 1) * rows * s.c_in];
                let up = &u.u[p * plane..(p + 1) * plane];
                // U's position p is [c_out, c_in] forward (so V U^T) and [c_in, c_out] for the
                // adjoint (whose input channels are the weights' outputs).
                if u.adjoint {
                    matmul_nn(mp, vp, up, [rows, s.c_out, s.c_in], first);
                } else {
                    matmul_nt(mp, vp, up, [rows, s.c_out, s.c_in], first);
                }
            }
        }
        let zc = &mut z[i0 * px * s.c_out..(i0 + imgs) * px * s.c_out];
        timed(
            Work::Im2col,
            #[inline(always)]
            || transform_output(s, &m, imgs, bias.as_deref(), zc, out),
        );
        on_chunk(zc);
    }
}

/// `dM = A dY A^T` of every tile of `imgs` images of `dz` (`[imgs * h * w, c]`), into `dm`
/// (`[16, tiles, c]`): the adjoint of [`transform_output`], pixels outside the image being
/// zero. `A y = [y0, y0 + y1, y0 - y1, -y1]` on each axis.
#[inline(always)]
fn transform_output_adjoint<T: Real>(s: &Shape, dz: &[T], imgs: usize, dm: &mut [T]) {
    #[cfg(target_arch = "x86_64")]
    if s.c_out.is_multiple_of(16)
        && let Some(f) = F32Avx512::for_type::<T>()
    {
        let (dz, dm) = (f.cast(dz), f.cast_mut(dm));
        // SAFETY: AVX-512F was detected; the kernel checks its bounds.
        return unsafe { avx512::transform_output_adjoint(s, dz, imgs, dm) };
    }
    let (h, w, c) = (s.h, s.w, s.c_out);
    let (ty_n, tx_n) = (h.div_ceil(2), s.tiles_x());
    let tiles = imgs * ty_n * tx_n;
    let a = |[y0, y1]: [Lane<T>; 2]| [y0, add(&y0, &y1), sub(&y0, &y1), sub(&[T::default(); LANES], &y1)];
    for img in 0..imgs {
        for ty in 0..ty_n {
            for tx in 0..tx_n {
                let t = (img * ty_n + ty) * tx_n + tx;
                for ch in (0..c).step_by(LANES) {
                    let n = LANES.min(c - ch);
                    let dy = |p: usize, q: usize| {
                        let (y, xx) = (2 * ty + p, 2 * tx + q);
                        if y < h && xx < w {
                            load(&dz[((img * h + y) * w + xx) * c + ch..], n)
                        } else {
                            [T::default(); LANES]
                        }
                    };
                    let cols = [a([dy(0, 0), dy(1, 0)]), a([dy(0, 1), dy(1, 1)])]; // [b][i]
                    for i in 0..4 {
                        for (j, lane) in a([cols[0][i], cols[1][i]]).iter().enumerate() {
                            store(&mut dm[((i * 4 + j) * tiles + t) * c + ch..], lane, n, Out::Set);
                        }
                    }
                }
            }
        }
    }
}

/// Images per chunk of [`conv`] and [`WeightGradient`] for shape `s` (at most `batch`, at
/// least one).
#[inline(always)]
pub(crate) fn chunk_images(s: &Shape, batch: usize) -> usize {
    (CHUNK_VALUES / (POS * s.tiles() * s.c_in.max(s.c_out))).max(1).min(batch.max(1))
}

#[cfg(target_arch = "x86_64")]
mod avx512;
