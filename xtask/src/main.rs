//! Project automation. `cargo xtask <command>`; see `cargo xtask --help`.

mod bench;
mod beyond;
mod download;
mod experiment;
mod ladder;
mod photos;
mod report;
mod runs;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Project automation for the fewshot workspace")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fetch and verify the Omniglot archives, then build the 28x28 caches.
    ///
    /// Example: cargo xtask download --source ../shared/omniglot
    Download(download::Args),
    /// Time meta-training and evaluation on synthetic data; optionally against PyTorch.
    ///
    /// Example: cargo xtask bench --against-torch /tmp/torch-ref/bin/python
    Bench(bench::Args),
    /// Run an experiment and write its report: `hw15` (the course's ladder and two figures),
    /// `beyond-maml` (the MAML++ ablation) or `photos` (the photo recipes side by side).
    ///
    /// Example: cargo xtask experiment hw15 --budget course
    Experiment(experiment::Args),
    /// Verify and unpack the shared Tiny ImageNet photos into data/tiny-imagenet-fs/.
    ///
    /// Example: cargo xtask photos --source ../shared/tiny-imagenet
    Photos(photos::UnpackArgs),
}

/// Where `cargo build --release` puts the binary `name`: under `CARGO_TARGET_DIR` when set
/// (relative to the repository root, where xtask runs), else under `target/`.
fn release_binary(name: &str) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| PathBuf::from("target"), PathBuf::from)
        .join("release")
        .join(name)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Download(args) => download::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Experiment(args) => experiment::run(args),
        Command::Photos(args) => photos::unpack(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
