//! The cache of a folder's decoded images: one u8 safetensors file `[images, channels, size,
//! size]` whose metadata holds the key it was built for (a SHA-256 over the format version,
//! size, channels and every image file's path, length and modification time), plus a JSON
//! manifest beside it for people. A cache whose key differs is not read; it is replaced.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::scan::ScannedClass;
use crate::{FolderClass, FolderOptions};

/// Bump when decoding or the layout changes: older caches are then rebuilt.
pub const FORMAT_VERSION: u32 = 1;

const PIXELS: &str = "pixels";

/// The key of a folder's state (as the scan saw it) read as `options` say.
pub fn key(classes: &[ScannedClass], options: &FolderOptions) -> String {
    let mut h = Sha256::new();
    h.update(format!("fewshot-images {FORMAT_VERSION} {} {:?}\n", options.image_size, options.channels));
    for class in classes {
        h.update(format!("class {:?} {}\n", class.split, class.name));
        for file in &class.files {
            let name = file.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            h.update(format!("{name}\t{}\t{}\n", file.len, file.modified_ns));
        }
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The stem every cache of `root` at this size and channel count shares.
pub fn stem(root: &Path, options: &FolderOptions) -> String {
    let name = root
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "folder".into());
    let name: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
    format!("{name}-{}px-{}ch-", options.image_size, options.channels.count())
}

/// The cache file of the folder whose caches share `stem`, in state `key`.
pub fn path(cache_dir: &Path, stem: &str, key: &str) -> PathBuf {
    cache_dir.join(format!("{stem}{}.safetensors", &key[..16]))
}

/// Pixels held in memory, or mapped from a cache file.
#[derive(Debug)]
pub enum Pixels {
    /// Decoded now.
    Owned(Vec<u8>),
    /// The pixel bytes of a cache file, mapped: the kernel pages them in as they are read and
    /// may drop them again under memory pressure, so a folder larger than memory can train.
    Mapped {
        /// The whole file.
        map: memmap2::Mmap,
        /// Where the pixels start in it.
        offset: usize,
        /// How many bytes they take.
        len: usize,
    },
}

impl Pixels {
    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Pixels::Owned(v) => v,
            Pixels::Mapped { map, offset, len } => &map[*offset..*offset + *len],
        }
    }
}

/// The pixels of a current cache at `path` (`len` bytes, built for `key`), mapped, or `None`.
pub fn read(path: &Path, key: &str, len: usize) -> Option<Pixels> {
    let file = std::fs::File::open(path).ok()?;
    // SAFETY: cache files are never written in place: a new state is a new file, renamed over
    // the name atomically (`omniglot_data::write_atomic`), so the mapped inode does not change
    // under us while this process holds it.
    let map = unsafe { memmap2::Mmap::map(&file) }.ok()?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&map[..]).ok()?;
    if meta.metadata().as_ref()?.get("key")? != key {
        return None;
    }
    let tensors = safetensors::SafeTensors::deserialize(&map[..]).ok()?;
    let view = tensors.tensor(PIXELS).ok()?;
    if view.dtype() != safetensors::Dtype::U8 || view.data().len() != len {
        return None;
    }
    let offset = view.data().as_ptr() as usize - map.as_ptr() as usize;
    Some(Pixels::Mapped { map, offset, len })
}

/// Write the cache (atomically) at `path` and its manifest, and remove the caches of older
/// states of the same folder (the other files whose names start with its `stem`).
pub fn write(
    cache_dir: &Path,
    stem: &str,
    path: &Path,
    key: &str,
    classes: &[FolderClass],
    pixels: &[u8],
) -> Result<()> {
    std::fs::create_dir_all(cache_dir).map_err(|e| Error::io("creating the cache folder", cache_dir, e))?;
    let images: usize = classes.iter().map(|c| c.images).sum();
    let shape = vec![images, pixels.len() / images.max(1)];
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::U8, shape, pixels)
        .map_err(|e| Error::Layout { path: path.to_owned(), problem: format!("cannot lay out the cache: {e}") })?;
    let metadata = std::collections::HashMap::from([
        ("key".to_owned(), key.to_owned()),
        ("format_version".to_owned(), FORMAT_VERSION.to_string()),
    ]);
    let bytes = safetensors::serialize([(PIXELS, view)], Some(metadata))
        .map_err(|e| Error::Layout { path: path.to_owned(), problem: format!("cannot write the cache: {e}") })?;
    // Older states of this folder: their stem is ours, their key another.
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if let Ok(entries) = std::fs::read_dir(cache_dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(stem) && !name.starts_with(&file_name) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    omniglot_data::write_atomic(path, &bytes)?;
    let manifest = serde_json::json!({ "format_version": FORMAT_VERSION, "key": key, "classes": classes });
    let mut manifest_path = path.as_os_str().to_owned();
    manifest_path.push(".json");
    omniglot_data::write_atomic(
        Path::new(&manifest_path),
        serde_json::to_string_pretty(&manifest).unwrap_or_default().as_bytes(),
    )?;
    Ok(())
}
