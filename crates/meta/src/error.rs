//! The crate's one error type.

/// What can go wrong in meta-learning.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// The model rejected its inputs or parameters.
    #[error(transparent)]
    Model(#[from] fewshot_model::Error),
    /// The worker threads (plain or latched into a candle gradient mode) could not start or
    /// stopped.
    #[error("worker threads: {0}")]
    Workers(String),
    /// A group of processes ([`crate::distributed`]) failed to exchange numbers.
    #[error("rank {rank}: {message}")]
    Group {
        /// The rank that saw the failure.
        rank: usize,
        /// What failed.
        message: String,
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
    /// Episodes of one batch differ in shape.
    #[error("episode {episode} of the batch has {got}, the first has {want}; a batch needs episodes of one shape")]
    RaggedBatch {
        /// Index of the odd episode.
        episode: usize,
        /// Its shape, in words.
        got: String,
        /// The first episode's shape.
        want: String,
    },
    /// The loss is not a finite number.
    #[error("meta-training diverged: the query loss is {0}; lower meta_lr or inner_lr")]
    NonFinite(f32),
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
