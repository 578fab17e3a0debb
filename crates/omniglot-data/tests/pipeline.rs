//! Decode, cache and bad-input behaviour on generated archives.

use std::path::Path;

use omniglot_data::synthetic::{self, Spec};
use omniglot_data::{Counts, Dataset, Error, Expected, LoadOptions, Origin, Subset, cache_paths};

const SPEC: Spec = Spec { alphabets: 2, characters_per_alphabet: 3 };
const COUNTS: Counts = Counts { alphabets: 2, characters: 6, images: 120 };

fn options() -> LoadOptions {
    LoadOptions { expected: Expected::Exactly(COUNTS), ..LoadOptions::default() }
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn builds_then_reads_cache() {
    let dir = tempfile::tempdir().unwrap();
    synthetic::write_archive(dir.path(), Subset::Background, SPEC).unwrap();
    let built = Dataset::load(dir.path(), Subset::Background, &options()).unwrap();
    assert_eq!(built.origin(), Origin::Built);
    assert_eq!(built.counts(), COUNTS);
    assert_eq!(built.characters()[0].alphabet, "Alphabet_00");
    assert_eq!(built.characters()[4].name, "character02");
    assert_eq!(built.characters()[0].files[19], "0001_20");
    assert_eq!(built.pixels().len(), 120 * 28 * 28);
    // Some ink, mostly paper: the strokes cover a few percent of the image.
    let ink = built.pixels().iter().filter(|&&p| p < 128).count() as f64 / built.pixels().len() as f64;
    assert!((0.01..0.3).contains(&ink), "ink share {ink}");

    let cached = Dataset::load(dir.path(), Subset::Background, &options()).unwrap();
    assert_eq!(cached.origin(), Origin::Cache);
    assert_eq!(cached.pixels(), built.pixels());
    assert_eq!(cached.characters(), built.characters());
    assert_eq!(files_in(&dir.path().join("cache")), ["background-28.json", "background-28.safetensors"]);
}

#[test]
fn full_size_keeps_original_pixels() {
    let dir = tempfile::tempdir().unwrap();
    synthetic::write_archive(dir.path(), Subset::Evaluation, Spec { alphabets: 1, characters_per_alphabet: 1 })
        .unwrap();
    let opts = LoadOptions { image_size: 105, expected: Expected::Any, cache_dir: None };
    let ds = Dataset::load(dir.path(), Subset::Evaluation, &opts).unwrap();
    assert_eq!(ds.image(0, 4), synthetic::image(10_000, 5).as_raw().as_slice());
}

#[test]
fn wrong_counts_name_what_differs() {
    let dir = tempfile::tempdir().unwrap();
    synthetic::write_archive(dir.path(), Subset::Background, SPEC).unwrap();
    let err = Dataset::load(dir.path(), Subset::Background, &LoadOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("images_background.zip"), "{msg}");
    assert!(msg.contains("found 2 alphabets / 6 characters / 120 images, expected 30 / 964 / 19280"), "{msg}");
    assert!(!dir.path().join("cache").exists(), "no cache may be left behind");
}

#[test]
fn missing_drawing_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut entries = synthetic::entries(Subset::Background, SPEC);
    entries.retain(|(name, _)| !name.ends_with("/character02/0002_07.png"));
    synthetic::write_zip(&dir.path().join("images_background.zip"), &entries).unwrap();
    let err = Dataset::load(dir.path(), Subset::Background, &LoadOptions { expected: Expected::Any, ..options() })
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::BadLayout { .. }), "{msg}");
    assert!(msg.contains("Alphabet_00/character02 has 19 drawings, expected 20; missing drawers 07"), "{msg}");
}

#[test]
fn wrong_png_size_names_the_entry() {
    let dir = tempfile::tempdir().unwrap();
    let mut entries = synthetic::entries(Subset::Background, SPEC);
    let small = image::GrayImage::from_pixel(50, 60, image::Luma([255]));
    entries[5].1 = synthetic::png_bytes(&small);
    let bad_name = entries[5].0.clone();
    synthetic::write_zip(&dir.path().join("images_background.zip"), &entries).unwrap();
    let err = Dataset::load(dir.path(), Subset::Background, &options()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&bad_name) && msg.contains("image is 50x60, expected 105x105"), "{msg}");
    assert!(!dir.path().join("cache").exists());
}

#[test]
fn garbage_png_names_the_entry() {
    let dir = tempfile::tempdir().unwrap();
    let mut entries = synthetic::entries(Subset::Background, SPEC);
    entries[3].1 = b"not a png".to_vec();
    synthetic::write_zip(&dir.path().join("images_background.zip"), &entries).unwrap();
    let err = Dataset::load(dir.path(), Subset::Background, &options()).unwrap_err();
    assert!(err.to_string().contains(&entries[3].0), "{err}");
    assert!(err.to_string().contains("not a readable PNG"), "{err}");
}

#[test]
fn corrupt_and_truncated_zip_name_the_file() {
    for (what, cut) in [("garbage", None), ("truncated", Some(0.5))] {
        let dir = tempfile::tempdir().unwrap();
        let path = synthetic::write_archive(dir.path(), Subset::Background, SPEC).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        match cut {
            Some(frac) => bytes.truncate((bytes.len() as f64 * frac) as usize),
            None => bytes.iter_mut().for_each(|b| *b = b.wrapping_mul(31).wrapping_add(7)),
        }
        std::fs::write(&path, &bytes).unwrap();
        let err = Dataset::load(dir.path(), Subset::Background, &options()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::Zip { .. }), "{what}: {msg}");
        assert!(msg.contains("images_background.zip") && msg.contains("delete it and download again"), "{what}: {msg}");
        assert!(!dir.path().join("cache").exists(), "{what}");
    }
}

#[test]
fn missing_archive_says_how_to_get_it() {
    let dir = tempfile::tempdir().unwrap();
    let err = Dataset::load(dir.path(), Subset::Evaluation, &options()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::ArchiveMissing { .. }), "{msg}");
    assert!(msg.contains("images_evaluation.zip") && msg.contains("cargo xtask download"), "{msg}");
}

#[test]
fn stale_foreign_or_damaged_caches_are_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    synthetic::write_archive(dir.path(), Subset::Background, SPEC).unwrap();
    let first = Dataset::load(dir.path(), Subset::Background, &options()).unwrap();
    let (manifest_path, pixels_path) = cache_paths(&dir.path().join("cache"), Subset::Background, 28);
    let original = std::fs::read_to_string(&manifest_path).unwrap();

    type Tamper = fn(&Path, &Path, &str);
    let cases: [(&str, Tamper); 5] = [
        ("other format version", |m, _, orig| {
            std::fs::write(m, orig.replace("\"format_version\": 1", "\"format_version\": 0")).unwrap()
        }),
        ("other source archive", |m, _, orig| {
            let v: serde_json::Value = serde_json::from_str(orig).unwrap();
            let sha = v["source_sha256"].as_str().unwrap().to_owned();
            std::fs::write(m, orig.replace(&sha, &"0".repeat(64))).unwrap()
        }),
        ("flipped pixel", |_, p, _| {
            let mut b = std::fs::read(p).unwrap();
            let last = b.len() - 1;
            b[last] ^= 0xff;
            std::fs::write(p, b).unwrap()
        }),
        ("manifest not json", |m, _, _| std::fs::write(m, "{").unwrap()),
        ("pixels deleted", |_, p, _| std::fs::remove_file(p).unwrap()),
    ];
    for (what, tamper) in cases {
        tamper(&manifest_path, &pixels_path, &original);
        let again = Dataset::load(dir.path(), Subset::Background, &options()).unwrap();
        assert_eq!(again.origin(), Origin::Built, "{what}");
        assert_eq!(again.pixels(), first.pixels(), "{what}");
        let next = Dataset::load(dir.path(), Subset::Background, &options()).unwrap();
        assert_eq!(next.origin(), Origin::Cache, "{what}: rebuilt cache is read back");
    }
}

#[test]
fn archive_changed_under_the_cache_rebuilds() {
    let dir = tempfile::tempdir().unwrap();
    synthetic::write_archive(dir.path(), Subset::Background, SPEC).unwrap();
    Dataset::load(dir.path(), Subset::Background, &options()).unwrap();
    let bigger = Spec { alphabets: 2, characters_per_alphabet: 4 };
    synthetic::write_archive(dir.path(), Subset::Background, bigger).unwrap();
    let opts = LoadOptions { expected: Expected::Any, ..options() };
    let ds = Dataset::load(dir.path(), Subset::Background, &opts).unwrap();
    assert_eq!((ds.origin(), ds.characters().len()), (Origin::Built, 8));
}

#[test]
fn unwritable_cache_dir_is_named_and_archive_kept() {
    let dir = tempfile::tempdir().unwrap();
    let archive = synthetic::write_archive(dir.path(), Subset::Background, SPEC).unwrap();
    let before = std::fs::read(&archive).unwrap();
    // A regular file where the cache directory should be: nothing can be created under it
    // (a permission-based test would pass vacuously when run as root).
    let blocker = dir.path().join("blocker");
    std::fs::write(&blocker, b"").unwrap();
    let opts = LoadOptions { cache_dir: Some(blocker.join("cache")), ..options() };
    let err = Dataset::load(dir.path(), Subset::Background, &opts).unwrap_err();
    assert!(err.to_string().contains("blocker/cache"), "{err}");
    assert_eq!(std::fs::read(&archive).unwrap(), before);
    assert_eq!(files_in(dir.path()), ["blocker", "images_background.zip"]);
}

#[test]
fn bad_image_size_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    synthetic::write_archive(dir.path(), Subset::Background, SPEC).unwrap();
    let err = Dataset::load(dir.path(), Subset::Background, &LoadOptions { image_size: 0, ..options() }).unwrap_err();
    assert_eq!(err.to_string(), "invalid image_size = 0: 1 to 105");
}
