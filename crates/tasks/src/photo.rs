//! The photo pipeline: per-image augmentation of training images (random crop with padding,
//! horizontal flip, colour jitter) and per-channel normalisation, applied to an image's input
//! values (after [`crate::Intensity`]) when an episode is rendered.
//!
//! Augmentation is drawn per episode: a sampler that augments stores a seed in the episode
//! ([`crate::Episode::augment_seed`]), and rendering draws every image's crop, flip and jitter
//! from it in order, so an episode renders the same pixels wherever and whenever it is rendered
//! (a resumed run sees the very images an uninterrupted one would).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Random changes to each training image, as torchvision's `RandomCrop(size, padding)`,
/// `RandomHorizontalFlip()` and `ColorJitter(j, j, j)` make them. The default changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct ImageAugment {
    /// Pad each side with this many zero pixels, then crop the original size at a uniform
    /// offset (0: no crop).
    pub crop_padding: usize,
    /// Mirror left to right with probability one half.
    pub flip: bool,
    /// Scale brightness, contrast and saturation by factors drawn uniformly from
    /// `[1 - j, 1 + j]` (0: none), values kept in `[0, 1]`.
    pub jitter: f32,
}

impl ImageAugment {
    /// Whether it changes anything.
    pub fn is_off(&self) -> bool {
        self.crop_padding == 0 && !self.flip && self.jitter == 0.0
    }

    /// Check the values: a jitter in `[0, 1)`, a padding below the image side `size`.
    pub fn validate(&self, size: usize) -> Result<()> {
        if !(0.0..1.0).contains(&self.jitter) {
            return Err(Error::InvalidSpec {
                name: "colour jitter",
                value: 0,
                expected: format!("a factor in [0, 1) (got {})", self.jitter),
            });
        }
        if self.crop_padding >= size.max(1) {
            return Err(Error::InvalidSpec {
                name: "crop padding",
                value: self.crop_padding,
                expected: format!("fewer pixels than the image side ({size})"),
            });
        }
        Ok(())
    }

    /// Change one image in place: `channels` planes of `size * size` values in `[0, 1]`
    /// (channels first), with the draws taken from `rng` in a fixed order (offsets, flip,
    /// then the three jitter factors), whether or not each is used.
    pub fn apply(&self, image: &mut [f32], channels: usize, size: usize, rng: &mut impl Rng) {
        let plane = size * size;
        debug_assert_eq!(image.len(), channels * plane);
        let pad = self.crop_padding as i64;
        let (dy, dx) = (rng.random_range(-pad..=pad) as isize, rng.random_range(-pad..=pad) as isize);
        let pad = pad as isize;
        let flip = rng.random_bool(0.5);
        let j = self.jitter;
        let mut factor = || 1.0 + j * (2.0 * rng.random::<f32>() - 1.0);
        let (brightness, contrast, saturation) = (factor(), factor(), factor());
        if pad > 0 || (self.flip && flip) {
            let mirror = self.flip && flip;
            let n = size as isize;
            let mut out = vec![0.0f32; image.len()];
            for (src, dst) in image.chunks(plane).zip(out.chunks_mut(plane)) {
                for r in 0..n {
                    let sr = r + dy;
                    if !(0..n).contains(&sr) {
                        continue;
                    }
                    for c in 0..n {
                        let c_in = if mirror { n - 1 - c } else { c };
                        let sc = c_in + dx;
                        if (0..n).contains(&sc) {
                            dst[(r * n + c) as usize] = src[(sr * n + sc) as usize];
                        }
                    }
                }
            }
            image.copy_from_slice(&out);
        }
        if j > 0.0 {
            for v in image.iter_mut() {
                *v = (*v * brightness).clamp(0.0, 1.0);
            }
            // Contrast: blend with the image's mean gray (luminance for colour).
            let gray = luminance(image, channels, plane);
            let mean = gray.iter().sum::<f32>() / plane as f32;
            for v in image.iter_mut() {
                *v = (mean + contrast * (*v - mean)).clamp(0.0, 1.0);
            }
            if channels == 3 {
                let gray = luminance(image, channels, plane);
                for channel in image.chunks_mut(plane) {
                    for (v, g) in channel.iter_mut().zip(&gray) {
                        *v = (g + saturation * (*v - g)).clamp(0.0, 1.0);
                    }
                }
            }
        }
    }
}

/// Each pixel's gray level (ITU-R 601-2 luma for three channels, the value itself for one).
fn luminance(image: &[f32], channels: usize, plane: usize) -> Vec<f32> {
    if channels == 3 {
        (0..plane).map(|i| 0.299 * image[i] + 0.587 * image[plane + i] + 0.114 * image[2 * plane + i]).collect()
    } else {
        image[..plane].to_vec()
    }
}

/// Per-channel normalisation, `(v - mean[c]) / std[c]`, of input values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Normalize {
    /// Each channel's mean.
    pub mean: Vec<f32>,
    /// Each channel's standard deviation (positive).
    pub std: Vec<f32>,
}

impl Normalize {
    /// Check it against images of `channels` channels: one finite mean and one positive, finite
    /// standard deviation per channel.
    pub fn validate(&self, channels: usize) -> Result<()> {
        let bad = |what: &'static str, n: usize| Error::InvalidSpec {
            name: what,
            value: n,
            expected: format!("{channels} finite value(s), one per channel, standard deviations above 0"),
        };
        if self.mean.len() != channels || !self.mean.iter().all(|m| m.is_finite()) {
            return Err(bad("normalisation means", self.mean.len()));
        }
        if self.std.len() != channels || !self.std.iter().all(|s| s.is_finite() && *s > 0.0) {
            return Err(bad("normalisation standard deviations", self.std.len()));
        }
        Ok(())
    }

    /// The per-channel mean and standard deviation of `images` (each `channels` planes of
    /// `plane` input values), summed in f64.
    pub fn measure(images: impl IntoIterator<Item = impl AsRef<[f32]>>, channels: usize, plane: usize) -> Normalize {
        let (mut sum, mut squares, mut count) = (vec![0f64; channels], vec![0f64; channels], 0f64);
        for image in images {
            for (c, values) in image.as_ref().chunks(plane).enumerate().take(channels) {
                for &v in values {
                    sum[c] += v as f64;
                    squares[c] += (v as f64) * (v as f64);
                }
            }
            count += plane as f64;
        }
        let count = count.max(1.0);
        let mean: Vec<f64> = sum.iter().map(|s| s / count).collect();
        let std = squares.iter().zip(&mean).map(|(q, m)| ((q / count - m * m).max(0.0)).sqrt().max(1e-6) as f32);
        Normalize { mean: mean.iter().map(|&m| m as f32).collect(), std: std.collect() }
    }

    /// Normalise one image in place.
    pub fn apply(&self, image: &mut [f32], plane: usize) {
        for (c, values) in image.chunks_mut(plane).enumerate() {
            let (m, s) = (self.mean[c], self.std[c]);
            for v in values {
                *v = (*v - m) / s;
            }
        }
    }
}

/// How an episode's stored images become a model's inputs beyond their [`crate::Intensity`]:
/// augmentation (for episodes that carry an augmentation seed) then normalisation.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Pipeline {
    /// Changes to training images (applied to episodes with [`crate::Episode::augment_seed`]).
    pub augment: ImageAugment,
    /// Per-channel normalisation, applied to every image.
    pub normalize: Option<Normalize>,
}

impl Pipeline {
    /// The RNG an episode's augmentation draws from.
    pub fn rng(seed: u64) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(seed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(channels: usize, size: usize) -> Vec<f32> {
        (0..channels * size * size).map(|i| (i % 97) as f32 / 97.0).collect()
    }

    #[test]
    fn off_changes_nothing_and_draws_the_same() {
        let img = ramp(3, 8);
        let mut x = img.clone();
        ImageAugment::default().apply(&mut x, 3, 8, &mut Pipeline::rng(1));
        assert_eq!(x, img);
    }

    #[test]
    fn flip_alone_mirrors_each_row_when_drawn() {
        let aug = ImageAugment { flip: true, ..Default::default() };
        let img = ramp(1, 5);
        let mut flipped = 0;
        for seed in 0..40 {
            let mut x = img.clone();
            aug.apply(&mut x, 1, 5, &mut Pipeline::rng(seed));
            if x != img {
                flipped += 1;
                for r in 0..5 {
                    for c in 0..5 {
                        assert_eq!(x[r * 5 + c], img[r * 5 + 4 - c]);
                    }
                }
            }
        }
        assert!((10..=30).contains(&flipped), "flipped {flipped} of 40");
    }

    #[test]
    fn crop_moves_the_picture_and_fills_with_zero() {
        let aug = ImageAugment { crop_padding: 2, ..Default::default() };
        let img: Vec<f32> = vec![0.5; 36];
        let mut shifted = 0;
        for seed in 0..20 {
            let mut x = img.clone();
            aug.apply(&mut x, 1, 6, &mut Pipeline::rng(seed));
            let zeros = x.iter().filter(|&&v| v == 0.0).count();
            // A shift of (dy, dx) leaves 6|dy| + 6|dx| - |dy dx| pixels outside the picture.
            assert!(x.iter().all(|&v| v == 0.0 || v == 0.5));
            assert!(zeros <= 6 * 2 + 6 * 2 - 4 + 4 && zeros < 36);
            shifted += (zeros > 0) as usize;
        }
        assert!(shifted >= 10, "shifted {shifted} of 20");
    }

    #[test]
    fn jitter_stays_in_range_and_a_gray_photo_keeps_equal_channels() {
        let aug = ImageAugment { jitter: 0.4, ..Default::default() };
        let gray: Vec<f32> = (0..16).map(|i| i as f32 / 15.0).collect();
        let mut img = [gray.clone(), gray.clone(), gray].concat();
        aug.apply(&mut img, 3, 4, &mut Pipeline::rng(3));
        assert!(img.iter().all(|v| (0.0..=1.0).contains(v)));
        for i in 0..16 {
            assert!((img[i] - img[16 + i]).abs() < 1e-6 && (img[i] - img[32 + i]).abs() < 1e-6);
        }
    }

    #[test]
    fn measured_normalisation_gives_zero_mean_unit_variance() {
        let images: Vec<Vec<f32>> =
            (0..5).map(|k| (0..2 * 9).map(|i| ((i * 7 + k * 3) % 11) as f32).collect()).collect();
        let n = Normalize::measure(images.iter().map(|v| v.as_slice()), 2, 9);
        n.validate(2).unwrap();
        let mut all: Vec<f32> = Vec::new();
        for img in &images {
            let mut x = img.clone();
            n.apply(&mut x, 9);
            all.extend(x);
        }
        for c in 0..2 {
            let values: Vec<f64> = all
                .chunks(9)
                .enumerate()
                .filter(|(i, _)| i % 2 == c)
                .flat_map(|(_, v)| v.iter().map(|&x| x as f64))
                .collect();
            let mean = values.iter().sum::<f64>() / values.len() as f64;
            let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64;
            assert!(mean.abs() < 1e-5 && (var - 1.0).abs() < 1e-4, "channel {c}: {mean} {var}");
        }
        assert!(Normalize { mean: vec![0.0], std: vec![0.0] }.validate(1).is_err());
        assert!(n.validate(3).is_err());
    }
}
