//! Getting the two archives into the data directory: from the canonical URL, another base URL,
//! or a local directory, always verified before they are kept.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::checksum::{Checksum, parse_sha256sums};
use crate::error::{Error, IoContext, Result};
use crate::subset::Subset;

/// Where the canonical archives live.
pub const CANONICAL_BASE_URL: &str = "https://github.com/brendenlake/omniglot/raw/master/python";

/// Name of the optional checksum file in a source.
pub const SHA256SUMS: &str = "SHA256SUMS";

/// Where to get the archives from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A base URL holding `images_background.zip` and `images_evaluation.zip`
    /// (and optionally `SHA256SUMS`).
    Url(String),
    /// A local directory holding the same files.
    Dir(PathBuf),
}

impl Default for Source {
    fn default() -> Self {
        Source::Url(CANONICAL_BASE_URL.to_owned())
    }
}

impl Source {
    /// `http://...` or `https://...` is a URL, anything else a directory.
    pub fn parse(s: &str) -> Source {
        if s.starts_with("http://") || s.starts_with("https://") {
            Source::Url(s.trim_end_matches('/').to_owned())
        } else {
            Source::Dir(PathBuf::from(s))
        }
    }

    fn location(&self, file: &str) -> String {
        match self {
            Source::Url(base) => format!("{base}/{file}"),
            Source::Dir(dir) => dir.join(file).display().to_string(),
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Url(u) => f.write_str(u),
            Source::Dir(d) => write!(f, "{}", d.display()),
        }
    }
}

/// What [`fetch`] did for one archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// A verified archive was already in place; nothing was transferred.
    AlreadyPresent(PathBuf),
    /// The archive was copied or downloaded, verified and moved into place.
    Transferred(PathBuf),
}

/// Progress of one transfer, for a progress bar.
#[derive(Debug, Clone, Copy)]
pub enum Progress<'a> {
    /// A transfer of `file` starts; `total` bytes if known.
    Start {
        /// The archive's file name.
        file: &'a str,
        /// Announced size.
        total: Option<u64>,
    },
    /// `done` bytes so far.
    Advance {
        /// Bytes transferred so far.
        done: u64,
    },
    /// The transfer finished.
    Finish,
}

/// Make sure the archives of `subsets` are in `data_dir`, verified.
///
/// The checksum each archive must have: the source's `SHA256SUMS` when it has one, else the
/// canonical MD5. An archive already in `data_dir` that verifies is kept as is. Transfers go to
/// `<name>.part` and are renamed only after verification, so a failed or interrupted run
/// never leaves a bad archive under the real name.
pub fn fetch(
    source: &Source,
    data_dir: &Path,
    subsets: &[Subset],
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<Vec<Fetched>> {
    if data_dir.exists() && !data_dir.is_dir() {
        return Err(Error::InvalidArgument {
            name: "data directory",
            value: data_dir.display().to_string(),
            expected: "a folder, and this is a file: point OMNIGLOT_DATA_DIR (or [data] dir) elsewhere".into(),
        });
    }
    let created = !data_dir.exists();
    std::fs::create_dir_all(data_dir).io_ctx("creating directory", data_dir)?;
    let result = fetch_into(source, data_dir, subsets, progress);
    if result.is_err() && created {
        // Leave nothing behind: the folder this call made goes if it is still empty.
        let _ = std::fs::remove_dir(data_dir);
    }
    result
}

fn fetch_into(
    source: &Source,
    data_dir: &Path,
    subsets: &[Subset],
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<Vec<Fetched>> {
    let sums = read_sums(source)?;
    let mut out = Vec::new();
    for &subset in subsets {
        let name = subset.archive_name();
        let expected = match sums.iter().find(|(_, n)| n == name) {
            Some((digest, _)) => Checksum::Sha256(digest.clone()),
            None if sums.is_empty() => Checksum::Md5(subset.canonical_md5().to_owned()),
            None => {
                return Err(Error::BadLayout {
                    archive: PathBuf::from(source.location(SHA256SUMS)),
                    problem: format!("has no line for {name}"),
                });
            }
        };
        let dest = data_dir.join(name);
        if dest.exists() && expected.verify_file(&dest).is_ok() {
            out.push(Fetched::AlreadyPresent(dest));
            continue;
        }
        let part = data_dir.join(format!("{name}.part"));
        let result = transfer(source, name, &part, progress).and_then(|()| {
            expected.verify_file(&part).map_err(|e| match e {
                Error::ChecksumMismatch { algorithm, expected, actual, .. } => {
                    Error::ChecksumMismatch { file: source.location(name), algorithm, expected, actual }
                }
                other => other,
            })
        });
        if let Err(e) = result {
            let _ = std::fs::remove_file(&part);
            return Err(e);
        }
        std::fs::rename(&part, &dest).io_ctx("renaming into", &dest)?;
        out.push(Fetched::Transferred(dest));
    }
    Ok(out)
}

/// The source's `SHA256SUMS`, or nothing when it has none.
fn read_sums(source: &Source) -> Result<Vec<(String, String)>> {
    let origin = source.location(SHA256SUMS);
    let text = match source {
        Source::Dir(dir) => {
            if !dir.is_dir() {
                return Err(Error::InvalidArgument {
                    name: "source",
                    value: dir.display().to_string(),
                    expected: "an existing folder holding images_background.zip and images_evaluation.zip \
                               (OMNIGLOT_SOURCE, [data] source or --source)"
                        .into(),
                });
            }
            let path = dir.join(SHA256SUMS);
            match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => {
                    return Err(Error::Io { action: "reading", path, source: e });
                }
            }
        }
        Source::Url(_) => match http::get_small(&origin)? {
            Some(t) => t,
            None => return Ok(Vec::new()),
        },
    };
    parse_sha256sums(&text, &origin)
}

fn transfer(source: &Source, name: &str, part: &Path, progress: &mut dyn FnMut(Progress<'_>)) -> Result<()> {
    let mut out = std::fs::File::create(part).io_ctx("creating", part)?;
    match source {
        Source::Dir(dir) => {
            let path = dir.join(name);
            let mut file = std::fs::File::open(&path).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Error::ArchiveMissing { path: path.clone() },
                _ => Error::Io { action: "opening", path: path.clone(), source: e },
            })?;
            let total = file.metadata().ok().map(|m| m.len());
            progress(Progress::Start { file: name, total });
            copy_with_progress(&mut file, &mut out, part, &path.display().to_string(), progress)?;
        }
        Source::Url(_) => {
            let url = source.location(name);
            let (mut body, total) = http::get_stream(&url)?;
            progress(Progress::Start { file: name, total });
            let got = copy_with_progress(&mut body, &mut out, part, &url, progress)?;
            if let Some(expected) = total
                && got != expected
            {
                return Err(Error::Truncated { url, got, expected });
            }
        }
    }
    out.sync_all().io_ctx("syncing", part)?;
    progress(Progress::Finish);
    Ok(())
}

fn copy_with_progress(
    reader: &mut dyn Read,
    out: &mut std::fs::File,
    part: &Path,
    origin: &str,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<u64> {
    use std::io::Write;
    let mut buf = vec![0u8; 1 << 16];
    let mut done = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(Error::Io { action: "reading", path: PathBuf::from(origin), source: e });
            }
        };
        out.write_all(&buf[..n]).io_ctx("writing", part)?;
        done += n as u64;
        progress(Progress::Advance { done });
    }
    Ok(done)
}

#[cfg(feature = "download")]
mod http {
    use std::io::Read;
    use std::time::Duration;

    use crate::error::{Error, Result};

    fn agent() -> ureq::Agent {
        ureq::Agent::config_builder()
            .timeout_connect(Some(Duration::from_secs(20)))
            .timeout_recv_body(Some(Duration::from_secs(120)))
            .build()
            .into()
    }

    fn call(url: &str) -> Result<Option<ureq::http::Response<ureq::Body>>> {
        match agent().get(url).call() {
            Ok(resp) => Ok(Some(resp)),
            Err(ureq::Error::StatusCode(404)) => Ok(None),
            Err(ureq::Error::StatusCode(status)) => Err(Error::HttpStatus { url: url.to_owned(), status }),
            Err(e) => Err(Error::Unreachable { url: url.to_owned(), reason: e.to_string() }),
        }
    }

    /// GET a small text file; `None` on 404.
    pub(super) fn get_small(url: &str) -> Result<Option<String>> {
        let Some(resp) = call(url)? else {
            return Ok(None);
        };
        let text = resp
            .into_body()
            .read_to_string()
            .map_err(|e| Error::Unreachable { url: url.to_owned(), reason: e.to_string() })?;
        Ok(Some(text))
    }

    /// GET a large file as a stream, with its announced length.
    pub(super) fn get_stream(url: &str) -> Result<(Box<dyn Read + Send>, Option<u64>)> {
        let Some(resp) = call(url)? else {
            return Err(Error::HttpStatus { url: url.to_owned(), status: 404 });
        };
        let total =
            resp.headers().get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        let reader = resp.into_body().into_with_config().limit(u64::MAX).reader();
        Ok((Box::new(reader), total))
    }
}

#[cfg(not(feature = "download"))]
mod http {
    use std::io::Read;

    use crate::error::{Error, Result};

    fn disabled(url: &str) -> Error {
        Error::Unreachable {
            url: url.to_owned(),
            reason: "this build of omniglot-data has no `download` feature".to_owned(),
        }
    }

    pub(super) fn get_small(url: &str) -> Result<Option<String>> {
        Err(disabled(url))
    }

    pub(super) fn get_stream(url: &str) -> Result<(Box<dyn Read + Send>, Option<u64>)> {
        Err(disabled(url))
    }
}
