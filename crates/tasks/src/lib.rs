//! Few-shot episodes: class pools for the standard Omniglot protocols, N-way K-shot sampling,
//! fixed evaluation sets, and task augmentation by rotation.
//!
//! Main types: [`Protocol`] and [`Splits`] (class pools), [`Sampler`] and [`EpisodeSpec`]
//! (drawing episodes), [`Episode`] (a description: class ids, drawing ids, rotations, labels;
//! no pixels), [`EpisodeSet`] (a fixed list of episodes as a small file), [`Rotation`] and
//! [`TaskRotation`] (augmentation).
//!
//! ```
//! use fewshot_tasks::{DrawingSplit, EpisodeSpec, Protocol, Sampler};
//! use rand::SeedableRng;
//!
//! let splits = Protocol::Course.splits(0);
//! let spec = EpisodeSpec { n_way: 5, k_shot: 1, n_query: 1, drawing_split: DrawingSplit::Any };
//! let sampler = Sampler::new(splits.train, spec)?;
//! let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(42);
//! let episode = sampler.sample(&mut rng);
//! assert_eq!((episode.support.len(), episode.query.len()), (5, 5));
//! // Pixels come from the caller: here a blank 28x28 page for every drawing.
//! let page = [255u8; 28 * 28];
//! let pixels = episode.render(28, |_character, _drawing| &page[..]);
//! assert_eq!(pixels.support.len(), 5 * 28 * 28);
//! # Ok::<(), fewshot_tasks::Error>(())
//! ```
//!
//! Boundaries: no candle, no IO (episode sets are (de)serialised to and from strings; the
//! caller reads and writes files), no knowledge of models.
#![deny(missing_docs)]

mod augment;
mod episode;
mod error;
mod evalset;
mod photo;
mod split;

pub use augment::{Rotation, TaskRotation, rotate_bilinear, rotate_quarter};
pub use episode::{
    DRAWINGS, DrawingSplit, Episode, EpisodePixels, EpisodeSpec, Example, Intensity, Sampler, TaskAugment,
    ink_intensity,
};
pub use error::{Error, Result};
pub use evalset::{EPISODE_SET_VERSION, EpisodeSet};
pub use photo::{ImageAugment, Normalize, Pipeline};
pub use split::{Class, OMNIGLOT_BACKGROUND, OMNIGLOT_EVALUATION, OMNIGLOT_TOTAL, PAPER_SPLIT_SEED, Protocol, Splits};
