//! Finding the classes of a folder: a class is a folder that holds image files directly; its
//! name is its path below the root (`Greek/character01`, or `train/cats`'s `cats`), so classes
//! may be nested in groups as Omniglot's characters are in alphabets. When the root holds
//! `train/`, `val/` or `test/`, those folders give the splits.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The file name extensions read as images (any case).
pub const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// Which part of a dataset a class belongs to, when the folder says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// Meta-training classes (`train/`).
    Train,
    /// Validation classes (`val/`).
    Val,
    /// Test classes (`test/`).
    Test,
}

impl Split {
    /// All three, in order.
    pub const ALL: [Split; 3] = [Split::Train, Split::Val, Split::Test];

    /// The folder that holds the split's classes.
    pub fn folder(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }
}

/// A class found on disk: its name, split (when the folder gives splits) and image files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedClass {
    /// The path of its folder below the root (or below its split's folder), `/`-separated.
    pub name: String,
    /// Its split, when the root holds `train/`, `val/`, `test/`.
    pub split: Option<Split>,
    /// Its image files, sorted by name.
    pub files: Vec<ImageFile>,
}

/// An image file as the scan saw it: what the cache's key is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFile {
    /// Where it is.
    pub path: PathBuf,
    /// Its length in bytes.
    pub len: u64,
    /// Its modification time, in nanoseconds since 1970 (0 where the system gives none).
    pub modified_ns: u128,
}

/// Whether `path` has an image extension.
pub fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// What [`scan()`] found: the classes, and the files it left out because they are not images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    /// The classes, sorted by split then name.
    pub classes: Vec<ScannedClass>,
    /// Files that are not images (annotations, notes, labels), sorted, left out as
    /// torchvision's `ImageFolder` leaves them out.
    pub skipped: Vec<PathBuf>,
}

/// The classes under `root`, sorted by split then name. Hidden entries (a leading `.`) and
/// files that are not images are skipped (the latter listed in [`Scan::skipped`]); a folder
/// that holds no image is not a class. Errors: the root is missing or not a folder; it holds no
/// class; a folder holds both images and subfolders; two splits share a class name.
pub fn scan(root: &Path) -> Result<Scan> {
    let meta = std::fs::metadata(root).map_err(|e| Error::io("reading the image folder", root, e))?;
    if !meta.is_dir() {
        return Err(Error::Layout {
            path: root.to_owned(),
            problem: "is a file, not a folder of class folders".into(),
        });
    }
    let split_dirs: Vec<Split> = Split::ALL.into_iter().filter(|s| root.join(s.folder()).is_dir()).collect();
    let mut classes = Vec::new();
    let mut strays = Vec::new();
    if split_dirs.is_empty() {
        walk(root, "", None, &mut classes, &mut strays)?;
    } else {
        for entry in entries(root)? {
            let name = entry.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if !Split::ALL.iter().any(|s| s.folder() == name) {
                return Err(Error::Layout {
                    path: entry,
                    problem: "sits beside train/, val/ or test/: with split folders, every class goes inside one \
                              of them (move it, or remove the split folders to split the classes by fractions)"
                        .into(),
                });
            }
        }
        for split in split_dirs {
            walk(&root.join(split.folder()), "", Some(split), &mut classes, &mut strays)?;
        }
    }
    if classes.is_empty() {
        return Err(Error::Layout {
            path: root.to_owned(),
            problem: format!(
                "holds no class: expected one folder of images per class (files ending in {}), possibly grouped \
                 in folders, or train/, val/ and test/ folders of class folders",
                IMAGE_EXTENSIONS.join(", ")
            ),
        });
    }
    let mut seen = std::collections::BTreeMap::new();
    for c in &classes {
        if let Some(other) = seen.insert(c.name.clone(), c.split) {
            let (a, b) = (other.map_or("?", Split::folder), c.split.map_or("?", Split::folder));
            return Err(Error::Layout {
                path: root.to_owned(),
                problem: format!(
                    "the class {} is in both {a}/ and {b}/: a class belongs to one split (rename one, or move it)",
                    c.name
                ),
            });
        }
    }
    strays.sort();
    Ok(Scan { classes, skipped: strays })
}

/// The visible entries of `dir`, sorted.
fn entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let read = std::fs::read_dir(dir).map_err(|e| Error::io("listing", dir, e))?;
    let mut out = Vec::new();
    for entry in read {
        let entry = entry.map_err(|e| Error::io("listing", dir, e))?;
        if !entry.file_name().to_string_lossy().starts_with('.') {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

fn walk(
    dir: &Path,
    name: &str,
    split: Option<Split>,
    classes: &mut Vec<ScannedClass>,
    strays: &mut Vec<PathBuf>,
) -> Result<()> {
    let (mut images, mut folders) = (Vec::new(), Vec::new());
    for path in entries(dir)? {
        // Follows symbolic links, as a user who links class folders together expects.
        let meta = std::fs::metadata(&path).map_err(|e| Error::io("reading", &path, e))?;
        if meta.is_dir() {
            folders.push(path);
        } else if is_image(&path) {
            let modified = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
            images.push(ImageFile { path, len: meta.len(), modified_ns: modified.map_or(0, |d| d.as_nanos()) });
        } else {
            strays.push(path);
        }
    }
    if !images.is_empty() && !folders.is_empty() {
        return Err(Error::Layout {
            path: dir.to_owned(),
            problem: format!(
                "holds both images ({}) and folders ({}): a folder is either a class (images only) or a group of \
                 classes (folders only); move the images into a class folder of their own",
                images.len(),
                folders.len()
            ),
        });
    }
    if !images.is_empty() {
        classes.push(ScannedClass { name: name.to_owned(), split, files: images });
    }
    for folder in folders {
        let leaf = folder.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let child = if name.is_empty() { leaf } else { format!("{name}/{leaf}") };
        walk(&folder, &child, split, classes, strays)?;
    }
    Ok(())
}
