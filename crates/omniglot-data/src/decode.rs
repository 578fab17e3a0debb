//! Reading an Omniglot archive straight from its zip: layout checks and parallel PNG decoding.

use std::collections::BTreeMap;
use std::io::{Cursor, Read};
use std::path::Path;

use image::imageops::FilterType;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::subset::{Counts, DRAWINGS_PER_CHARACTER, ORIGINAL_SIZE, Subset};

/// One handwritten character: its alphabet, its name and who drew each of its 20 images.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Character {
    /// Alphabet folder name, e.g. `Latin`.
    pub alphabet: String,
    /// Character folder name, e.g. `character01`.
    pub name: String,
    /// The archive's file stem of each drawing, in drawing order, e.g. `0709_01`.
    /// The part after `_` is the drawer (1 to 20); the part before is the character's global id.
    pub files: Vec<String>,
}

/// Decoded contents of one archive.
#[derive(Debug, Clone)]
pub struct Decoded {
    /// Characters sorted by alphabet, then by character number.
    pub characters: Vec<Character>,
    /// u8 gray levels, shape `[characters, 20, size, size]`, 255 = white paper, 0 = ink.
    pub pixels: Vec<u8>,
}

/// One character's drawings in an archive: drawer number -> (file stem, zip entry index).
type Drawings = BTreeMap<u32, (String, usize)>;

/// Decode `archive` (one of the two Omniglot zips), check its layout and resize every image
/// to `size` x `size`.
///
/// Resizing uses a triangle (bilinear) filter whose support widens with the scale factor, so a
/// downscale averages over the source pixels it covers, as PIL's `Resize` does by default
/// (the course recipe's `transforms.Resize((28, 28))`). At `size` = 105 images are kept as they are.
///
/// `expected`, when given, is checked against the counts found; any difference is an error.
pub fn decode_archive(archive: &Path, subset: Subset, size: u32, expected: Option<Counts>) -> Result<Decoded> {
    if size == 0 || size > ORIGINAL_SIZE {
        return Err(Error::InvalidArgument {
            name: "image_size",
            value: size.to_string(),
            expected: format!("1 to {ORIGINAL_SIZE}"),
        });
    }
    let bytes = std::fs::read(archive).io_ctx("reading", archive)?;
    let zip_err = |source| Error::Zip { path: archive.to_owned(), source };
    let mut zip = zip::ZipArchive::new(Cursor::new(&bytes[..])).map_err(zip_err)?;
    let layout_err = |problem: String| Error::BadLayout { archive: archive.to_owned(), problem };

    // (alphabet, character) -> drawer -> (file stem, entry index)
    let mut index: BTreeMap<(String, u32, String), Drawings> = BTreeMap::new();
    let top = subset.top_folder();
    for i in 0..zip.len() {
        let entry = zip.by_index_raw(i).map_err(zip_err)?;
        if entry.is_dir() {
            continue;
        }
        let name = entry.name().map_err(zip_err)?.into_owned();
        let parts: Vec<&str> = name.split('/').collect();
        if parts.first().is_some_and(|p| p.starts_with("__MACOSX")) || name.ends_with(".DS_Store") {
            continue;
        }
        let [t, alphabet, character, file] = parts[..] else {
            return Err(layout_err(format!(
                "unexpected entry `{name}`: expected {top}/<alphabet>/characterNN/<id>_<NN>.png"
            )));
        };
        let stem = file.strip_suffix(".png");
        let number = character.strip_prefix("character").and_then(|n| n.parse::<u32>().ok());
        let drawer = stem.and_then(|s| s.rsplit_once('_')).and_then(|(_, d)| d.parse::<u32>().ok());
        let (Some(stem), Some(number), Some(drawer), true) = (stem, number, drawer, t == top) else {
            return Err(layout_err(format!(
                "unexpected entry `{name}`: expected {top}/<alphabet>/characterNN/<id>_<NN>.png"
            )));
        };
        if !(1..=DRAWINGS_PER_CHARACTER as u32).contains(&drawer) {
            return Err(layout_err(format!("entry `{name}`: drawer {drawer} is outside 1..=20")));
        }
        let slot = index.entry((alphabet.to_owned(), number, character.to_owned())).or_default();
        if slot.insert(drawer, (stem.to_owned(), i)).is_some() {
            return Err(layout_err(format!("entry `{name}`: drawer {drawer} appears twice in {alphabet}/{character}")));
        }
    }

    let mut characters = Vec::with_capacity(index.len());
    let mut entries = Vec::with_capacity(index.len() * DRAWINGS_PER_CHARACTER);
    for ((alphabet, _, name), drawings) in index {
        if drawings.len() != DRAWINGS_PER_CHARACTER {
            let missing: Vec<String> = (1..=DRAWINGS_PER_CHARACTER as u32)
                .filter(|d| !drawings.contains_key(d))
                .map(|d| format!("{d:02}"))
                .collect();
            return Err(layout_err(format!(
                "{alphabet}/{name} has {} drawings, expected {DRAWINGS_PER_CHARACTER}; missing drawers {}",
                drawings.len(),
                missing.join(", ")
            )));
        }
        let mut files = Vec::with_capacity(DRAWINGS_PER_CHARACTER);
        for (stem, i) in drawings.into_values() {
            files.push(stem);
            entries.push(i);
        }
        characters.push(Character { alphabet, name, files });
    }

    let found = Counts {
        alphabets: {
            let mut a: Vec<&str> = characters.iter().map(|c| c.alphabet.as_str()).collect();
            a.dedup();
            a.len()
        },
        characters: characters.len(),
        images: entries.len(),
    };
    if let Some(expected) = expected
        && found != expected
    {
        return Err(layout_err(format!(
            "found {} alphabets / {} characters / {} images, expected {} / {} / {}; \
             the archive is incomplete or not the {subset} set",
            found.alphabets, found.characters, found.images, expected.alphabets, expected.characters, expected.images
        )));
    }

    let image_len = (size * size) as usize;
    let mut pixels = vec![0u8; entries.len() * image_len];
    pixels.par_chunks_mut(image_len).zip(entries.par_iter()).try_for_each_init(
        || zip.clone(),
        |zip, (out, &i)| -> Result<()> {
            let mut entry = zip.by_index(i).map_err(zip_err)?;
            let name = entry.name().map_err(zip_err)?.into_owned();
            let bad = |problem: String| Error::BadImage { archive: archive.to_owned(), entry: name.clone(), problem };
            let mut png = Vec::with_capacity(entry.size() as usize);
            entry.read_to_end(&mut png).map_err(|e| bad(format!("cannot decompress: {e}")))?;
            let img = image::load_from_memory_with_format(&png, image::ImageFormat::Png)
                .map_err(|e| bad(format!("not a readable PNG: {e}")))?
                .into_luma8();
            if img.dimensions() != (ORIGINAL_SIZE, ORIGINAL_SIZE) {
                let (w, h) = img.dimensions();
                return Err(bad(format!("image is {w}x{h}, expected {ORIGINAL_SIZE}x{ORIGINAL_SIZE}")));
            }
            out.copy_from_slice(&resize_gray(&img, size));
            Ok(())
        },
    )?;
    Ok(Decoded { characters, pixels })
}

/// Resize a gray image to `size` x `size` exactly as the cache does: a triangle (bilinear)
/// filter widened to the scale factor; an image already at that size is returned as is.
pub fn resize_gray(img: &image::GrayImage, size: u32) -> Vec<u8> {
    if img.dimensions() == (size, size) {
        img.as_raw().clone()
    } else {
        image::imageops::resize(img, size, size, FilterType::Triangle).into_raw()
    }
}
