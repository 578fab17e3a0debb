//! The real Omniglot archives: counts, pixel statistics and cache timing.

use std::time::Instant;

use fewshot_e2e::{data_dir, source_or_skip};
use omniglot_data::{Dataset, LoadOptions, Subset};

#[test]
fn real_archives_decode_with_expected_counts() {
    let Some(source) = source_or_skip("real_archives_decode_with_expected_counts") else {
        return;
    };
    let data = data_dir(&source);
    // Build into a fresh cache directory so the decode path itself is exercised every run.
    let cache = tempfile::tempdir().unwrap();
    let options = LoadOptions { cache_dir: Some(cache.path().to_owned()), ..LoadOptions::default() };
    for subset in Subset::ALL {
        let start = Instant::now();
        let built = Dataset::load(&data, subset, &options).unwrap();
        let build_s = start.elapsed().as_secs_f64();
        assert_eq!(built.origin(), omniglot_data::Origin::Built);
        assert_eq!(built.counts(), subset.expected_counts());
        assert_eq!(built.pixels().len(), subset.expected_counts().images * 28 * 28);

        let start = Instant::now();
        let cached = Dataset::load(&data, subset, &options).unwrap();
        let load_s = start.elapsed().as_secs_f64();
        assert_eq!(cached.origin(), omniglot_data::Origin::Cache);
        assert_eq!(cached.pixels(), built.pixels());

        // Black ink on white paper: at 28x28 with a triangle filter, pixels darker than mid-gray
        // are a small share (strokes are thin).
        let px = built.pixels();
        let ink = px.iter().filter(|&&p| p < 128).count() as f64 / px.len() as f64;
        let mean = px.iter().map(|&p| p as f64).sum::<f64>() / px.len() as f64 / 255.0;
        fewshot_e2e::report(&format!(
            "{subset}: {:?}, build {build_s:.2} s, cache load {load_s:.3} s, ink share {ink:.4}, mean gray {mean:.3}",
            built.counts()
        ));
        assert!((0.02..0.25).contains(&ink), "ink share {ink} out of the plausible band");
        assert!((0.75..0.98).contains(&mean), "mean gray {mean} out of the plausible band");
        // Every image has some ink (a few thin strokes average out to light gray at 28x28, so
        // the bar is "clearly darker than paper") and is mostly paper.
        for (i, img) in px.chunks(28 * 28).enumerate() {
            let darkest = img.iter().copied().min().unwrap_or(255);
            let dark = img.iter().filter(|&&p| p < 128).count();
            assert!(darkest < 200 && dark < 28 * 28 / 2, "image {i}: darkest {darkest}, {dark} dark pixels");
        }
    }
}
