//! The crate's one error type.

/// What can go wrong building or running the net.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A tensor operation failed (shape mismatch, unsupported dtype, ...).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A configuration value is out of range.
    #[error("invalid {name} = {value}: expected {expected}")]
    InvalidConfig {
        /// The setting.
        name: &'static str,
        /// The value given.
        value: usize,
        /// The allowed range.
        expected: String,
    },
    /// A parameter map does not fit the net.
    #[error("{0}")]
    Params(String),
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
