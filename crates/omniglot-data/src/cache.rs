//! The on-disk cache: one safetensors file of u8 pixels plus a JSON manifest per subset and size.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::checksum::{sha256_bytes, sha256_file};
use crate::decode::{Character, Decoded, decode_archive};
use crate::error::{Error, IoContext, Result};
use crate::subset::{Counts, DRAWINGS_PER_CHARACTER, Subset};

/// Bump when the cache layout or the decoding (e.g. the resize filter) changes: older caches
/// are then rebuilt.
pub const CACHE_FORMAT_VERSION: u32 = 1;

/// The resize filter recorded in the manifest (see [`decode_archive`]).
pub const RESIZE_FILTER: &str = "triangle";

/// Name of the tensor inside the safetensors file.
const PIXELS_TENSOR: &str = "pixels";

/// Everything needed to tell whether a cache is current, written beside the pixels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`CACHE_FORMAT_VERSION`] at the time of writing.
    pub format_version: u32,
    /// Which archive.
    pub subset: Subset,
    /// Side of the square images in the cache.
    pub image_size: u32,
    /// Resize filter used.
    pub resize_filter: String,
    /// File name of the archive the cache was built from.
    pub source_archive: String,
    /// SHA-256 of that archive.
    pub source_sha256: String,
    /// File name of the pixel file, next to the manifest.
    pub pixels_file: String,
    /// SHA-256 of the pixel file.
    pub pixels_sha256: String,
    /// Alphabet, character and drawings counts.
    pub counts: Counts,
    /// The characters in the order of the pixel tensor's first dimension.
    pub characters: Vec<Character>,
}

/// Paths of the two files of one cache.
pub fn cache_paths(cache_dir: &Path, subset: Subset, size: u32) -> (PathBuf, PathBuf) {
    let stem = format!("{}-{size}", subset.name());
    (cache_dir.join(format!("{stem}.json")), cache_dir.join(format!("{stem}.safetensors")))
}

/// Read a cache and check it against the expected subset, size and (when known) archive checksum.
///
/// Any disagreement is [`Error::BadCache`]: the caller rebuilds rather than trusting it.
pub fn read_cache(
    cache_dir: &Path,
    subset: Subset,
    size: u32,
    source_sha256: Option<&str>,
) -> Result<(Manifest, Vec<u8>)> {
    let (manifest_path, pixels_path) = cache_paths(cache_dir, subset, size);
    let bad = |path: &Path, problem: String| Error::BadCache { path: path.to_owned(), problem };
    let text = std::fs::read_to_string(&manifest_path).io_ctx("reading", &manifest_path)?;
    let manifest: Manifest = serde_json::from_str(&text)
        .map_err(|e| bad(&manifest_path, format!("not a manifest of this version ({e})")))?;
    if manifest.format_version != CACHE_FORMAT_VERSION {
        return Err(bad(
            &manifest_path,
            format!("format version {} (this build writes {CACHE_FORMAT_VERSION})", manifest.format_version),
        ));
    }
    if manifest.subset != subset || manifest.image_size != size || manifest.resize_filter != RESIZE_FILTER {
        return Err(bad(
            &manifest_path,
            format!(
                "holds {} at {} px ({} filter), wanted {subset} at {size} px ({RESIZE_FILTER})",
                manifest.subset, manifest.image_size, manifest.resize_filter
            ),
        ));
    }
    if let Some(sha) = source_sha256
        && manifest.source_sha256 != sha
    {
        return Err(bad(&manifest_path, format!("built from another archive (sha256 {})", manifest.source_sha256)));
    }
    let bytes = std::fs::read(&pixels_path).io_ctx("reading", &pixels_path)?;
    let actual = sha256_bytes(&bytes);
    if actual != manifest.pixels_sha256 {
        return Err(bad(
            &pixels_path,
            format!("sha256 {actual} differs from the manifest's {}", manifest.pixels_sha256),
        ));
    }
    let tensors = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| bad(&pixels_path, format!("not a safetensors file ({e})")))?;
    let view =
        tensors.tensor(PIXELS_TENSOR).map_err(|e| bad(&pixels_path, format!("no `{PIXELS_TENSOR}` tensor ({e})")))?;
    let want = [manifest.characters.len(), DRAWINGS_PER_CHARACTER, size as usize, size as usize];
    if view.dtype() != safetensors::Dtype::U8 || view.shape() != want {
        return Err(bad(
            &pixels_path,
            format!("tensor is {:?} {:?}, expected U8 {want:?}", view.dtype(), view.shape()),
        ));
    }
    let pixels = view.data().to_vec();
    Ok((manifest, pixels))
}

/// Decode `archive` and write its cache into `cache_dir` atomically (temporary file, then rename;
/// pixels first, manifest last, so a crash leaves either the old cache or a detectably stale one).
pub fn build_cache(
    archive: &Path,
    cache_dir: &Path,
    subset: Subset,
    size: u32,
    expected: Option<Counts>,
) -> Result<(Manifest, Vec<u8>)> {
    let source_sha256 = sha256_file(archive)?;
    let Decoded { characters, pixels } = decode_archive(archive, subset, size, expected)?;
    let shape = vec![characters.len(), DRAWINGS_PER_CHARACTER, size as usize, size as usize];
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::U8, shape, &pixels)
        .map_err(|e| Error::BadCache { path: cache_dir.to_owned(), problem: format!("cannot form tensor: {e}") })?;
    let metadata = HashMap::from([
        ("subset".to_owned(), subset.name().to_owned()),
        ("format_version".to_owned(), CACHE_FORMAT_VERSION.to_string()),
    ]);
    let bytes = safetensors::serialize([(PIXELS_TENSOR, view)], Some(metadata))
        .map_err(|e| Error::BadCache { path: cache_dir.to_owned(), problem: format!("cannot serialise: {e}") })?;
    let (manifest_path, pixels_path) = cache_paths(cache_dir, subset, size);
    let mut alphabets: Vec<&str> = characters.iter().map(|c| c.alphabet.as_str()).collect();
    alphabets.dedup();
    let manifest = Manifest {
        format_version: CACHE_FORMAT_VERSION,
        subset,
        image_size: size,
        resize_filter: RESIZE_FILTER.to_owned(),
        source_archive: archive.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        source_sha256,
        pixels_file: pixels_path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        pixels_sha256: sha256_bytes(&bytes),
        counts: Counts {
            alphabets: alphabets.len(),
            characters: characters.len(),
            images: pixels.len() / (size * size) as usize,
        },
        characters,
    };
    if cache_dir.exists() && !cache_dir.is_dir() {
        return Err(Error::BadCache {
            path: cache_dir.to_owned(),
            problem: "it is a file, and the cache is a folder: move the file aside or remove it (the cache is \
                      rebuilt from the archives)"
                .into(),
        });
    }
    std::fs::create_dir_all(cache_dir).io_ctx("creating directory", cache_dir)?;
    write_atomic(&pixels_path, &bytes)?;
    let json = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
    write_atomic(&manifest_path, &json)?;
    Ok((manifest, pixels))
}

/// Write `bytes` to `path` through a temporary file in the same directory and a rename.
/// On any failure the temporary file is removed and `path` is untouched.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp =
        tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir).io_ctx("creating a temporary file in", dir)?;
    tmp.write_all(bytes).io_ctx("writing", tmp.path())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // Temporary files are created 0600; a cache is ordinary data.
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .io_ctx("setting permissions of", tmp.path())?;
    }
    tmp.as_file().sync_all().io_ctx("syncing", tmp.path())?;
    tmp.persist(path).map_err(|e| Error::Io { action: "renaming into", path: path.to_owned(), source: e.error })?;
    Ok(())
}
