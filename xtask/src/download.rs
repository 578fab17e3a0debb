//! `cargo xtask download`: archives into the data directory, verified, and caches built.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use omniglot_data::{CANONICAL_BASE_URL, Dataset, Fetched, LoadOptions, Progress, Source, Subset, fetch};

#[derive(clap::Args)]
pub struct Args {
    /// Base URL or local directory holding images_background.zip and images_evaluation.zip
    /// (and optionally SHA256SUMS). Default: the canonical GitHub archives.
    #[arg(long, env = "OMNIGLOT_SOURCE", default_value = CANONICAL_BASE_URL)]
    source: String,
    /// Where archives and caches go.
    #[arg(long, env = "OMNIGLOT_DATA_DIR", default_value = "data/omniglot")]
    data_dir: PathBuf,
    /// Side of the cached square images.
    #[arg(long, default_value_t = omniglot_data::DEFAULT_IMAGE_SIZE)]
    image_size: u32,
    /// Only fetch and verify the archives; build no cache.
    #[arg(long)]
    no_cache: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let source = Source::parse(&args.source);
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{msg:24} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let fetched = fetch(&source, &args.data_dir, &Subset::ALL, &mut |p| match p {
        Progress::Start { file, total } => {
            bar.reset();
            bar.set_length(total.unwrap_or(0));
            bar.set_message(file.to_owned());
        }
        Progress::Advance { done } => bar.set_position(done),
        Progress::Finish => bar.finish(),
    })
    .with_context(|| format!("fetching Omniglot from {source} into {}", args.data_dir.display()))?;
    bar.finish_and_clear();
    for f in &fetched {
        match f {
            Fetched::AlreadyPresent(p) => {
                eprintln!("{}: already present and verified", p.display())
            }
            Fetched::Transferred(p) => eprintln!("{}: fetched and verified", p.display()),
        }
    }
    if args.no_cache {
        return Ok(());
    }
    let options = LoadOptions { image_size: args.image_size, ..LoadOptions::default() };
    for subset in Subset::ALL {
        let start = Instant::now();
        let ds = Dataset::load(&args.data_dir, subset, &options)
            .with_context(|| format!("building the {subset} cache in {}", args.data_dir.display()))?;
        let c = ds.counts();
        eprintln!(
            "{subset}: {} alphabets, {} characters, {} images at {}x{} ({:?} in {:.2} s)",
            c.alphabets,
            c.characters,
            c.images,
            ds.image_size(),
            ds.image_size(),
            ds.origin(),
            start.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
