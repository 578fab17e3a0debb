//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong while fetching, verifying, decoding or caching Omniglot.
///
/// Every variant names the file, URL or value at fault and, where there is one, the fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing a file failed.
    // The OS error is the `source`: error chains (`{:#}`, anyhow) print it once, after this.
    #[error("{action} {path}")]
    Io {
        /// What was being done ("reading", "writing", "creating directory", ...).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An archive is not where it should be.
    #[error("archive {path} not found: run `cargo xtask download` (or pass --source DIR_OR_URL) first")]
    ArchiveMissing {
        /// Where the archive was expected.
        path: PathBuf,
    },
    /// A file's checksum differs from the one it must have.
    #[error(
        "checksum mismatch for {file}: expected {algorithm} {expected}, got {actual}; \
         the file is corrupt or not the Omniglot archive (delete it and download again)"
    )]
    ChecksumMismatch {
        /// The file (or URL) whose bytes were checked.
        file: String,
        /// "sha256" or "md5".
        algorithm: &'static str,
        /// The checksum it must have.
        expected: String,
        /// The checksum it has.
        actual: String,
    },
    /// A `SHA256SUMS` file could not be understood.
    #[error("{file}: line {line} is not `<64 hex digits>  <file name>`")]
    BadChecksumFile {
        /// The checksum file.
        file: String,
        /// 1-based line number.
        line: usize,
    },
    /// The zip container itself is damaged.
    #[error("{path} is not a readable zip archive ({source}); delete it and download again")]
    Zip {
        /// The archive.
        path: PathBuf,
        /// The zip reader's complaint.
        source: zip::result::ZipError,
    },
    /// One image in an archive is unusable.
    #[error("{archive}: {entry}: {problem}")]
    BadImage {
        /// The archive holding the image.
        archive: PathBuf,
        /// The entry name inside the archive.
        entry: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The archive's structure differs from Omniglot's (missing drawings, wrong counts, stray files).
    #[error("{archive}: {problem}")]
    BadLayout {
        /// The archive.
        archive: PathBuf,
        /// What is missing or wrong.
        problem: String,
    },
    /// A cache file exists but cannot be used; it will be rebuilt by [`crate::Dataset::load`].
    #[error("cache {path} is unusable: {problem}")]
    BadCache {
        /// The cache file.
        path: PathBuf,
        /// Why it cannot be trusted.
        problem: String,
    },
    /// A value passed by the caller is out of range.
    #[error("invalid {name} = {value}: {expected}")]
    InvalidArgument {
        /// The argument or option name.
        name: &'static str,
        /// The value given.
        value: String,
        /// What is allowed.
        expected: String,
    },
    /// A URL could not be reached (offline, DNS, refused connection).
    #[error(
        "could not reach {url}: {reason}; without internet access, point OMNIGLOT_SOURCE (or \
         `cargo xtask download --source DIR`) at a local folder holding images_background.zip and \
         images_evaluation.zip"
    )]
    Unreachable {
        /// The URL.
        url: String,
        /// What the HTTP client reported.
        reason: String,
    },
    /// The server answered with an error status.
    #[error("GET {url} answered HTTP {status}; check the --source base URL")]
    HttpStatus {
        /// The URL.
        url: String,
        /// The HTTP status code.
        status: u16,
    },
    /// The body ended before the announced length.
    #[error("download of {url} was truncated: got {got} of {expected} bytes; run the download again")]
    Truncated {
        /// The URL.
        url: String,
        /// Bytes received.
        got: u64,
        /// Bytes announced by Content-Length.
        expected: u64,
    },
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attach a path and an action to an IO error.
pub(crate) trait IoContext<T> {
    fn io_ctx(self, action: &'static str, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn io_ctx(self, action: &'static str, path: &std::path::Path) -> Result<T> {
        self.map_err(|source| Error::Io { action, path: path.to_owned(), source })
    }
}
