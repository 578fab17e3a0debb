//! Episode descriptions and the N-way K-shot sampler.

use rand::Rng;
use rand::seq::{SliceRandom, index};
use serde::{Deserialize, Serialize};

use crate::augment::{Rotation, TaskRotation};
use crate::error::{Error, Result};
use crate::photo::Pipeline;
use crate::split::Class;

/// Drawings per Omniglot character.
pub const DRAWINGS: usize = 20;

/// One labelled image of an episode: which drawing of which class, and its label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Example {
    /// The class (character and its rotation).
    pub class: Class,
    /// Drawing (image) index within its class: 0 to 19 for Omniglot, below the class's image
    /// count for other data (see [`Sampler::with_sizes`]).
    pub drawing: u32,
    /// Label within the episode, 0 to n_way - 1.
    pub label: u8,
}

/// A few-shot task, described without its pixels: cheap to store, to send and to write to a
/// file, and rendered on demand with [`Episode::render`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Episode {
    /// Number of classes.
    pub n_way: usize,
    /// Labelled examples to adapt on, grouped by label (all of label 0 first, ...).
    pub support: Vec<Example>,
    /// Examples to predict, grouped by label.
    pub query: Vec<Example>,
    /// Rotation of the whole task (task augmentation), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_rotation: Option<TaskRotation>,
    /// Seed of the per-image augmentation of a training episode ([`crate::ImageAugment`]),
    /// drawn by a sampler with [`Sampler::augment_images`]; `None` renders the images as
    /// stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub augment_seed: Option<u64>,
}

/// Which drawings may serve as support and which as query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DrawingSplit {
    /// Any drawings, support and query disjoint.
    #[default]
    Any,
    /// Support from drawings 1-10, query from drawings 11-20.
    FirstTenSupport,
}

/// Shape of the episodes to sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpisodeSpec {
    /// Classes per episode (N).
    pub n_way: usize,
    /// Support examples per class (K).
    pub k_shot: usize,
    /// Query examples per class.
    pub n_query: usize,
    /// Where support and query drawings come from.
    #[serde(default)]
    pub drawing_split: DrawingSplit,
}

impl EpisodeSpec {
    /// Check the spec against a class pool of `pool` Omniglot classes (20 drawings each);
    /// errors name the value and range.
    pub fn validate(&self, pool: usize) -> Result<()> {
        self.validate_sized(pool, None)
    }

    /// [`EpisodeSpec::validate`] for classes whose smallest has `min_images` images (`None`:
    /// Omniglot's 20 drawings).
    pub fn validate_sized(&self, pool: usize, min_images: Option<usize>) -> Result<()> {
        let bad =
            |name: &'static str, value: usize, expected: String| Err(Error::InvalidSpec { name, value, expected });
        if self.n_way < 2 {
            return bad("n_way", self.n_way, "at least 2".into());
        }
        if self.n_way > pool {
            return bad("n_way", self.n_way, format!("at most the {pool} classes of the pool"));
        }
        if self.n_way > u8::MAX as usize + 1 {
            return bad("n_way", self.n_way, "at most 256".into());
        }
        if self.k_shot == 0 {
            return bad("k_shot", self.k_shot, "at least 1".into());
        }
        if self.n_query == 0 {
            return bad("n_query", self.n_query, "at least 1".into());
        }
        match (self.drawing_split, min_images) {
            (DrawingSplit::Any, None) if self.k_shot + self.n_query > DRAWINGS => bad(
                "k_shot + n_query",
                self.k_shot + self.n_query,
                format!("at most {DRAWINGS} drawings per character"),
            ),
            (DrawingSplit::Any, Some(min)) if self.k_shot + self.n_query > min => bad(
                "k_shot + n_query",
                self.k_shot + self.n_query,
                format!("at most {min}, the images of the smallest class"),
            ),
            (DrawingSplit::FirstTenSupport, Some(min)) if min < DRAWINGS => bad(
                "drawing_split",
                min,
                format!("classes of {DRAWINGS} drawings or more for \"first_ten_support\" (Omniglot's split)"),
            ),
            (DrawingSplit::FirstTenSupport, _) if self.k_shot > 10 => {
                bad("k_shot", self.k_shot, "at most 10 (support from drawings 1-10)".into())
            }
            (DrawingSplit::FirstTenSupport, _) if self.n_query > 10 => {
                bad("n_query", self.n_query, "at most 10 (query from drawings 11-20)".into())
            }
            _ => Ok(()),
        }
    }
}

/// Task augmentation: a rotation of the whole task, drawn per episode.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum TaskAugment {
    /// No task rotation.
    #[default]
    None,
    /// With probability `p`, rotate the task by 90 or 270 degrees (even odds).
    QuarterTurn {
        /// Probability of rotating a task.
        p: f64,
    },
    /// With probability `p`, rotate the task by a uniform angle in [-90, 90] degrees (bilinear).
    Angle {
        /// Probability of rotating a task.
        p: f64,
    },
}

/// Draws episodes from a class pool.
#[derive(Debug, Clone)]
pub struct Sampler {
    classes: Vec<Class>,
    /// Images of each class; `None`: Omniglot's [`DRAWINGS`] each.
    sizes: Option<Vec<u32>>,
    spec: EpisodeSpec,
    /// Give each sampled class a random quarter-turn rotation (class augmentation).
    pub rotate_classes: bool,
    /// Rotation of whole tasks.
    pub task_augment: TaskAugment,
    /// Give each episode a seed for per-image augmentation ([`Episode::augment_seed`]; drawn
    /// last, so a sampler without it draws the episodes it always drew).
    pub augment_images: bool,
}

impl Sampler {
    /// A sampler over `classes` (distinct) for `spec`; errors if the spec does not fit the pool.
    pub fn new(classes: Vec<Class>, spec: EpisodeSpec) -> Result<Sampler> {
        spec.validate(classes.len())?;
        Ok(Sampler {
            classes,
            sizes: None,
            spec,
            rotate_classes: false,
            task_augment: TaskAugment::None,
            augment_images: false,
        })
    }

    /// The same sampler for classes of `sizes[i]` images each (rather than Omniglot's 20
    /// drawings), `sizes` in the order of the classes; errors if a size is missing or the
    /// smallest class is too small for the spec. With all sizes 20 it draws the episodes
    /// [`Sampler::new`]'s does.
    pub fn with_sizes(mut self, sizes: Vec<u32>) -> Result<Sampler> {
        if sizes.len() != self.classes.len() {
            return Err(Error::InvalidSpec {
                name: "class sizes",
                value: sizes.len(),
                expected: format!("one per class ({})", self.classes.len()),
            });
        }
        let min = sizes.iter().map(|&s| s as usize).min().unwrap_or(0);
        self.spec.validate_sized(self.classes.len(), Some(min))?;
        self.sizes = Some(sizes);
        Ok(self)
    }

    /// The episode shape.
    pub fn spec(&self) -> EpisodeSpec {
        self.spec
    }

    /// Draw one episode: `n_way` distinct classes, labels in a random order, `k_shot` support
    /// and `n_query` query drawings per class, disjoint.
    pub fn sample(&self, rng: &mut impl Rng) -> Episode {
        let EpisodeSpec { n_way, k_shot, n_query, drawing_split } = self.spec;
        let picked = index::sample(rng, self.classes.len(), n_way);
        let mut labels: Vec<u8> = (0..n_way).map(|l| l as u8).collect();
        labels.shuffle(rng);
        let mut by_label: Vec<(u8, Class, Vec<u32>, Vec<u32>)> = Vec::with_capacity(n_way);
        for (i, label) in picked.into_iter().zip(labels) {
            let mut class = self.classes[i];
            if self.rotate_classes {
                let extra = Rotation::from_quarter_turns(rng.random_range(0..4));
                class.rotation = Rotation::from_quarter_turns(class.rotation.quarter_turns() + extra.quarter_turns());
            }
            let available = self.sizes.as_ref().map_or(DRAWINGS, |s| s[i] as usize);
            let (support, query): (Vec<u32>, Vec<u32>) = match drawing_split {
                DrawingSplit::Any => {
                    let d: Vec<u32> =
                        index::sample(rng, available, k_shot + n_query).into_iter().map(|d| d as u32).collect();
                    (d[..k_shot].to_vec(), d[k_shot..].to_vec())
                }
                DrawingSplit::FirstTenSupport => (
                    index::sample(rng, 10, k_shot).into_iter().map(|d| d as u32).collect(),
                    index::sample(rng, 10, n_query).into_iter().map(|d| d as u32 + 10).collect(),
                ),
            };
            by_label.push((label, class, support, query));
        }
        by_label.sort_by_key(|(label, ..)| *label);
        type Entry = (u8, Class, Vec<u32>, Vec<u32>);
        let examples = |pick: fn(&Entry) -> &Vec<u32>| -> Vec<Example> {
            by_label
                .iter()
                .flat_map(|entry| {
                    pick(entry).iter().map(|&drawing| Example { class: entry.1, drawing, label: entry.0 })
                })
                .collect()
        };
        let support = examples(|e| &e.2);
        let query = examples(|e| &e.3);
        let task_rotation = match self.task_augment {
            TaskAugment::None => None,
            TaskAugment::QuarterTurn { p } => rng
                .random_bool(p)
                .then(|| TaskRotation::Quarter(if rng.random_bool(0.5) { Rotation::R90 } else { Rotation::R270 })),
            TaskAugment::Angle { p } => {
                rng.random_bool(p).then(|| TaskRotation::Degrees(rng.random_range(-90.0..=90.0)))
            }
        };
        let augment_seed = self.augment_images.then(|| rng.random::<u64>());
        Episode { n_way, support, query, task_rotation, augment_seed }
    }
}

/// The model's input value of a u8 gray level (255 = paper): `1 - gray / 255`, so ink is 1
/// and paper 0 (a conv net's zero padding then looks like paper).
pub fn ink_intensity(gray: u8) -> f32 {
    1.0 - gray as f32 / 255.0
}

/// How stored u8 values become a model's inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Intensity {
    /// Dark marks on a light page (Omniglot): [`ink_intensity`], `1 - v / 255`, so that the
    /// page is 0, like a conv net's zero padding.
    #[default]
    Ink,
    /// Photographs and other images: `v / 255`.
    Plain,
}

impl Intensity {
    /// The input value of the stored value `v`.
    pub fn value(self, v: u8) -> f32 {
        match self {
            Intensity::Ink => ink_intensity(v),
            Intensity::Plain => v as f32 / 255.0,
        }
    }
}

/// An episode's pixels, ready for a model: f32 in [0, 1] (with [`Intensity::Ink`], ink = 1 and
/// paper = 0, so a conv net's zero padding looks like paper), channels first, labels as u32.
#[derive(Debug, Clone, PartialEq)]
pub struct EpisodePixels {
    /// Side of the square images.
    pub image_size: usize,
    /// Channels per image (1 gray, 3 colour).
    pub channels: usize,
    /// Support images, `[n_support, channels, size, size]` flattened.
    pub support: Vec<f32>,
    /// Support labels, one per image.
    pub support_labels: Vec<u32>,
    /// Query images, `[n_query, channels, size, size]` flattened.
    pub query: Vec<f32>,
    /// Query labels, one per image.
    pub query_labels: Vec<u32>,
}

impl Episode {
    /// Render the episode's Omniglot images: look each drawing up with `image(character,
    /// drawing)` (u8 gray, `size * size`, 255 = paper), map to ink intensity `1 - gray / 255`
    /// (ink = 1, paper = 0), apply the class rotation, then the task rotation.
    pub fn render<'a>(&self, size: usize, image: impl Fn(u32, usize) -> &'a [u8]) -> EpisodePixels {
        self.render_images(size, 1, Intensity::Ink, image)
    }

    /// Render images of `channels` planes of `size * size` u8 values each (channels first),
    /// mapped by `intensity`; rotations turn every plane alike.
    pub fn render_images<'a>(
        &self,
        size: usize,
        channels: usize,
        intensity: Intensity,
        image: impl Fn(u32, usize) -> &'a [u8],
    ) -> EpisodePixels {
        self.render_photos(size, channels, intensity, &Pipeline::default(), image)
    }

    /// [`Episode::render_images`] through a photo [`Pipeline`]: after the rotations, each
    /// image is augmented (when the episode carries an augmentation seed; support images first,
    /// then queries, each drawing from one RNG in order) and normalised.
    pub fn render_photos<'a>(
        &self,
        size: usize,
        channels: usize,
        intensity: Intensity,
        pipeline: &Pipeline,
        image: impl Fn(u32, usize) -> &'a [u8],
    ) -> EpisodePixels {
        let plane = size * size;
        let mut rng = self.augment_seed.filter(|_| !pipeline.augment.is_off()).map(Pipeline::rng);
        let mut render_part = |examples: &[Example]| -> (Vec<f32>, Vec<u32>) {
            let mut pixels = Vec::with_capacity(examples.len() * channels * plane);
            let mut labels = Vec::with_capacity(examples.len());
            for ex in examples {
                let raw = image(ex.class.character, ex.drawing as usize);
                assert_eq!(
                    raw.len(),
                    channels * plane,
                    "image of class {} is not {channels}x{size}x{size}",
                    ex.class.character
                );
                for channel in raw.chunks(plane) {
                    let values: Vec<f32> = channel.iter().map(|&p| intensity.value(p)).collect();
                    let mut img = crate::augment::rotate_quarter(&values, size, ex.class.rotation);
                    if let Some(t) = self.task_rotation {
                        img = t.apply(&img, size, 0.0);
                    }
                    pixels.extend_from_slice(&img);
                }
                let this = pixels.len() - channels * plane..pixels.len();
                if let Some(rng) = rng.as_mut() {
                    pipeline.augment.apply(&mut pixels[this.clone()], channels, size, rng);
                }
                if let Some(n) = &pipeline.normalize {
                    n.apply(&mut pixels[this], plane);
                }
                labels.push(ex.label as u32);
            }
            (pixels, labels)
        };
        let (support, support_labels) = render_part(&self.support);
        let (query, query_labels) = render_part(&self.query);
        EpisodePixels { image_size: size, channels, support, support_labels, query, query_labels }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;

    fn pool(n: u32) -> Vec<Class> {
        (0..n).map(Class::plain).collect()
    }

    #[test]
    fn sampler_invariants() {
        for (k_shot, n_query, split) in
            [(1, 1, DrawingSplit::Any), (5, 15, DrawingSplit::Any), (3, 4, DrawingSplit::FirstTenSupport)]
        {
            let spec = EpisodeSpec { n_way: 5, k_shot, n_query, drawing_split: split };
            let sampler = Sampler::new(pool(12), spec).unwrap();
            let mut rng = ChaCha8Rng::seed_from_u64(7);
            for _ in 0..200 {
                let ep = sampler.sample(&mut rng);
                let classes: BTreeSet<Class> = ep.support.iter().map(|e| e.class).collect();
                assert_eq!(classes.len(), 5, "N distinct classes");
                assert_eq!(ep.support.len(), 5 * k_shot);
                assert_eq!(ep.query.len(), 5 * n_query);
                for label in 0..5u8 {
                    let sup: Vec<&Example> = ep.support.iter().filter(|e| e.label == label).collect();
                    let qry: Vec<&Example> = ep.query.iter().filter(|e| e.label == label).collect();
                    assert_eq!(sup.len(), k_shot, "each label K times in support");
                    assert_eq!(qry.len(), n_query);
                    let class = sup[0].class;
                    assert!(sup.iter().chain(&qry).all(|e| e.class == class), "one class per label");
                    let s: BTreeSet<u32> = sup.iter().map(|e| e.drawing).collect();
                    let q: BTreeSet<u32> = qry.iter().map(|e| e.drawing).collect();
                    assert_eq!(s.len() + q.len(), k_shot + n_query, "distinct drawings");
                    assert!(s.is_disjoint(&q), "support and query disjoint");
                    if split == DrawingSplit::FirstTenSupport {
                        assert!(s.iter().all(|&d| d < 10) && q.iter().all(|&d| d >= 10));
                    }
                }
            }
        }
    }

    #[test]
    fn labels_are_shuffled_per_episode() {
        let sampler =
            Sampler::new(pool(5), EpisodeSpec { n_way: 5, k_shot: 1, n_query: 1, drawing_split: DrawingSplit::Any })
                .unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let orders: BTreeSet<Vec<u32>> =
            (0..50).map(|_| sampler.sample(&mut rng).support.iter().map(|e| e.class.character).collect()).collect();
        assert!(orders.len() > 10, "label-to-class assignment varies: {}", orders.len());
    }

    #[test]
    fn same_seed_same_episodes() {
        let mut sampler =
            Sampler::new(pool(30), EpisodeSpec { n_way: 5, k_shot: 2, n_query: 3, drawing_split: DrawingSplit::Any })
                .unwrap();
        sampler.rotate_classes = true;
        sampler.task_augment = TaskAugment::Angle { p: 0.5 };
        let draw = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            (0..20).map(|_| sampler.sample(&mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
    }

    #[test]
    fn task_augment_probability_is_respected() {
        let mut sampler =
            Sampler::new(pool(10), EpisodeSpec { n_way: 5, k_shot: 1, n_query: 1, drawing_split: DrawingSplit::Any })
                .unwrap();
        sampler.task_augment = TaskAugment::QuarterTurn { p: 0.6 };
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let n = 2000;
        let eps: Vec<Episode> = (0..n).map(|_| sampler.sample(&mut rng)).collect();
        let rotated = eps.iter().filter(|e| e.task_rotation.is_some()).count() as f64 / n as f64;
        assert!((rotated - 0.6).abs() < 0.04, "{rotated}");
        assert!(
            eps.iter()
                .all(|e| matches!(e.task_rotation, None | Some(TaskRotation::Quarter(Rotation::R90 | Rotation::R270))))
        );
    }

    #[test]
    fn invalid_specs_name_the_key() {
        let spec = |n_way, k_shot, n_query| EpisodeSpec { n_way, k_shot, n_query, drawing_split: DrawingSplit::Any };
        let err = |s: EpisodeSpec, pool| s.validate(pool).unwrap_err().to_string();
        assert_eq!(
            err(spec(5, 10, 11), 100),
            "invalid k_shot + n_query = 21: expected at most 20 drawings per character"
        );
        assert_eq!(err(spec(30, 1, 1), 20), "invalid n_way = 30: expected at most the 20 classes of the pool");
        assert_eq!(err(spec(5, 0, 1), 20), "invalid k_shot = 0: expected at least 1");
        assert!(spec(5, 1, 19).validate(5).is_ok());
    }

    #[test]
    fn render_applies_class_then_task_rotation() {
        // A 3x3 "image" per (character, drawing) with one dark pixel at the top right.
        let mut img = [255u8; 9];
        img[2] = 0;
        let class = Class { character: 0, rotation: Rotation::R90 };
        let ep = Episode {
            n_way: 1,
            support: vec![Example { class, drawing: 0, label: 0 }],
            query: vec![Example { class: Class::plain(0), drawing: 1, label: 0 }],
            task_rotation: Some(TaskRotation::Quarter(Rotation::R180)),
            augment_seed: None,
        };
        let px = ep.render(3, |_, _| &img[..]);
        // Class R90 moves the dot to the top left; task R180 then to the bottom right.
        let mut want = vec![0.0f32; 9];
        want[8] = 1.0;
        assert_eq!(px.support, want);
        // Query: no class rotation, task R180 moves top right to bottom left.
        let mut want = vec![0.0f32; 9];
        want[6] = 1.0;
        assert_eq!(px.query, want);
        assert_eq!((px.support_labels, px.query_labels), (vec![0], vec![0]));
    }

    #[test]
    fn augmented_episodes_render_alike_and_leave_unaugmented_draws_unchanged() {
        let spec = EpisodeSpec { n_way: 3, k_shot: 2, n_query: 2, drawing_split: DrawingSplit::Any };
        let plain = Sampler::new(pool(8), spec).unwrap();
        let mut augmenting = plain.clone();
        augmenting.augment_images = true;
        let (mut a, mut b) = (ChaCha8Rng::seed_from_u64(9), ChaCha8Rng::seed_from_u64(9));
        let (e, f) = (plain.sample(&mut a), augmenting.sample(&mut b));
        assert_eq!(e.augment_seed, None);
        assert!(f.augment_seed.is_some());
        assert_eq!(Episode { augment_seed: None, ..f.clone() }, e, "the seed is drawn after the episode");
        let photo: Vec<u8> = (0..3 * 16).map(|i| (i * 5 % 256) as u8).collect();
        let pipeline = Pipeline {
            augment: crate::ImageAugment { crop_padding: 1, flip: true, jitter: 0.3 },
            normalize: Some(crate::Normalize { mean: vec![0.5; 3], std: vec![0.25; 3] }),
        };
        let render = |ep: &Episode| ep.render_photos(4, 3, Intensity::Plain, &pipeline, |_, _| &photo[..]);
        assert_eq!(render(&f), render(&f), "an episode renders the same pixels every time");
        assert_ne!(render(&f).support, render(&e).support, "augmentation changes the training images");
        // Without a seed only normalisation applies.
        let want: Vec<f32> = photo.iter().map(|&v| (v as f32 / 255.0 - 0.5) / 0.25).collect();
        assert_eq!(render(&e).query[..48], want[..]);
        // Serialised episodes without augmentation keep their old form.
        assert!(!serde_json::to_string(&e).unwrap().contains("augment_seed"));
    }
}
