//! Folders of labelled images as few-shot classes: PNG and JPEG, any size, gray or colour,
//! one folder per class (possibly grouped in folders), optional `train/`, `val/`, `test/`
//! split folders. [`ImageFolder::load`] scans the folder ([`scan()`]), decodes every image,
//! resizes it to a square side with a triangle (bilinear) filter widened to the scale factor
//! (the Omniglot cache's filter: gray Omniglot drawings read from a folder give its very
//! pixels), and caches the result: one u8 safetensors file and a JSON manifest, keyed by every
//! file's path, length and modification time, so a changed folder (files added, removed or
//! modified) is decoded again.
//!
//! ```no_run
//! use fewshot_images::{Channels, FolderOptions, ImageFolder};
//! let options = FolderOptions { image_size: 84, channels: Channels::Rgb, cache_dir: "data/folders".into() };
//! let folder = ImageFolder::load("my_images".as_ref(), &options, &|_| {})?;
//! println!("{} classes; the first, {}, has {} images", folder.classes().len(),
//!     folder.classes()[0].name, folder.classes()[0].images);
//! let pixels: &[u8] = folder.image(0, 0); // 3 x 84 x 84, channels first
//! # Ok::<(), fewshot_images::Error>(())
//! ```
//!
//! Boundaries: no episodes, no tensors; it hands out u8 pixels by class and index.
#![deny(missing_docs)]

mod cache;
mod error;
pub mod scan;

use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

pub use error::{Error, Result};
pub use scan::{IMAGE_EXTENSIONS, ImageFile, Scan, ScannedClass, Split, is_image, scan};

/// Gray (one channel) or colour (three, RGB).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channels {
    /// One channel: colour images are converted to luminance.
    Gray,
    /// Three channels, RGB: gray images are repeated in each.
    Rgb,
}

impl Channels {
    /// The number of channels.
    pub fn count(self) -> usize {
        match self {
            Channels::Gray => 1,
            Channels::Rgb => 3,
        }
    }

    /// From a number of channels, 1 or 3.
    pub fn from_count(n: usize) -> Result<Channels> {
        match n {
            1 => Ok(Channels::Gray),
            3 => Ok(Channels::Rgb),
            _ => Err(Error::InvalidSetting {
                name: "channels",
                value: n.to_string(),
                expected: "1 (gray) or 3 (RGB)".into(),
            }),
        }
    }
}

/// How to read a folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderOptions {
    /// Side of the square images, in pixels.
    pub image_size: u32,
    /// Gray or colour.
    pub channels: Channels,
    /// Where the decoded images are cached (created if missing).
    pub cache_dir: PathBuf,
}

/// A class of a loaded folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FolderClass {
    /// Its folder's path below the root (or its split's folder), `/`-separated.
    pub name: String,
    /// Its split, when the folder has `train/`, `val/`, `test/`.
    pub split: Option<Split>,
    /// Number of images.
    pub images: usize,
}

/// A folder of classes in memory: every image decoded and resized, channels first.
#[derive(Debug)]
pub struct ImageFolder {
    root: PathBuf,
    classes: Vec<FolderClass>,
    /// Index of each class's first image.
    starts: Vec<usize>,
    pixels: cache::Pixels,
    image_size: u32,
    channels: Channels,
    cache_file: PathBuf,
    from_cache: bool,
    skipped: Vec<PathBuf>,
}

impl ImageFolder {
    /// Scan `root`, then read its images from the cache when it is current, else decode them
    /// (in parallel, calling `progress` with the number of images done after each) and write
    /// the cache. Errors name the folder or file at fault (see [`scan()`], [`Error`]).
    pub fn load(root: &Path, options: &FolderOptions, progress: &(dyn Fn(usize) + Sync)) -> Result<ImageFolder> {
        if !(1..=4096).contains(&options.image_size) {
            return Err(Error::InvalidSetting {
                name: "image_size",
                value: options.image_size.to_string(),
                expected: "1 to 4096 pixels".into(),
            });
        }
        let Scan { classes: scanned, skipped } = scan(root)?;
        let key = cache::key(&scanned, options);
        let stem = cache::stem(root, options);
        let cache_file = cache::path(&options.cache_dir, &stem, &key);
        let classes: Vec<FolderClass> = scanned
            .iter()
            .map(|c| FolderClass { name: c.name.clone(), split: c.split, images: c.files.len() })
            .collect();
        let starts = classes
            .iter()
            .scan(0, |at, c| {
                let start = *at;
                *at += c.images;
                Some(start)
            })
            .collect();
        let total: usize = classes.iter().map(|c| c.images).sum();
        let image_len = options.channels.count() * (options.image_size as usize).pow(2);
        let mut folder = ImageFolder {
            root: root.to_owned(),
            classes,
            starts,
            pixels: cache::Pixels::Owned(Vec::new()),
            image_size: options.image_size,
            channels: options.channels,
            cache_file,
            from_cache: false,
            skipped,
        };
        if let Some(pixels) = cache::read(&folder.cache_file, &key, total * image_len) {
            folder.pixels = pixels;
            folder.from_cache = true;
            return Ok(folder);
        }
        let files: Vec<&Path> = scanned.iter().flat_map(|c| c.files.iter().map(|f| f.path.as_path())).collect();
        let mut pixels = vec![0u8; total * image_len];
        let done = std::sync::atomic::AtomicUsize::new(0);
        pixels.par_chunks_mut(image_len.max(1)).zip(files.par_iter()).try_for_each(|(out, path)| -> Result<()> {
            out.copy_from_slice(&decode(path, options.image_size, options.channels)?);
            progress(done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1);
            Ok(())
        })?;
        cache::write(&options.cache_dir, &stem, &folder.cache_file, &key, &folder.classes, &pixels)?;
        // Read back through the map from now on: the decoded copy's memory is returned.
        folder.pixels = match cache::read(&folder.cache_file, &key, total * image_len) {
            Some(mapped) => mapped,
            None => cache::Pixels::Owned(pixels),
        };
        Ok(folder)
    }

    /// The files of the folder left out because they are not images (see [`scan()`]).
    pub fn skipped(&self) -> &[PathBuf] {
        &self.skipped
    }

    /// The folder it was read from.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The classes, sorted by split, then name.
    pub fn classes(&self) -> &[FolderClass] {
        &self.classes
    }

    /// Side of the square images.
    pub fn image_size(&self) -> u32 {
        self.image_size
    }

    /// Gray or colour.
    pub fn channels(&self) -> Channels {
        self.channels
    }

    /// The cache file its pixels live in.
    pub fn cache_file(&self) -> &Path {
        &self.cache_file
    }

    /// Whether the pixels came from a current cache (rather than being decoded now).
    pub fn from_cache(&self) -> bool {
        self.from_cache
    }

    /// Image `index` of class `class`: `channels x size x size` u8 values, channels first.
    ///
    /// # Panics
    /// If the class or index is out of range.
    pub fn image(&self, class: usize, index: usize) -> &[u8] {
        assert!(index < self.classes[class].images, "class {class} has {} images", self.classes[class].images);
        let len = self.channels.count() * (self.image_size as usize).pow(2);
        let at = (self.starts[class] + index) * len;
        &self.pixels.bytes()[at..at + len]
    }
}

/// Decode one file and resize it to `size` x `size` (stretched: the aspect ratio is not kept),
/// `channels` first.
pub fn decode(path: &Path, size: u32, channels: Channels) -> Result<Vec<u8>> {
    let bad = |problem: String| Error::BadImage { path: path.to_owned(), problem };
    let img = image::ImageReader::open(path)
        .map_err(|e| Error::io("opening", path, e))?
        .with_guessed_format()
        .map_err(|e| Error::io("reading", path, e))?
        .decode()
        .map_err(|e| bad(e.to_string()))?;
    Ok(match channels {
        Channels::Gray => omniglot_data::resize_gray(&img.into_luma8(), size),
        Channels::Rgb => {
            let rgb = img.into_rgb8();
            let rgb = if rgb.dimensions() == (size, size) {
                rgb
            } else {
                image::imageops::resize(&rgb, size, size, FilterType::Triangle)
            };
            let plane = (size * size) as usize;
            let mut out = vec![0u8; 3 * plane];
            for (i, p) in rgb.pixels().enumerate() {
                for c in 0..3 {
                    out[c * plane + i] = p.0[c];
                }
            }
            out
        }
    })
}

#[cfg(test)]
mod tests;
