//! The bodies of `fewshot`'s subcommands, one module each; `main.rs` parses the command line,
//! sets the threads and dispatches here.

pub mod config;
pub mod eval;
pub mod export;
pub mod predict;
pub mod train;

use std::path::{Path, PathBuf};

use anyhow::bail;

use crate::settings::Settings;

/// Refuse `n_way`-way tasks for a model whose head has a fixed number of classes other than
/// `n_way`; `what` says where the tasks come from ("the episodes are", "DIR holds").
pub(crate) fn check_n_way(settings: &Settings, n_way: usize, checkpoint: &Path, what: &str) -> anyhow::Result<()> {
    let trained = settings.episodes.eval.n_way;
    if n_way != trained && !settings.evaluation.any_way() {
        bail!(
            "{} is a {trained}-way model and {what} {n_way}-way: use {trained}-way tasks (a model trained with \
             train.head_init = \"zero\", \"shared\" or \"prototypes\", or a protonet, takes any number of \
             classes)",
            checkpoint.display()
        );
    }
    Ok(())
}

/// Refuse an `--out` that is one of the command's inputs (the same file after resolving links,
/// or the manifest `<input>.json` beside it) or lies among the images of its task folder
/// `within` (`--tasks`: its `support` and `query` folders): writing it would replace or join
/// what the command reads. `-` (standard output) is never an input.
pub(crate) fn refuse_to_overwrite_inputs(
    out: &Path,
    inputs: &[(&Path, &str)],
    within: Option<&Path>,
) -> anyhow::Result<()> {
    if out.as_os_str() == "-" {
        return Ok(());
    }
    // The path `out` will be written at: through a symlink, under a resolved folder.
    let resolve = |p: &Path| -> Option<PathBuf> {
        std::fs::canonicalize(p).ok().or_else(|| {
            let parent = match p.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            Some(std::fs::canonicalize(parent).ok()?.join(p.file_name()?))
        })
    };
    let Some(target) = resolve(out) else { return Ok(()) };
    for (input, what) in inputs {
        let Some(input) = resolve(input) else { continue };
        let mut manifest = input.clone().into_os_string();
        manifest.push(".json");
        if target == input || target.as_os_str() == manifest {
            bail!(
                "--out {} is {what} (or its manifest): writing there would replace it; give another file",
                out.display()
            );
        }
    }
    if let Some(folder) = within.and_then(|f| std::fs::canonicalize(f).ok())
        && ["support", "query"].iter().any(|part| target.starts_with(folder.join(part)))
    {
        bail!(
            "--out {} is inside {}'s support or query folders: the predictions would land among \
             (or over) the images it reads; write them elsewhere",
            out.display(),
            folder.display()
        );
    }
    Ok(())
}
