//! `fewshot config list|show`: the shipped configs and their purpose, and a resolved config.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::settings::Settings;
use crate::stdout;

/// `fewshot config list`: each config under `configs/` with its header's first lines.
pub fn list() -> anyhow::Result<ExitCode> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir("configs")
        .context("reading configs/ (run from the repository root)")?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    paths.sort();
    // One column of names, as wide as the longest.
    let width = paths.iter().map(|p| p.display().to_string().chars().count()).max().unwrap_or(0);
    for path in paths {
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let purpose: Vec<&str> =
            text.lines().take_while(|l| l.starts_with('#')).map(|l| l.trim_start_matches('#').trim()).collect();
        stdout::line(&format!("{:<width$} {}", path.display().to_string(), purpose.join(" ")))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `fewshot config show NAME`: the config (a name under `configs/` or a path) with
/// `overrides` applied, resolved and validated, as TOML.
pub fn show(name: String, overrides: Vec<String>) -> anyhow::Result<ExitCode> {
    let path = if name.ends_with(".toml") || name.contains('/') {
        PathBuf::from(&name)
    } else {
        PathBuf::from("configs").join(format!("{name}.toml"))
    };
    stdout::write(Settings::load(&path, &overrides)?.config.to_toml().as_bytes())?;
    Ok(ExitCode::SUCCESS)
}
