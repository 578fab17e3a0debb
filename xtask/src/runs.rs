//! What every experiment does with `fewshot` runs: the command, a run's metrics, a JSON file,
//! and the machine it ran on.

use std::path::Path;
use std::process::Command;

use anyhow::Context;
use serde_json::{Value, json};

/// A `fewshot` command with `--threads` when given.
pub fn fewshot_command(fewshot: &Path, threads: Option<usize>) -> Command {
    let mut cmd = Command::new(fewshot);
    if let Some(t) = threads {
        cmd.args(["--threads", &t.to_string()]);
    }
    cmd
}

/// `fewshot train --config CONFIG --out DIR --set ...`, continuing the run `dir` holds (a
/// finished one returns at once; `fewshot` refuses one of another config).
pub fn train_or_resume(
    fewshot: &Path,
    threads: Option<usize>,
    config: &str,
    dir: &Path,
    sets: &[impl AsRef<str>],
) -> anyhow::Result<()> {
    let mut train = fewshot_command(fewshot, threads);
    train.args(["train", "--config", config, "--out"]).arg(dir);
    for s in sets {
        train.args(["--set", s.as_ref()]);
    }
    if dir.join("config.toml").exists() {
        train.arg("--resume");
    }
    let status = train.status().with_context(|| format!("running {train:?}"))?;
    if !status.success() {
        anyhow::bail!("{train:?} failed ({status})");
    }
    Ok(())
}

/// The lines of a run's `metrics.jsonl`.
pub fn metrics(dir: &Path) -> anyhow::Result<Vec<Value>> {
    let path = dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines().map(|l| serde_json::from_str(l).with_context(|| format!("{}: bad line", path.display()))).collect()
}

/// A JSON file, parsed.
pub fn read_json(path: &Path) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

/// CPU model and core count of this machine.
pub fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|t| {
        t.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
    });
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    json!({ "cpu": cpu, "cores": cores, "threads": null })
}
