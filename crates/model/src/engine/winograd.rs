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

use super::buffer::Buffer;
use super::gemm::{Out, matmul_nn, matmul_nt, matmul_tn};
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

/// A transformed filter `U = G g G^T`: `[16, c_out_w, c_in_w]` for weights stored `[c_out_w,
/// 3, 3, c_in_w]`, in both directions (so that building it only copies contiguous channel
/// runs): the forward convolution multiplies by each position's matrix transposed, the input
/// gradient by the matrix itself.
pub(crate) struct Filter<T: Real> {
    u: Buffer<T>,
    adjoint: bool,
    /// The centring of a forward convolution's input, if any (see [`centred_filter`]).
    centring: Option<Centring<T>>,
}

/// A forward convolution computed as `conv(x - mu, w) + conv(mu, w)` (`mu` inside the image,
/// zero padding outside): Winograd's transforms lose digits in proportion to the magnitudes
/// they add up, and a block's input (ReLU outputs, all positive) has a large per-channel mean
/// that batch norm then subtracts again. Transforming `x - mu` and adding the exact
/// `conv(mu, w)` afterwards (one of 16 vectors per output pixel, by which of its taps fall
/// outside the image) keeps the f32 meta-gradient within 1e-5 of f64's at the paper shape
/// (`fewshot-meta`'s `f32_meta_gradients_stay_close_to_f64_at_the_paper_shape`: 1.5e-4
/// uncentred).
struct Centring<T: Real> {
    /// Per input channel: `[c_in]`.
    mu: Vec<T>,
    /// `conv(mu, w)` per border class (see [`border`]): `[16, c_out]`.
    bias: Vec<T>,
}

/// An output pixel's border class along one axis of size `n`: bit 0 if its tap before is
/// outside the image, bit 1 if its tap after is.
#[inline(always)]
fn border(y: usize, n: usize) -> usize {
    (y == 0) as usize | (((y + 1 == n) as usize) << 1)
}

/// The transformed filter of weights `w` (`[c_out_w, 3, 3, c_in_w]`).
///
/// With `adjoint` false the convolution is the forward one (`c_in = c_in_w`, `c_out =
/// c_out_w`). With `adjoint` true it is the input gradient: the convolution of the
/// conv-output gradient (`c_out_w` channels) with the weights' taps rotated by 180 degrees and
/// their channel roles swapped, giving `c_in_w` channels.
#[inline(always)]
pub(crate) fn filter<T: Real>(w: &[T], c_out_w: usize, c_in_w: usize, adjoint: bool) -> Filter<T> {
    let plane = c_out_w * c_in_w;
    // The taps as 9 planes [c_out_w, c_in_w], rotated for the adjoint.
    let mut g = Buffer::scratch(9 * plane);
    for o in 0..c_out_w {
        for t in 0..9 {
            let src = if adjoint { 8 - t } else { t };
            g[t * plane + o * c_in_w..][..c_in_w].copy_from_slice(&w[(o * 9 + src) * c_in_w..][..c_in_w]);
        }
    }
    // G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]] on the rows (gg: [4, 3]
    // planes), then on the columns (u: [4, 4] planes).
    let half = T::from_f64(0.5);
    let mut gg = Buffer::scratch(12 * plane);
    let mut col = Buffer::scratch(4 * plane);
    for kx in 0..3 {
        let p = |ky: usize| &g[(ky * 3 + kx) * plane..][..plane];
        g_planes(&mut col, [p(0), p(1), p(2)], plane, half);
        for r in 0..4 {
            gg[(r * 3 + kx) * plane..][..plane].copy_from_slice(&col[r * plane..][..plane]);
        }
    }
    let mut u = Buffer::scratch(POS * plane);
    for r in 0..4 {
        let p = |kx: usize| &gg[(r * 3 + kx) * plane..][..plane];
        g_planes(&mut col, [p(0), p(1), p(2)], plane, half);
        for s in 0..4 {
            u[(r * 4 + s) * plane..][..plane].copy_from_slice(&col[s * plane..][..plane]);
        }
    }
    Filter { u, adjoint, centring: None }
}

/// `G g = [g0, (g0 + g1 + g2) / 2, (g0 - g1 + g2) / 2, g2]` elementwise over three planes of
/// `plane` values, into the four planes of `out` (`[4, plane]`). A function with
/// `#[inline(always)]`, not a closure: as a closure perf showed it compiled on its own at the
/// baseline SIMD level.
#[inline(always)]
fn g_planes<T: Real>(out: &mut [T], [p0, p1, p2]: [&[T]; 3], plane: usize, half: T) {
    let (o0, rest) = out[..4 * plane].split_at_mut(plane);
    let (o1, rest) = rest.split_at_mut(plane);
    let (o2, o3) = rest.split_at_mut(plane);
    o0.copy_from_slice(p0);
    o3.copy_from_slice(p2);
    for ((((a, b), x), y), z) in o1.iter_mut().zip(o2.iter_mut()).zip(p0).zip(p1).zip(p2) {
        *a = (*x + *y + *z) * half;
        *b = (*x - *y + *z) * half;
    }
}

/// Per-channel means of `x` (`[rows, c]`): the centre of [`Centring`] (any value gives the
/// same convolution in exact arithmetic; the mean makes the transformed values small).
#[inline(always)]
fn channel_means<T: Real>(x: &[T], c: usize) -> Vec<T> {
    let mut mu = vec![T::default(); c];
    for px in x.chunks_exact(c) {
        mu.iter_mut().zip(px).for_each(|(m, v)| *m += *v);
    }
    let inv = T::from_f64(1.0 / (x.len() / c).max(1) as f64);
    mu.iter_mut().for_each(|m| *m = *m * inv);
    mu
}

/// Whether tap `k` (0, 1, 2) of an output pixel of border class `cls` (see [`border`]) falls
/// outside the image.
#[inline(always)]
fn outside(k: usize, cls: usize) -> bool {
    (k == 0 && cls & 1 != 0) || (k == 2 && cls & 2 != 0)
}

/// The forward filter of weights `w` (`[c_out, 3, 3, c_in]`) with the centring of input `x`
/// (`[rows, c_in]`, every pixel of the batch): see [`Centring`].
#[inline(always)]
pub(crate) fn centred_filter<T: Real>(w: &[T], c_out: usize, c_in: usize, x: &[T]) -> Filter<T> {
    let mu = channel_means(x, c_in);
    // taps[o][t] = sum_c mu_c w[o, t, c]; then each class's sum over the taps inside.
    let mut bias = vec![T::default(); 16 * c_out];
    for o in 0..c_out {
        let mut taps = [T::default(); 9];
        for (t, tap) in taps.iter_mut().enumerate() {
            *tap = lane_dot(&w[(o * 9 + t) * c_in..][..c_in], &mu);
        }
        for cy in 0..4 {
            for cx in 0..4 {
                let mut sum = T::default();
                for ky in 0..3 {
                    for kx in 0..3 {
                        if !outside(ky, cy) && !outside(kx, cx) {
                            sum += taps[ky * 3 + kx];
                        }
                    }
                }
                bias[(cy * 4 + cx) * c_out + o] = sum;
            }
        }
    }
    Filter { centring: Some(Centring { mu, bias }), ..filter(w, c_out, c_in, false) }
}

/// `sum a_i b_i` in [`LANES`] partial sums (vectorised at the caller's SIMD level; a plain
/// fold is one chain of dependent additions, and as an `array::from_fn` closure it was not
/// inlined into the caller's SIMD level).
#[inline(always)]
fn lane_dot<T: Real>(a: &[T], b: &[T]) -> T {
    let mut acc = [T::default(); LANES];
    let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    let mut sum = ar.iter().zip(br).fold(T::default(), |s, (x, y)| s + *x * *y);
    for v in acc {
        sum += v;
    }
    sum
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
    if s.c_in.is_multiple_of(16) && std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() && avx512::available()
    {
        // SAFETY: T is f32 (checked just above).
        let x = unsafe { std::slice::from_raw_parts(x.as_ptr().cast::<f32>(), x.len()) };
        let v = unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<f32>(), v.len()) };
        // SAFETY: as above.
        let mu = mu.map(|m| unsafe { std::slice::from_raw_parts(m.as_ptr().cast::<f32>(), m.len()) });
        // SAFETY: AVX-512F was detected; the kernel checks its bounds.
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
    if s.c_out.is_multiple_of(16) && std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() && avx512::available()
    {
        // SAFETY: T is f32 (checked just above).
        let m = unsafe { std::slice::from_raw_parts(m.as_ptr().cast::<f32>(), m.len()) };
        let z = unsafe { std::slice::from_raw_parts_mut(z.as_mut_ptr().cast::<f32>(), z.len()) };
        // SAFETY: as above.
        let bias = bias.map(|b| unsafe { std::slice::from_raw_parts(b.as_ptr().cast::<f32>(), b.len()) });
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
    if s.c_out.is_multiple_of(16) && std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() && avx512::available()
    {
        // SAFETY: T is f32 (checked just above).
        let dz = unsafe { std::slice::from_raw_parts(dz.as_ptr().cast::<f32>(), dz.len()) };
        let dm = unsafe { std::slice::from_raw_parts_mut(dm.as_mut_ptr().cast::<f32>(), dm.len()) };
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

/// `gw = sum over pixels of dz^T im2col(x)` (or `+=`): the weight gradient, `[c_out, 3, 3,
/// c_in]`, of the forward convolution of `x` (`[batch, h, w, c_in]`) for the conv-output
/// gradient `dz` (`[batch * h * w, c_out]`); see [`WeightGradient`].
#[inline(always)]
pub(crate) fn weight_gradient<T: Real>(s: &Shape, batch: usize, x: &[T], dz: &[T], gw: &mut [T], out: Out) {
    let px = s.h * s.w;
    let mut g = WeightGradient::new(s, batch, x);
    g.add(&x[..batch * px * s.c_in], &dz[..batch * px * s.c_out], batch);
    g.finish(gw, out);
}

/// Images per chunk of [`conv`] and [`WeightGradient`] for shape `s` (at most `batch`, at
/// least one).
#[inline(always)]
pub(crate) fn chunk_images(s: &Shape, batch: usize) -> usize {
    (CHUNK_VALUES / (POS * s.tiles() * s.c_in.max(s.c_out))).max(1).min(batch.max(1))
}

/// A weight gradient accumulated a chunk of images at a time (the gradient pass feeds it each
/// chunk of `dz` as it produces it, while the chunk is in cache). By the adjoint of the
/// forward's algorithm: `dU_p = sum_tiles dM_p^T V_p` (16 products with the tiles as their
/// long inner dimension), then `dg = G^T dU G`; with the input centred as in [`Centring`],
/// whose `conv(mu, w)` term contributes `mu_i` times the sum of `dz` over the pixels whose tap
/// lies inside the image.
pub(crate) struct WeightGradient<T: Real> {
    s: Shape,
    /// The whole batch's per-channel input means (the forward pass's centring).
    mu: Vec<T>,
    step: usize,
    v: Buffer<T>,
    dm: Buffer<T>,
    /// `[16, c_out, c_in]`.
    du: Buffer<T>,
    /// Per border class and output channel, the sum of `dz` so far: `[16, c_out]`.
    class_sums: Vec<T>,
    started: bool,
}

impl<T: Real> WeightGradient<T> {
    /// For the forward convolution of `x` (`[batch, h, w, c_in]`: the whole batch, whose
    /// channel means centre the transforms).
    #[inline(always)]
    pub(crate) fn new(s: &Shape, batch: usize, x: &[T]) -> Self {
        let (px, tiles) = (s.h * s.w, s.tiles());
        let step = chunk_images(s, batch);
        WeightGradient {
            s: *s,
            mu: channel_means(&x[..batch * px * s.c_in], s.c_in),
            step,
            v: Buffer::scratch(POS * step * tiles * s.c_in),
            dm: Buffer::scratch(POS * step * tiles * s.c_out),
            du: Buffer::scratch(POS * s.c_in * s.c_out),
            class_sums: vec![T::default(); 16 * s.c_out],
            started: false,
        }
    }

    /// Adds `imgs` images: their input `x` (`[imgs, h, w, c_in]`) and conv-output gradient
    /// `dz` (`[imgs * h * w, c_out]`).
    #[inline(always)]
    pub(crate) fn add(&mut self, x: &[T], dz: &[T], imgs: usize) {
        let s = self.s;
        let (h, w, c_in, c_out) = (s.h, s.w, s.c_in, s.c_out);
        let (px, tiles, plane) = (h * w, s.tiles(), c_in * c_out);
        for i0 in (0..imgs).step_by(self.step) {
            let n = self.step.min(imgs - i0);
            let rows = n * tiles;
            let xc = &x[i0 * px * c_in..(i0 + n) * px * c_in];
            let dzc = &dz[i0 * px * c_out..(i0 + n) * px * c_out];
            let (v, dm, mu) = (&mut self.v, &mut self.dm, &self.mu);
            timed(
                Work::Im2col,
                #[inline(always)]
                || {
                    transform_input(&s, xc, n, Some(mu), v);
                    transform_output_adjoint(&s, dzc, n, dm);
                },
            );
            let first = if self.started { Out::Add } else { Out::Set };
            self.started = true;
            for p in 0..POS {
                matmul_tn(
                    &mut self.du[p * plane..(p + 1) * plane],
                    &self.dm[p * rows * c_out..(p + 1) * rows * c_out],
                    &self.v[p * rows * c_in..(p + 1) * rows * c_in],
                    [c_out, c_in, rows],
                    first,
                );
            }
            // The centring's term: per output channel, the sums of dz over each border
            // class's pixels.
            for img in 0..n {
                for y in 0..h {
                    for xx in 0..w {
                        let cls = border(y, h) * 4 + border(xx, w);
                        let row = &dzc[((img * h + y) * w + xx) * c_out..][..c_out];
                        self.class_sums[cls * c_out..][..c_out].iter_mut().zip(row).for_each(|(s, d)| *s += *d);
                    }
                }
            }
        }
    }

    /// Writes (or adds) the gradient into `gw` (`[c_out, 3, 3, c_in]`).
    ///
    /// `G^T dU G` as whole-plane passes over `[c_out, c_in]` (contiguous runs, vectorised at
    /// the caller's SIMD level), not per channel pair: gathering each pair's 16 values with a
    /// stride of a plane, through `array::from_fn` closures that were not inlined, was 12% of
    /// a 5-way 1-shot second-order step by perf (design point 18).
    #[inline(always)]
    pub(crate) fn finish(self, gw: &mut [T], out: Out) {
        let (c_in, c_out) = (self.s.c_in, self.s.c_out);
        let plane = c_in * c_out;
        let (du, mu, class_sums) = (&self.du, &self.mu, &self.class_sums);
        if !self.started {
            if out == Out::Set {
                gw[..9 * plane].fill(T::default());
            }
            return;
        }
        let half = T::from_f64(0.5);
        // G^T along each row r of positions (over q): rows[r * 3 + kx], then along the columns
        // (over r): taps[kx * 3 + ky] (column-major, so each column's pass writes its three
        // planes in place).
        let mut rows = Buffer::scratch(12 * plane);
        for (r, dst) in rows.chunks_exact_mut(3 * plane).enumerate() {
            let u = |q: usize| &du[(r * 4 + q) * plane..][..plane];
            g_t_planes([u(0), u(1), u(2), u(3)], dst, plane, half);
        }
        let mut taps = Buffer::scratch(9 * plane);
        for (kx, dst) in taps.chunks_exact_mut(3 * plane).enumerate() {
            let r = |r: usize| &rows[(r * 3 + kx) * plane..][..plane];
            g_t_planes([r(0), r(1), r(2), r(3)], dst, plane, half);
        }
        for o in 0..c_out {
            for t in 0..9 {
                let (ky, kx) = (t / 3, t % 3);
                // Sum of dz over the pixels whose tap (ky, kx) is inside the image.
                let mut inside = T::default();
                for cls in 0..16 {
                    if !outside(ky, cls / 4) && !outside(kx, cls % 4) {
                        inside += class_sums[cls * c_out + o];
                    }
                }
                let src = &taps[(kx * 3 + ky) * plane + o * c_in..][..c_in];
                let dst = &mut gw[(o * 9 + t) * c_in..][..c_in];
                match out {
                    Out::Set => dst.iter_mut().zip(src).zip(mu).for_each(|((d, s), m)| *d = *s + *m * inside),
                    Out::Add => dst.iter_mut().zip(src).zip(mu).for_each(|((d, s), m)| *d += *s + *m * inside),
                }
            }
        }
    }
}

/// `G^T u = [u0 + (u1 + u2) / 2, (u1 - u2) / 2, (u1 + u2) / 2 + u3]` elementwise over four
/// planes of `plane` values, into the three planes of `dst` (`[3, plane]`).
#[inline(always)]
fn g_t_planes<T: Real>([u0, u1, u2, u3]: [&[T]; 4], dst: &mut [T], plane: usize, half: T) {
    let (o0, rest) = dst[..3 * plane].split_at_mut(plane);
    let (o1, o2) = rest.split_at_mut(plane);
    for ((((((a, b), c), x0), x1), x2), x3) in
        o0.iter_mut().zip(o1.iter_mut()).zip(o2.iter_mut()).zip(u0).zip(u1).zip(u2).zip(u3)
    {
        *a = *x0 + (*x1 + *x2) * half;
        *b = (*x1 - *x2) * half;
        *c = (*x1 + *x2) * half + *x3;
    }
}

/// The input transform in AVX-512 registers, for f32 and channel counts that are multiples of
/// 16 (the net's): 16 loads, the transform, 16 stores per tile and 16 channels.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Out, Shape};
    use std::arch::x86_64::*;

    /// Whether this CPU has AVX-512F (the result is cached by std).
    pub fn available() -> bool {
        std::arch::is_x86_feature_detected!("avx512f")
    }

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
                                                b.as_ptr()
                                                    .add((super::border(y, h) * 4 + super::border(xx, w)) * c + ch),
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
                                unsafe {
                                    _mm512_storeu_ps(dm.as_mut_ptr().add(((i * 4 + j) * tiles + t) * c + ch), lane)
                                };
                            }
                        }
                    }
                }
            }
        }
    }
}
