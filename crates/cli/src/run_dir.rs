//! A run folder's safety: `train` never writes over a run it was not asked to continue, and
//! never shares a folder with another `train`.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// The file whose exclusive lock marks a folder as in use (held for the whole run; the OS
/// releases it when the process ends, however it ends).
pub const LOCK_FILE: &str = ".lock";

/// Whether `dir` holds (part of) a run: a config, metrics or checkpoints.
pub fn holds_run(dir: &Path) -> bool {
    ["config.toml", "metrics.jsonl", "checkpoints"].iter().any(|f| dir.join(f).exists())
}

/// The held lock of a run folder; dropping it releases the folder.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

/// Make `out` ready for a run and lock it: refuse a folder that holds a run unless `resume`
/// (continue it) or `overwrite` (move the old run to `<out>.old-N` first, deleting nothing);
/// refuse a folder another process holds, naming its PID.
pub fn prepare(out: &Path, resume: bool, overwrite: bool) -> anyhow::Result<RunLock> {
    if out.exists() && !out.is_dir() {
        bail!("--out {} is a file, not a folder: choose another --out", out.display());
    }
    if resume {
        if !holds_run(out) {
            bail!(
                "--resume: {} holds no run (no {}); train without --resume to start one there",
                out.display(),
                out.join("checkpoints").join("last.safetensors").display()
            );
        }
        let held = lock(out)?;
        remove_stale_temporaries(out);
        return Ok(held);
    }
    if holds_run(out) {
        if !overwrite {
            bail!(
                "{} already holds a run; continue it with --resume, start afresh with --overwrite (the old run \
                 is moved aside, not deleted), or choose another --out",
                out.display()
            );
        }
        let held = lock(out)?; // nobody else may be writing it while it moves
        let aside = aside_name(out);
        std::fs::rename(out, &aside)
            .with_context(|| format!("moving the old run {} aside to {}", out.display(), aside.display()))?;
        drop(held);
        eprintln!("moved the old run {} to {}", out.display(), aside.display());
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating the run folder {}", out.display()))?;
    lock(out)
}

/// Remove the `.tmp-*` files that a writer killed mid-write (SIGKILL, power loss) left in the
/// run folder and its checkpoint folders. Called with the run's lock held: no live writer owns
/// them.
fn remove_stale_temporaries(out: &Path) {
    for dir in [out.to_path_buf(), out.join("checkpoints"), out.join("checkpoints").join("top")] {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let stale = entry.file_name().to_string_lossy().starts_with(".tmp-")
                && entry.file_type().is_ok_and(|t| t.is_file());
            if stale {
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => tracing::info!("removed {}, left by an interrupted write", entry.path().display()),
                    Err(e) => tracing::warn!("could not remove {}: {e}", entry.path().display()),
                }
            }
        }
    }
}

/// `<out>.old-N` for the first free N.
fn aside_name(out: &Path) -> PathBuf {
    let mut n = 1;
    loop {
        let mut name = out.as_os_str().to_owned();
        name.push(format!(".old-{n}"));
        let candidate = PathBuf::from(name);
        if !candidate.exists() {
            return candidate;
        }
        n += 1;
    }
}

fn lock(dir: &Path) -> anyhow::Result<RunLock> {
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("opening the run lock {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let who = if holder.is_empty() { "another process".to_owned() } else { format!("process {holder}") };
            bail!(
                "{} is in use by {who} (another `fewshot train`); wait for it to finish or choose another --out",
                dir.display()
            );
        }
        Err(TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("locking {}", path.display()));
        }
    }
    file.set_len(0)?;
    file.rewind()?;
    write!(file, "{}", std::process::id())?;
    file.flush()?;
    Ok(RunLock { _file: file })
}
