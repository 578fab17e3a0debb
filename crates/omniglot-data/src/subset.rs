//! The two Omniglot archives and what each must contain.

use serde::{Deserialize, Serialize};

/// Drawings per character in Omniglot (20 people drew each character once).
pub const DRAWINGS_PER_CHARACTER: usize = 20;
/// Side of the original square images, in pixels.
pub const ORIGINAL_SIZE: u32 = 105;

/// One of the two official archives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Subset {
    /// 30 alphabets, 964 characters: for meta-training and validation.
    Background,
    /// 20 alphabets, 659 characters never seen in training: for testing.
    Evaluation,
}

/// How many alphabets, characters and images a set holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Number of alphabets.
    pub alphabets: usize,
    /// Number of characters over all alphabets.
    pub characters: usize,
    /// Number of images (characters x 20).
    pub images: usize,
}

impl Subset {
    /// Both subsets, background first.
    pub const ALL: [Subset; 2] = [Subset::Background, Subset::Evaluation];

    /// Lower-case name used in file names and manifests.
    pub fn name(self) -> &'static str {
        match self {
            Subset::Background => "background",
            Subset::Evaluation => "evaluation",
        }
    }

    /// The archive's file name, e.g. `images_background.zip`.
    pub fn archive_name(self) -> &'static str {
        match self {
            Subset::Background => "images_background.zip",
            Subset::Evaluation => "images_evaluation.zip",
        }
    }

    /// The top-level folder inside the archive.
    pub fn top_folder(self) -> &'static str {
        match self {
            Subset::Background => "images_background",
            Subset::Evaluation => "images_evaluation",
        }
    }

    /// MD5 of the canonical archive at [`CANONICAL_BASE_URL`](crate::CANONICAL_BASE_URL).
    pub fn canonical_md5(self) -> &'static str {
        match self {
            Subset::Background => "68d2efa1b9178cc56df9314c21c6e718",
            Subset::Evaluation => "6b91aef0f799c5bb55b94e3f2daec811",
        }
    }

    /// The counts of the real dataset.
    pub fn expected_counts(self) -> Counts {
        match self {
            Subset::Background => Counts { alphabets: 30, characters: 964, images: 19_280 },
            Subset::Evaluation => Counts { alphabets: 20, characters: 659, images: 13_180 },
        }
    }
}

impl std::fmt::Display for Subset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Subset {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        match s {
            "background" => Ok(Subset::Background),
            "evaluation" => Ok(Subset::Evaluation),
            other => Err(crate::Error::InvalidArgument {
                name: "subset",
                value: other.to_owned(),
                expected: "`background` or `evaluation`".to_owned(),
            }),
        }
    }
}
