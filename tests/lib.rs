//! End-to-end tests of the workspace on the real Omniglot archives.
//!
//! The tests live in `real_data.rs` (the archives decode with the expected counts),
//! `learning.rs` (each method learns: accuracy after a short run) and `step_cost.rs` (time and
//! memory of one meta-step, reported as figures). They read the archives' location from
//! `OMNIGLOT_SOURCE` (a directory or base URL, as for `cargo xtask download`); without it each
//! test prints that it was skipped, by name, and passes. `.ci/run` sets it to `../shared/omniglot`.
#![deny(missing_docs)]

use std::path::PathBuf;

/// The archive source from `OMNIGLOT_SOURCE`, or `None` after printing why `test` is skipped.
pub fn source_or_skip(test: &str) -> Option<omniglot_data::Source> {
    match std::env::var("OMNIGLOT_SOURCE") {
        Ok(s) if !s.is_empty() => Some(match omniglot_data::Source::parse(&s) {
            // Test binaries run in this crate's directory; read relative paths from the
            // workspace root, where a user types them.
            omniglot_data::Source::Dir(d) if d.is_relative() => omniglot_data::Source::Dir(workspace_root().join(d)),
            other => other,
        }),
        _ => {
            println!(
                "SKIPPED {test}: OMNIGLOT_SOURCE is not set (point it at a directory holding the Omniglot archives)"
            );
            None
        }
    }
}

/// A data directory holding both verified archives fetched from `source`: `OMNIGLOT_DATA_DIR`
/// when set (so repeated runs reuse archives and caches), else `target/e2e-data`.
pub fn data_dir(source: &omniglot_data::Source) -> PathBuf {
    let dir = std::env::var_os("OMNIGLOT_DATA_DIR")
        .map(PathBuf::from)
        .map(|d| workspace_root().join(d))
        .unwrap_or_else(|| workspace_root().join("target/e2e-data"));
    omniglot_data::fetch(source, &dir, &omniglot_data::Subset::ALL, &mut |_| {})
        .unwrap_or_else(|e| panic!("fetching the archives from {source}: {e}"));
    dir
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("crate has a parent").to_owned()
}

pub use fewshot_cli::peak_rss_mib;

/// Both Omniglot subsets at 28x28, fetched from `source` if needed, as a run's data.
pub fn omniglot(source: &omniglot_data::Source) -> fewshot_cli::data::Data {
    let dir = data_dir(source);
    let sets = fewshot_cli::omniglot::Omniglot::load(&dir, Some(source), 28, omniglot_data::Expected::Omniglot)
        .unwrap_or_else(|e| panic!("{e:#}"));
    fewshot_cli::data::Data::Omniglot(sets)
}

/// Print a measured figure and append it to `target/e2e-report.txt`, which `.ci/run` shows
/// (cargo hides the output of passing tests).
pub fn report(line: &str) {
    println!("{line}");
    let path = workspace_root().join("target/e2e-report.txt");
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
        use std::io::Write;
        let _ = writeln!(f, "{line}");
    }
}
