//! `fewshot train`: meta-train from a config, with a checkpoint on SIGINT/SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::settings::Settings;
use crate::signals::StopSignal;
use crate::train::{TrainOptions, stderr_is_terminal, train};

/// `fewshot train`'s arguments.
#[derive(Debug, Clone)]
pub struct TrainArgs {
    /// The config file.
    pub config: PathBuf,
    /// `--set key=value` overrides, in order.
    pub overrides: Vec<String>,
    /// The run folder (default `runs/<name>`).
    pub out: Option<PathBuf>,
    /// Continue the run in `out`.
    pub resume: bool,
    /// Move a finished run in `out` aside first.
    pub overwrite: bool,
    /// The run's seed (as `--set seed=N`).
    pub seed: Option<u64>,
}

/// Run `fewshot train` on `threads` threads.
pub fn run(args: TrainArgs, threads: usize) -> anyhow::Result<ExitCode> {
    let TrainArgs { config, mut overrides, out, resume, overwrite, seed } = args;
    if let Some(seed) = seed {
        overrides.push(format!("seed={seed}"));
    }
    let mut settings = Settings::load(&config, &overrides)?;
    crate::budget::check(&crate::budget::training(&settings, threads), crate::budget::available())?;
    let out = out.unwrap_or_else(|| PathBuf::from("runs").join(&settings.config.name));
    let stop = StopSignal::install()?;
    let mut data = settings.data.load()?;
    if settings.data.normalize == crate::settings::Normalization::Measure {
        settings = crate::train::measure_normalization(settings, &mut data)?;
    }
    let options = TrainOptions { out: out.clone(), resume, overwrite, progress: stderr_is_terminal() };
    let summary = train(&settings, &data, &options, &stop)?;
    if !crate::ranks::is_writer() {
        return Ok(match summary.interrupted {
            Some(signal) => ExitCode::from(signal.exit_code()),
            None => ExitCode::SUCCESS,
        });
    }
    let best = summary.best_val.map(|b| format!("{b:.4}")).unwrap_or_else(|| "n/a".into());
    if let Some(signal) = summary.interrupted {
        eprintln!(
            "{} after {} steps: wrote the last checkpoint; continue with --resume --out {}",
            signal.name(),
            summary.steps,
            out.display()
        );
        return Ok(ExitCode::from(signal.exit_code()));
    }
    if resume && summary.trained == 0 {
        eprintln!(
            "nothing to train: the run in {} is at step {}, and train.steps = {}; raise train.steps \
                 (--set train.steps=N) to continue it; best validation accuracy {best}",
            out.display(),
            summary.steps,
            settings.schedule.steps
        );
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("trained {} steps; best validation accuracy {best}; outputs in {}", summary.steps, out.display());
    if crate::ranks::size() > 1 {
        let (exchanges, wall) = (fewshot_meta::distributed::time_in_exchanges().as_secs_f64(), summary.wall_s);
        eprintln!(
            "{} ranks: rank 0 spent {exchanges:.2} s of {wall:.1} s ({:.1}%) in exchanges with the others \
             (waiting for slower ranks included)",
            crate::ranks::size(),
            100.0 * exchanges / wall.max(1e-9)
        );
    }
    Ok(ExitCode::SUCCESS)
}
