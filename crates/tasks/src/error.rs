//! The crate's one error type.

/// What can go wrong when specifying episodes or reading an episode set.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An episode setting is out of range.
    #[error("invalid {name} = {value}: expected {expected}")]
    InvalidSpec {
        /// The setting (`n_way`, `k_shot`, ...).
        name: &'static str,
        /// The value given.
        value: usize,
        /// The allowed range.
        expected: String,
    },
    /// An episode set could not be parsed.
    #[error("{origin}: not an episode set ({reason})")]
    BadEpisodeSet {
        /// Where the text came from (a file name).
        origin: String,
        /// The parser's complaint.
        reason: String,
    },
    /// An episode set is internally inconsistent.
    #[error("{origin}: episode {episode}: {problem}")]
    InconsistentEpisode {
        /// Where the set came from.
        origin: String,
        /// Index of the bad episode.
        episode: usize,
        /// What is wrong.
        problem: String,
    },
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
