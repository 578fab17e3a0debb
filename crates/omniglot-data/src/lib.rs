//! Omniglot on disk: download, verify, decode and cache the two archives, then load a set as
//! u8 pixels in well under a second.
//!
//! Main types: [`Dataset`] (one subset at one image size), [`Subset`] (background or
//! evaluation), [`Source`] and [`fetch`] (getting the archives), [`Character`].
//!
//! ```no_run
//! use omniglot_data::{Dataset, LoadOptions, Source, Subset, fetch};
//!
//! # fn main() -> Result<(), omniglot_data::Error> {
//! let data_dir = std::path::Path::new("data/omniglot");
//! fetch(&Source::parse("../shared/omniglot"), data_dir, &Subset::ALL, &mut |_| {})?;
//! let train = Dataset::load(data_dir, Subset::Background, &LoadOptions::default())?;
//! assert_eq!(train.characters().len(), 964);
//! let first: &[u8] = train.image(0, 0); // 28 x 28 gray levels, 255 = paper
//! assert_eq!(first.len(), 28 * 28);
//! # Ok(()) }
//! ```
//!
//! Boundaries: no candle, no tensors beyond a flat `[characters, 20, size, size]` u8 buffer;
//! nothing about episodes or models. Network access is confined to [`fetch`] behind the
//! `download` feature (on by default); without it, only local directories work as a source.
#![deny(missing_docs)]

mod cache;
mod checksum;
mod decode;
mod error;
mod fetch;
mod subset;
pub mod synthetic;

use std::path::{Path, PathBuf};

pub use cache::{CACHE_FORMAT_VERSION, Manifest, RESIZE_FILTER, build_cache, cache_paths, read_cache, write_atomic};
pub use checksum::{Checksum, md5_file, parse_sha256sums, sha256_bytes, sha256_file};
pub use decode::{Character, Decoded, decode_archive, resize_gray};
pub use error::{Error, Result};
pub use fetch::{CANONICAL_BASE_URL, Fetched, Progress, SHA256SUMS, Source, fetch};
pub use subset::{Counts, DRAWINGS_PER_CHARACTER, ORIGINAL_SIZE, Subset};

/// Default side of the cached images (the course recipe's 28 x 28).
pub const DEFAULT_IMAGE_SIZE: u32 = 28;

/// How [`Dataset::load`] decodes and checks.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Side of the square images, 1 to 105.
    pub image_size: u32,
    /// Counts the archive must have. `Some(subset.expected_counts())` for the real dataset
    /// (the default); `None` accepts any complete structure (20 drawings per character).
    pub expected: Expected,
    /// Where caches go; default `<data_dir>/cache`.
    pub cache_dir: Option<PathBuf>,
}

/// Which counts an archive must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// The real Omniglot counts ([`Subset::expected_counts`]).
    Omniglot,
    /// These counts.
    Exactly(Counts),
    /// Any number of alphabets and characters.
    Any,
}

impl Expected {
    /// The counts `subset` must have, if any.
    pub fn counts(self, subset: Subset) -> Option<Counts> {
        match self {
            Expected::Omniglot => Some(subset.expected_counts()),
            Expected::Exactly(c) => Some(c),
            Expected::Any => None,
        }
    }
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { image_size: DEFAULT_IMAGE_SIZE, expected: Expected::Omniglot, cache_dir: None }
    }
}

/// Where [`Dataset::load`] got its pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A current cache was read.
    Cache,
    /// The archive was decoded and a cache written.
    Built,
}

/// One Omniglot subset at one image size, in memory.
#[derive(Debug, Clone)]
pub struct Dataset {
    manifest: Manifest,
    pixels: Vec<u8>,
    origin: Origin,
}

impl Dataset {
    /// Load `subset` from `data_dir` (which holds the archives): read the cache when it is
    /// current, otherwise decode the archive and write a fresh cache. A cache that is stale,
    /// foreign or damaged is rebuilt, never trusted.
    pub fn load(data_dir: &Path, subset: Subset, options: &LoadOptions) -> Result<Dataset> {
        let cache_dir = options.cache_dir.clone().unwrap_or_else(|| data_dir.join("cache"));
        let archive = data_dir.join(subset.archive_name());
        let size = options.image_size;
        let source_sha = if archive.exists() { Some(sha256_file(&archive)?) } else { None };
        match read_cache(&cache_dir, subset, size, source_sha.as_deref()) {
            Ok((manifest, pixels)) => {
                if options.expected.counts(subset).is_none_or(|c| c == manifest.counts) {
                    return Ok(Dataset { manifest, pixels, origin: Origin::Cache });
                }
                tracing::info!("cache for {subset} has other counts than expected; rebuilding");
            }
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("{e}; rebuilding"),
        }
        if source_sha.is_none() {
            return Err(Error::ArchiveMissing { path: archive });
        }
        let expected = options.expected.counts(subset);
        let (manifest, pixels) = build_cache(&archive, &cache_dir, subset, size, expected)?;
        Ok(Dataset { manifest, pixels, origin: Origin::Built })
    }

    /// Which subset this is.
    pub fn subset(&self) -> Subset {
        self.manifest.subset
    }

    /// Side of the square images.
    pub fn image_size(&self) -> u32 {
        self.manifest.image_size
    }

    /// Alphabet, character and image counts.
    pub fn counts(&self) -> Counts {
        self.manifest.counts
    }

    /// The characters, in the order of the pixel buffer.
    pub fn characters(&self) -> &[Character] {
        &self.manifest.characters
    }

    /// The manifest stored with the cache.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Whether the pixels came from a cache or a fresh decode.
    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// All pixels, shape `[characters, 20, size, size]`, u8 gray, 255 = white paper, 0 = ink.
    pub fn pixels(&self) -> &[u8] {
        &self.pixels
    }

    /// One image: `size * size` gray levels, row-major.
    ///
    /// # Panics
    /// If `character` or `drawing` is out of range.
    pub fn image(&self, character: usize, drawing: usize) -> &[u8] {
        assert!(character < self.characters().len(), "character {character} out of range");
        assert!(drawing < DRAWINGS_PER_CHARACTER, "drawing {drawing} out of range (0..20)");
        let len = (self.image_size() * self.image_size()) as usize;
        let start = (character * DRAWINGS_PER_CHARACTER + drawing) * len;
        &self.pixels[start..start + len]
    }
}
