//! SHA-256 and MD5 of files, and `SHA256SUMS` files.

use std::io::Read;
use std::path::Path;

use md5::Md5;
use sha2::{Digest, Sha256};

use crate::error::{Error, IoContext, Result};

/// A checksum a file must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checksum {
    /// Lower-case hex SHA-256.
    Sha256(String),
    /// Lower-case hex MD5 (the canonical archives publish these).
    Md5(String),
}

impl Checksum {
    /// "sha256" or "md5".
    pub fn algorithm(&self) -> &'static str {
        match self {
            Checksum::Sha256(_) => "sha256",
            Checksum::Md5(_) => "md5",
        }
    }

    /// The expected hex digest.
    pub fn hex(&self) -> &str {
        match self {
            Checksum::Sha256(h) | Checksum::Md5(h) => h,
        }
    }

    /// Check `path` against this checksum; the error names `path`.
    pub fn verify_file(&self, path: &Path) -> Result<()> {
        let actual = match self {
            Checksum::Sha256(_) => sha256_file(path)?,
            Checksum::Md5(_) => md5_file(path)?,
        };
        if actual == self.hex() {
            Ok(())
        } else {
            Err(Error::ChecksumMismatch {
                file: path.display().to_string(),
                algorithm: self.algorithm(),
                expected: self.hex().to_owned(),
                actual,
            })
        }
    }
}

fn digest_file<D: Digest>(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).io_ctx("opening", path)?;
    let mut hasher = D::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).io_ctx("reading", path)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// Lower-case hex SHA-256 of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    digest_file::<Sha256>(path)
}

/// Lower-case hex MD5 of a file.
pub fn md5_file(path: &Path) -> Result<String> {
    digest_file::<Md5>(path)
}

/// Lower-case hex SHA-256 of bytes.
pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parse a `SHA256SUMS` file (`<hex>  <name>` or `<hex> *<name>` per line) into pairs.
///
/// `origin` names the file in errors.
pub fn parse_sha256sums(text: &str, origin: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || Error::BadChecksumFile { file: origin.to_owned(), line: i + 1 };
        let (digest, name) = line.split_once(char::is_whitespace).ok_or_else(bad)?;
        let name = name.trim_start().trim_start_matches('*');
        if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) || name.is_empty() {
            return Err(bad());
        }
        out.push((digest.to_ascii_lowercase(), name.to_owned()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digests() {
        // Values from `printf abc | sha256sum` and `printf abc | md5sum`.
        assert_eq!(sha256_bytes(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("abc");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(md5_file(&p).unwrap(), "900150983cd24fb0d6963f7d28e17f72");
        assert!(Checksum::Md5("900150983cd24fb0d6963f7d28e17f72".into()).verify_file(&p).is_ok());
        let err = Checksum::Md5("0".repeat(32)).verify_file(&p).unwrap_err();
        assert!(err.to_string().contains("abc"), "{err}");
    }

    #[test]
    fn sha256sums_parsing() {
        let digest = "a".repeat(64);
        let text = format!("{digest}  images_background.zip\n{digest} *images_evaluation.zip\n");
        let parsed = parse_sha256sums(&text, "SHA256SUMS").unwrap();
        assert_eq!(parsed[1], (digest.clone(), "images_evaluation.zip".to_owned()));
        let err = parse_sha256sums("nothex  file\n", "SUMS").unwrap_err();
        assert_eq!(err.to_string(), "SUMS: line 1 is not `<64 hex digits>  <file name>`");
    }
}
