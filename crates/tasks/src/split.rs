//! Class pools for the two standard Omniglot protocols.
//!
//! Characters are named by a *global index*: the background set's characters `0..964` in its
//! cache order (alphabet, then character number), then the evaluation set's `964..1623`.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::augment::Rotation;

/// Characters in Omniglot's background set.
pub const OMNIGLOT_BACKGROUND: u32 = 964;
/// Characters in Omniglot's evaluation set.
pub const OMNIGLOT_EVALUATION: u32 = 659;
/// Characters in all of Omniglot.
pub const OMNIGLOT_TOTAL: u32 = OMNIGLOT_BACKGROUND + OMNIGLOT_EVALUATION;

/// A class of a few-shot task: a character, possibly rotated (the paper protocol counts each
/// rotation as its own class).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Class {
    /// Global character index (see the module docs).
    pub character: u32,
    /// Rotation of every drawing of the class.
    pub rotation: Rotation,
}

impl Class {
    /// The unrotated class of a character.
    pub fn plain(character: u32) -> Class {
        Class { character, rotation: Rotation::R0 }
    }
}

/// Meta-train, validation and test class pools.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Splits {
    /// Classes to meta-train on.
    pub train: Vec<Class>,
    /// Classes for validation (model selection).
    pub validation: Vec<Class>,
    /// Classes for the final test.
    pub test: Vec<Class>,
}

/// Which protocol defines the pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// The 2022 course recipe: background characters shuffled into 80% meta-train and 20%
    /// validation; test on the evaluation set.
    Course,
    /// Finn et al. (MAML): all 1,623 characters shuffled into 1,100 / 100 / 423, each at 0,
    /// 90, 180 and 270 degrees as its own class.
    Paper,
}

/// Seed of the paper protocol's fixed split.
pub const PAPER_SPLIT_SEED: u64 = 1623;

impl Protocol {
    /// The class pools. `seed` shuffles the course protocol's background characters; the
    /// paper protocol's split is fixed (seed [`PAPER_SPLIT_SEED`]) so results compare across runs.
    pub fn splits(self, seed: u64) -> Splits {
        match self {
            Protocol::Course => course_splits(OMNIGLOT_BACKGROUND, OMNIGLOT_EVALUATION, seed),
            Protocol::Paper => paper_splits(),
        }
    }

    /// The pools for a dataset of another size (e.g. a small synthetic one), background
    /// characters numbered `0..n_background` and evaluation ones after them. The course
    /// protocol scales; the paper protocol's fixed 1,100 / 100 / 423 split needs the full
    /// 1,623 characters and returns `None` otherwise.
    pub fn splits_for(self, n_background: u32, n_evaluation: u32, seed: u64) -> Option<Splits> {
        match self {
            Protocol::Course => Some(course_splits(n_background, n_evaluation, seed)),
            Protocol::Paper if (n_background, n_evaluation) == (OMNIGLOT_BACKGROUND, OMNIGLOT_EVALUATION) => {
                Some(paper_splits())
            }
            Protocol::Paper => None,
        }
    }
}

fn course_splits(n_background: u32, n_evaluation: u32, seed: u64) -> Splits {
    let mut background: Vec<u32> = (0..n_background).collect();
    background.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let n_train = (n_background as usize * 4).div_ceil(5); // 80%, rounded up: 772 of 964
    let to_classes = |ids: &[u32]| ids.iter().copied().map(Class::plain).collect();
    Splits {
        train: to_classes(&background[..n_train]),
        validation: to_classes(&background[n_train..]),
        test: (n_background..n_background + n_evaluation).map(Class::plain).collect(),
    }
}

fn paper_splits() -> Splits {
    let mut all: Vec<u32> = (0..OMNIGLOT_TOTAL).collect();
    all.shuffle(&mut ChaCha8Rng::seed_from_u64(PAPER_SPLIT_SEED));
    let rotated = |chars: &[u32]| -> Vec<Class> {
        chars.iter().flat_map(|&character| Rotation::ALL.map(|rotation| Class { character, rotation })).collect()
    };
    Splits { train: rotated(&all[..1100]), validation: rotated(&all[1100..1200]), test: rotated(&all[1200..]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chars(classes: &[Class]) -> Vec<u32> {
        classes.iter().map(|c| c.character).collect()
    }

    #[test]
    fn course_split_is_pinned() {
        let s = Protocol::Course.splits(0);
        assert_eq!((s.train.len(), s.validation.len(), s.test.len()), (772, 192, 659));
        // Pinned: a change here changes every published figure of this project.
        assert_eq!(chars(&s.train[..5]), [535, 266, 949, 647, 919]);
        assert_eq!(chars(&s.validation[..5]), [895, 341, 446, 704, 77]);
        assert_eq!(s.test[0], Class::plain(964));
        let mut all: Vec<u32> = chars(&s.train).into_iter().chain(chars(&s.validation)).collect();
        all.sort();
        assert_eq!(all, (0..964).collect::<Vec<_>>());
        assert_ne!(Protocol::Course.splits(1).train, s.train, "the seed matters");
    }

    #[test]
    fn paper_split_is_pinned() {
        let s = Protocol::Paper.splits(123);
        assert_eq!(s, Protocol::Paper.splits(0), "fixed regardless of the run seed");
        assert_eq!((s.train.len(), s.validation.len(), s.test.len()), (4400, 400, 1692));
        assert_eq!(chars(&s.train[..8]), [1235, 1235, 1235, 1235, 611, 611, 611, 611]);
        assert_eq!(s.train[1].rotation, Rotation::R90);
        assert_eq!(chars(&s.test[..4]), [991, 991, 991, 991]);
        let mut all: Vec<u32> = [&s.train, &s.validation, &s.test].iter().flat_map(|p| chars(p)).step_by(4).collect();
        all.sort();
        assert_eq!(all, (0..1623).collect::<Vec<_>>());
    }
}
