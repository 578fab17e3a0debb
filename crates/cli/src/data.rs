//! The images a run reads: Omniglot ([`Omniglot`], its two subsets and protocols) or a folder
//! of the user's own labelled images ([`Folder`]: one folder per class, gray or colour), behind
//! one [`Data`] that samples episodes and renders them into batches.

use anyhow::bail;
use candle_core::{DType, Device};
use fewshot_images::{ImageFolder, Split};
use fewshot_meta::TaskBatch;
use fewshot_tasks::{Class, Episode, EpisodePixels, EpisodeSpec, Intensity, Sampler, Splits};
use rand::seq::SliceRandom;

use crate::omniglot::Omniglot;

/// The loaded images of a run.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per process, never moved in a loop
pub enum Data {
    /// Omniglot's background and evaluation sets.
    Omniglot(Omniglot),
    /// A folder of class folders.
    Folder(Folder),
}

/// A folder of class folders, loaded: its classes are numbered `0..n` in the folder's order
/// (split, then name), the numbers [`Class::character`] holds.
#[derive(Debug)]
pub struct Folder {
    /// The images.
    pub images: ImageFolder,
    /// How stored values become inputs.
    pub intensity: Intensity,
    /// The classes kept (all, or those with enough images when small ones are skipped).
    pub kept: Vec<u32>,
    /// How its classes split when it has no split folders.
    pub fractions: Fractions,
    /// Augmentation (of episodes that carry a seed for it) and normalisation.
    pub pipeline: fewshot_tasks::Pipeline,
}

/// The fractions of a folder's classes (without `train/`, `val/`, `test/` folders) that train,
/// validate and test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fractions {
    /// Meta-training.
    pub train: f64,
    /// Validation.
    pub val: f64,
    /// Test.
    pub test: f64,
}

impl Data {
    /// Side of the square images.
    pub fn image_size(&self) -> usize {
        match self {
            Data::Omniglot(o) => o.image_size(),
            Data::Folder(f) => f.images.image_size() as usize,
        }
    }

    /// Channels per image.
    pub fn channels(&self) -> usize {
        match self {
            Data::Omniglot(_) => 1,
            Data::Folder(f) => f.images.channels().count(),
        }
    }

    /// Number of classes (Omniglot: characters of both sets).
    pub fn n_classes(&self) -> u32 {
        match self {
            Data::Omniglot(o) => o.n_background() + o.n_evaluation(),
            Data::Folder(f) => f.images.classes().len() as u32,
        }
    }

    /// The Omniglot sets, if these are they.
    pub fn omniglot(&self) -> Option<&Omniglot> {
        match self {
            Data::Omniglot(o) => Some(o),
            Data::Folder(_) => None,
        }
    }

    /// The u8 pixels (`channels x size x size`) of image `index` of class `class`.
    pub fn image(&self, class: u32, index: usize) -> &[u8] {
        match self {
            Data::Omniglot(o) => o.image(class, index),
            Data::Folder(f) => f.images.image(class as usize, index),
        }
    }

    /// The images of each class of `pool`, when they are not Omniglot's 20 drawings.
    pub fn sizes(&self, pool: &[Class]) -> Option<Vec<u32>> {
        match self {
            Data::Omniglot(_) => None,
            Data::Folder(f) => {
                Some(pool.iter().map(|c| f.images.classes()[c.character as usize].images as u32).collect())
            }
        }
    }

    /// A sampler of `spec`'s episodes over `pool` (a folder's classes have their own sizes).
    pub fn sampler(&self, pool: &[Class], spec: EpisodeSpec) -> anyhow::Result<Sampler> {
        sampler(pool, self.sizes(pool), spec)
    }

    /// An episode's images, as the model reads them (channels, intensity).
    pub fn render(&self, episode: &Episode) -> EpisodePixels {
        let (size, channels) = (self.image_size(), self.channels());
        match self {
            Data::Omniglot(_) => episode.render_images(size, channels, Intensity::Ink, |c, d| self.image(c, d)),
            Data::Folder(f) => episode.render_photos(size, channels, f.intensity, &f.pipeline, |c, d| self.image(c, d)),
        }
    }

    /// The per-channel mean and standard deviation of the input values of every image of the
    /// classes of `pool` (`data.normalize`); `None` for Omniglot.
    pub fn measure_normalization(&self, pool: &[Class]) -> Option<fewshot_tasks::Normalize> {
        let Data::Folder(f) = self else { return None };
        let (channels, plane) = (self.channels(), self.image_size().pow(2));
        let images = pool.iter().flat_map(|c| {
            let class = c.character as usize;
            (0..f.images.classes()[class].images)
                .map(move |i| f.images.image(class, i).iter().map(|&v| f.intensity.value(v)).collect::<Vec<f32>>())
        });
        Some(fewshot_tasks::Normalize::measure(images, channels, plane))
    }

    /// Use `normalize` from now on (a folder; Omniglot has none).
    pub fn set_normalization(&mut self, normalize: fewshot_tasks::Normalize) {
        if let Data::Folder(f) = self {
            f.pipeline.normalize = Some(normalize);
        }
    }

    /// Render episodes into one meta-batch.
    pub fn batch(&self, episodes: &[Episode], dtype: DType, device: &Device) -> anyhow::Result<TaskBatch> {
        let pixels: Vec<_> = episodes.iter().map(|e| self.render(e)).collect();
        Ok(TaskBatch::from_pixels(&pixels, dtype, device)?)
    }
}

impl Folder {
    /// The classes of each split: from the folder's `train/`, `val/`, `test/` when it has
    /// them, else the kept classes shuffled by `seed` and cut by its fractions. Each split must
    /// hold at least `n_way` classes.
    pub fn splits(&self, seed: u64, n_way: usize) -> anyhow::Result<Splits> {
        let fractions = self.fractions;
        let classes = self.images.classes();
        let given = classes.iter().any(|c| c.split.is_some());
        let plain = |ids: Vec<u32>| ids.into_iter().map(Class::plain).collect::<Vec<_>>();
        let (train, validation, test) = if given {
            let of =
                |s: Split| plain(self.kept.iter().copied().filter(|&i| classes[i as usize].split == Some(s)).collect());
            (of(Split::Train), of(Split::Val), of(Split::Test))
        } else {
            let mut ids = self.kept.clone();
            ids.shuffle(&mut crate::seeds::stream_rng(seed, crate::seeds::streams::FOLDER_SPLIT, 0));
            let n = ids.len();
            let n_train = (fractions.train * n as f64).round() as usize;
            let n_val = ((fractions.val * n as f64).round() as usize).min(n - n_train.min(n));
            let test = ids.split_off((n_train + n_val).min(n));
            let val = ids.split_off(n_train.min(ids.len()));
            (plain(ids), plain(val), plain(test))
        };
        let root = self.images.root().display();
        for (name, pool) in [("train", &train), ("val", &validation), ("test", &test)] {
            // A folder with split folders but no test/ (a dataset whose test classes are held
            // back) trains and validates; its test episodes are refused where they are drawn.
            if given && name == "test" && pool.is_empty() {
                continue;
            }
            if pool.len() < n_way {
                let how = if given {
                    format!("{root}/{name}/ holds {} usable classes", pool.len())
                } else {
                    format!(
                        "data.split gives the {name} split {} of the {} usable classes of {root}",
                        pool.len(),
                        self.kept.len()
                    )
                };
                bail!(
                    "{how}, fewer than the {n_way} an episode needs (episodes.n_way or train_n_way): add classes, \
                     or change the split or n_way"
                );
            }
        }
        Ok(Splits { train, validation, test })
    }
}

/// The classes of `images` with at least `need` images; those with fewer are refused, named,
/// unless `skip` (then they are left out and counted on stderr).
pub fn usable_classes(images: &ImageFolder, need: usize, skip: bool) -> anyhow::Result<Vec<u32>> {
    let classes = images.classes();
    let small: Vec<usize> = (0..classes.len()).filter(|&i| classes[i].images < need).collect();
    if !small.is_empty() && !skip {
        let named: Vec<String> =
            small.iter().take(5).map(|&i| format!("{} ({} images)", classes[i].name, classes[i].images)).collect();
        let more = if small.len() > 5 { format!(" and {} more", small.len() - 5) } else { String::new() };
        bail!(
            "{} class(es) of {} have fewer images than an episode takes from a class (k_shot + n_query = {need}): \
             {}{more}; add images, lower k_shot or n_query, or set data.skip_small_classes = true to leave them out",
            small.len(),
            images.root().display(),
            named.join(", ")
        );
    }
    if !small.is_empty() {
        eprintln!(
            "left out {} class(es) of {} with fewer than {need} images (data.skip_small_classes)",
            small.len(),
            images.root().display()
        );
    }
    Ok((0..classes.len() as u32).filter(|&i| classes[i as usize].images >= need).collect())
}

/// A sampler of `spec`'s episodes over `pool`, whose classes have `sizes` images (`None`:
/// Omniglot's 20 drawings).
pub fn sampler(pool: &[Class], sizes: Option<Vec<u32>>, spec: EpisodeSpec) -> anyhow::Result<Sampler> {
    let sampler = Sampler::new(pool.to_vec(), spec)?;
    Ok(match sizes {
        None => sampler,
        Some(sizes) => sampler.with_sizes(sizes)?,
    })
}
