//! The crate's one error type: every message names the folder or file and what to do.

use std::path::{Path, PathBuf};

/// What can go wrong reading a folder of images.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file or folder could not be read or written.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// Where.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The folder is not laid out as one folder of images per class.
    #[error("{}: {problem}", path.display())]
    Layout {
        /// The folder (or entry) at fault.
        path: PathBuf,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// An image file could not be decoded.
    #[error("{}: cannot read this image ({problem}); replace or remove the file", path.display())]
    BadImage {
        /// The file.
        path: PathBuf,
        /// The decoder's complaint.
        problem: String,
    },
    /// A setting is out of range.
    #[error("invalid {name} = {value}: expected {expected}")]
    InvalidSetting {
        /// The setting.
        name: &'static str,
        /// The value given.
        value: String,
        /// The allowed range.
        expected: String,
    },
    /// Writing the cache failed.
    #[error(transparent)]
    Cache(#[from] omniglot_data::Error),
}

impl Error {
    pub(crate) fn io(action: &'static str, path: &Path, source: std::io::Error) -> Error {
        Error::Io { action, path: path.to_owned(), source }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
