//! Rotations of square gray images: exact quarter turns, and arbitrary angles with bilinear
//! interpolation.
//!
//! Images are row-major `size * size` f32 slices; `(row, col)` with row 0 at the top.
//! Positive angles turn the picture counter-clockwise as seen on screen (like `numpy.rot90`
//! and `torchvision.transforms.functional.rotate`).

use serde::{Deserialize, Serialize};

/// A quarter-turn rotation, counter-clockwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
pub enum Rotation {
    /// No rotation.
    #[default]
    R0,
    /// 90 degrees counter-clockwise.
    R90,
    /// 180 degrees.
    R180,
    /// 270 degrees counter-clockwise (90 clockwise).
    R270,
}

impl Rotation {
    /// All four, in order.
    pub const ALL: [Rotation; 4] = [Rotation::R0, Rotation::R90, Rotation::R180, Rotation::R270];

    /// Number of counter-clockwise quarter turns.
    pub fn quarter_turns(self) -> usize {
        self as usize
    }

    /// The rotation of `k` quarter turns (mod 4).
    pub fn from_quarter_turns(k: usize) -> Rotation {
        Rotation::ALL[k % 4]
    }

    /// Degrees, counter-clockwise.
    pub fn degrees(self) -> f32 {
        90.0 * self.quarter_turns() as f32
    }
}

/// Rotate a square image by quarter turns, exactly (a permutation of pixels).
///
/// # Panics
/// If `image.len() != size * size`.
pub fn rotate_quarter(image: &[f32], size: usize, rotation: Rotation) -> Vec<f32> {
    assert_eq!(image.len(), size * size, "image is not {size}x{size}");
    let n = size;
    let mut out = vec![0.0; n * n];
    for r in 0..n {
        for c in 0..n {
            // Where does output pixel (r, c) come from? For one counter-clockwise turn, the
            // output's top row is the input's right column: out[r][c] = in[c][n-1-r].
            let (sr, sc) = match rotation {
                Rotation::R0 => (r, c),
                Rotation::R90 => (c, n - 1 - r),
                Rotation::R180 => (n - 1 - r, n - 1 - c),
                Rotation::R270 => (n - 1 - c, r),
            };
            out[r * n + c] = image[sr * n + sc];
        }
    }
    out
}

/// Rotate a square image by `degrees` counter-clockwise about its centre, sampling the input
/// bilinearly; points that fall outside the input take `fill` (use the paper's colour).
///
/// # Panics
/// If `image.len() != size * size`.
pub fn rotate_bilinear(image: &[f32], size: usize, degrees: f32, fill: f32) -> Vec<f32> {
    assert_eq!(image.len(), size * size, "image is not {size}x{size}");
    let n = size as isize;
    let centre = (size as f32 - 1.0) / 2.0;
    let (sin, cos) = degrees.to_radians().sin_cos();
    let at = |r: isize, c: isize| {
        if (0..n).contains(&r) && (0..n).contains(&c) { image[(r * n + c) as usize] } else { fill }
    };
    let mut out = vec![fill; size * size];
    for r in 0..size {
        for c in 0..size {
            // Screen coordinates: x to the right, y up. Inverse-rotate the output point.
            let x = c as f32 - centre;
            let y = centre - r as f32;
            let sx = cos * x + sin * y;
            let sy = -sin * x + cos * y;
            let (src_c, src_r) = (sx + centre, centre - sy);
            let (c0, r0) = (src_c.floor(), src_r.floor());
            let (fc, fr) = (src_c - c0, src_r - r0);
            let (c0, r0) = (c0 as isize, r0 as isize);
            let top = at(r0, c0) * (1.0 - fc) + at(r0, c0 + 1) * fc;
            let bottom = at(r0 + 1, c0) * (1.0 - fc) + at(r0 + 1, c0 + 1) * fc;
            out[r * size + c] = top * (1.0 - fr) + bottom * fr;
        }
    }
    out
}

/// Rotation applied to every image of a task (task augmentation).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum TaskRotation {
    /// An exact quarter turn.
    Quarter(Rotation),
    /// An arbitrary angle in degrees, counter-clockwise, bilinear.
    Degrees(f32),
}

impl TaskRotation {
    /// Apply to one image; `fill` is the paper colour for corners that rotate in.
    pub fn apply(self, image: &[f32], size: usize, fill: f32) -> Vec<f32> {
        match self {
            TaskRotation::Quarter(r) => rotate_quarter(image, size, r),
            TaskRotation::Degrees(d) => rotate_bilinear(image, size, d, fill),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 3x3 image with one dark pixel at (row, col).
    fn dot(row: usize, col: usize) -> Vec<f32> {
        let mut img = vec![1.0; 9];
        img[row * 3 + col] = 0.0;
        img
    }

    #[track_caller]
    fn check(rotation: Rotation, from: (usize, usize), to: (usize, usize)) {
        assert_eq!(rotate_quarter(&dot(from.0, from.1), 3, rotation), dot(to.0, to.1), "{rotation:?}");
    }

    #[test]
    fn quarter_turns_move_a_corner_counter_clockwise() {
        // Top-right corner goes to the top-left under a counter-clockwise quarter turn.
        check(Rotation::R0, (0, 2), (0, 2));
        check(Rotation::R90, (0, 2), (0, 0));
        check(Rotation::R90, (0, 0), (2, 0));
        check(Rotation::R180, (0, 2), (2, 0));
        check(Rotation::R270, (0, 2), (2, 2));
        check(Rotation::R90, (0, 1), (1, 0));
    }

    #[test]
    fn four_quarter_turns_are_the_identity() {
        let img: Vec<f32> = (0..25).map(|i| (i * 7 % 11) as f32).collect();
        let mut x = img.clone();
        for _ in 0..4 {
            x = rotate_quarter(&x, 5, Rotation::R90);
        }
        assert_eq!(x, img);
        assert_eq!(rotate_quarter(&rotate_quarter(&img, 5, Rotation::R90), 5, Rotation::R270), img);
    }

    #[test]
    fn bilinear_agrees_with_quarter_turns_at_multiples_of_90() {
        let img: Vec<f32> = (0..36).map(|i| ((i * 13) % 17) as f32 / 17.0).collect();
        for r in Rotation::ALL {
            let exact = rotate_quarter(&img, 6, r);
            let interp = rotate_bilinear(&img, 6, r.degrees(), 1.0);
            for (a, b) in exact.iter().zip(&interp) {
                assert!((a - b).abs() < 1e-4, "{r:?}: {a} vs {b}");
            }
        }
        assert_eq!(rotate_bilinear(&img, 6, 0.0, 1.0), img);
    }

    #[test]
    fn bilinear_45_degrees_moves_mass_as_expected() {
        // A dark pixel right of centre in a 5x5 image, rotated 45 degrees counter-clockwise,
        // lands up and to the right, at (0.59, 3.41); pixel (1, 3) takes the largest share.
        let mut img = vec![1.0f32; 25];
        img[2 * 5 + 4] = 0.0; // row 2, col 4: 2 px right of centre
        let out = rotate_bilinear(&img, 5, 45.0, 1.0);
        let darkest = out.iter().enumerate().min_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
        assert_eq!((darkest / 5, darkest % 5), (1, 3));
        assert!(out[12] > 0.99, "centre stays paper");
    }
}
