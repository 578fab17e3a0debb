//! `fewshot`: train, evaluate and predict with meta-learned few-shot classifiers.
//!
//! The subcommands arrive with the CLI issue; today the binary only reports its version.

use std::process::ExitCode;

fn main() -> ExitCode {
    println!("fewshot {}: train/eval/predict are not implemented yet", env!("CARGO_PKG_VERSION"));
    ExitCode::SUCCESS
}
