//! Tiny synthetic Omniglot-shaped archives, for tests (here and in crates that build on this
//! one) without the real dataset.
//!
//! Each character is a distinct pattern of dark strokes on white; each drawer shifts it by a
//! pixel or two, so characters are separable but drawings are not identical.

use std::io::Write;
use std::path::Path;

use crate::error::{Error, IoContext, Result};
use crate::subset::{DRAWINGS_PER_CHARACTER, ORIGINAL_SIZE, Subset};

/// Shape of a synthetic archive.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// Number of alphabets.
    pub alphabets: usize,
    /// Characters per alphabet.
    pub characters_per_alphabet: usize,
}

/// The 105 x 105 gray image of `character` (global index) drawn by `drawer` (1 to 20).
pub fn image(character: usize, drawer: usize) -> image::GrayImage {
    let n = ORIGINAL_SIZE;
    let mut img = image::GrayImage::from_pixel(n, n, image::Luma([255]));
    // A per-character seed chooses three strokes; the drawer shifts them slightly.
    let mut state = (character as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut next = |m: u32| {
        state ^= state >> 33;
        state = state.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
        state ^= state >> 29;
        (state % m as u64) as u32
    };
    let dx = (drawer % 3) as u32;
    let dy = (drawer / 3 % 3) as u32;
    for _ in 0..3 {
        let horizontal = next(2) == 0;
        let (x0, y0) = (10 + next(60) + dx, 10 + next(60) + dy);
        let len = 20 + next(20);
        for t in 0..len {
            for w in 0..6 {
                let (x, y) = if horizontal { (x0 + t, y0 + w) } else { (x0 + w, y0 + t) };
                if x < n && y < n {
                    img.put_pixel(x, y, image::Luma([0]));
                }
            }
        }
    }
    img
}

/// PNG bytes of an image.
pub fn png_bytes(img: &image::GrayImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).expect("encoding a PNG in memory cannot fail");
    out.into_inner()
}

/// One file of an archive: its path inside the zip and its bytes.
pub type Entry = (String, Vec<u8>);

/// The entries of a synthetic archive with Omniglot's layout
/// (`images_<subset>/Alphabet_<a>/characterNN/<id>_<NN>.png`).
pub fn entries(subset: Subset, spec: Spec) -> Vec<Entry> {
    let mut out = Vec::new();
    let offset = match subset {
        Subset::Background => 0,
        Subset::Evaluation => 10_000,
    };
    for a in 0..spec.alphabets {
        for c in 0..spec.characters_per_alphabet {
            let global = offset + a * spec.characters_per_alphabet + c;
            for d in 1..=DRAWINGS_PER_CHARACTER {
                let name = format!(
                    "{}/Alphabet_{a:02}/character{:02}/{:04}_{d:02}.png",
                    subset.top_folder(),
                    c + 1,
                    global + 1
                );
                out.push((name, png_bytes(&image(global, d))));
            }
        }
    }
    out
}

/// Write entries as a zip (deflate) to `path`.
pub fn write_zip(path: &Path, entries: &[Entry]) -> Result<()> {
    let file = std::fs::File::create(path).io_ctx("creating", path)?;
    let mut zip = zip::ZipWriter::new(file);
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    let zip_err = |source| Error::Zip { path: path.to_owned(), source };
    for (name, bytes) in entries {
        zip.start_file(name.as_str(), options).map_err(zip_err)?;
        zip.write_all(bytes).io_ctx("writing", path)?;
    }
    zip.finish().map_err(zip_err)?;
    Ok(())
}

/// Write a synthetic archive of `subset` into `dir` under its real name; returns its path.
pub fn write_archive(dir: &Path, subset: Subset, spec: Spec) -> Result<std::path::PathBuf> {
    std::fs::create_dir_all(dir).io_ctx("creating directory", dir)?;
    let path = dir.join(subset.archive_name());
    write_zip(&path, &entries(subset, spec))?;
    Ok(path)
}
