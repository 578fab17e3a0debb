//! `fewshot train`: meta-training (or the transfer baseline) with validation, metrics,
//! atomic checkpoints, resume and Ctrl-C handling.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use candle_core::{DType, Device};
use fewshot_meta::{Accuracy, Learner, Maml, MetaParams, Supervised, TaskBatch};
use fewshot_tasks::{Class, Episode, EpisodePixels, EpisodeSpec, Example, Sampler};
use rand::Rng;

use crate::checkpoint::{CHECKPOINT_FORMAT, Checkpoint, State};
use crate::config::Method;
use crate::data::Data;
use crate::episodes::{splits, validation_episodes};
use crate::evaluate::evaluate;
use crate::seeds::{stream_rng, streams};
use crate::settings::{Episodes, LearnerSettings, Settings};
use crate::signals::{Signal, StopSignal};

/// Options of one training run beyond its config.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Output directory (`runs/<name>` by default).
    pub out: PathBuf,
    /// Continue from `<out>/checkpoints/last.safetensors`.
    pub resume: bool,
    /// Start afresh in a folder that holds a run, moving the old run aside first.
    pub overwrite: bool,
    /// Show a progress bar (otherwise plain log lines).
    pub progress: bool,
}

/// What a finished (or interrupted) run reports.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// Steps completed.
    pub steps: usize,
    /// Steps this call trained (0 when a resumed run was already at or past `train.steps`).
    pub trained: usize,
    /// Best validation accuracy.
    pub best_val: Option<f64>,
    /// The signal that stopped it early, if one did.
    pub interrupted: Option<Signal>,
    /// Seconds this call spent in its training loop.
    pub wall_s: f64,
}

/// One line of `metrics.jsonl`.
#[derive(Debug, serde::Serialize)]
struct Metrics {
    step: usize,
    tasks_seen: usize,
    train_loss: f32,
    train_acc: f32,
    val_acc: Option<f64>,
    val_ci95: Option<f64>,
    wall_s: f64,
}

/// Train as `settings` say; returns when done, interrupted, or on error (the last good
/// checkpoint stays on disk in every case).
///
/// MAML and first-order MAML train a [`Maml`] on episodes; the baselines a [`Supervised`]
/// learner: the transfer baseline on chunks of images labelled by their class in the
/// meta-train pool, the course's task classifier on each episode's support set with its
/// task-local labels (see [`training_batch`]).
pub fn train(
    settings: &Settings,
    data: &Data,
    options: &TrainOptions,
    stop: &StopSignal,
) -> anyhow::Result<TrainSummary> {
    let (seed, t) = (settings.seed, &settings.schedule);
    let splits = splits(&settings.episodes, seed, data)?;
    let sampler = sampler(&settings.episodes, &splits.train, data)?;
    let validation = validation_episodes(&settings.episodes, seed, data, t.val_episodes)
        .context("episodes vs the validation pool")?;
    let mut learner = learner(settings, splits.train.len())?;
    // Under MPI, rank 0 alone writes (see `crate::ranks`); the others read what they resume.
    let writer = crate::ranks::is_writer();
    let mut run = Run::new(settings, &options.out, writer);
    let _lock =
        if writer { Some(crate::run_dir::prepare(&options.out, options.resume, options.overwrite)?) } else { None };
    if options.resume {
        run.resume(learner.as_mut())?;
    } else if writer {
        write_run_files(settings, &options.out)?;
        omniglot_data::write_atomic(&run.metrics_path, b"")?;
    }
    ranks_agree(settings, learner.as_ref(), run.step)?;
    let mut metrics = if writer {
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&run.metrics_path)
            .with_context(|| format!("opening {}", run.metrics_path.display()))?;
        Some(file)
    } else {
        None
    };
    let bar = progress_bar(options.progress && writer, t.steps, run.step);
    let start = Instant::now();
    let first_step = run.step;
    let log_points = log_spaced(t.steps, t.val_log_points);
    let mut interrupted = None;
    while run.step < t.steps {
        if let Some(signal) = agreed_stop(stop.received())? {
            interrupted = Some(signal);
            break;
        }
        let mut rng = stream_rng(seed, streams::TRAIN, run.step as u64);
        let batch = training_batch(
            settings.method,
            &settings.episodes.train,
            t.meta_batch_size,
            data,
            &sampler,
            &splits.train,
            &mut rng,
        )?;
        let stats = learner.step(&batch).map_err(|e| run.diverged(e))?;
        run.step += 1;
        let step = run.step;
        bar.set_position(step as u64);
        let validate_now = step.is_multiple_of(t.val_every) || step == t.steps || log_points.contains(&step);
        let val =
            if validate_now { Some(validate(settings, data, learner.as_ref(), &validation.episodes)?) } else { None };
        if let Some(v) = val
            && run.best_val.is_none_or(|b| v.mean > b)
        {
            run.best_val = Some(v.mean);
            run.checkpoint(learner.as_ref(), Some(v.mean), &run.best_path)?;
        }
        if let Some(v) = val {
            run.keep_if_top(learner.as_ref(), v.mean)?;
        }
        if step.is_multiple_of(t.checkpoint_every) || step == t.steps {
            run.checkpoint(learner.as_ref(), val.map(|v| v.mean), &run.last_path)?;
            run.last_saved = Some(step);
        }
        if let Some(metrics) = metrics.as_mut()
            && (step.is_multiple_of(t.log_every) || val.is_some() || step == t.steps)
        {
            let line = Metrics {
                step,
                tasks_seen: step * t.meta_batch_size,
                train_loss: stats.loss,
                train_acc: stats.accuracy,
                val_acc: val.map(|v| v.mean),
                val_ci95: val.map(|v| v.ci95),
                wall_s: run.wall_before + start.elapsed().as_secs_f64(),
            };
            writeln!(metrics, "{}", serde_json::to_string(&line)?)
                .with_context(|| format!("writing {}", run.metrics_path.display()))?;
            let msg = format!(
                "loss {:.3} acc {:.3}{}",
                stats.loss,
                stats.accuracy,
                run.best_val.map(|b| format!(" best val {b:.3}")).unwrap_or_default()
            );
            let rate = ((step - first_step) * t.meta_batch_size) as f64 / start.elapsed().as_secs_f64().max(1e-9);
            if options.progress {
                bar.set_message(format!("{msg} {rate:.1} tasks/s"));
            } else {
                eprintln!(
                    "step {step}/{}: {msg}{} ({rate:.1} tasks/s)",
                    t.steps,
                    val.map(|v| format!(" val {v}")).unwrap_or_default()
                );
            }
        }
    }
    if interrupted.is_some() {
        run.checkpoint(learner.as_ref(), None, &run.last_path)?;
        bar.abandon_with_message(format!("interrupted at step {}; wrote {}", run.step, run.last_path.display()));
    } else {
        bar.finish();
    }
    Ok(TrainSummary {
        steps: run.step,
        trained: run.step - first_step,
        best_val: run.best_val,
        interrupted,
        wall_s: start.elapsed().as_secs_f64(),
    })
}

/// Under MPI: the signal that stops the job, agreed by all ranks (the strongest any rank has
/// seen), so that every rank stops after the same step. Alone: `mine`.
fn agreed_stop(mine: Option<Signal>) -> anyhow::Result<Option<Signal>> {
    if crate::ranks::size() == 1 {
        return Ok(mine);
    }
    let code = match mine {
        None => 0,
        Some(Signal::Interrupt) => 1,
        Some(Signal::Terminate) => 2,
    };
    Ok(match fewshot_meta::distributed::max(code)? {
        0 => None,
        1 => Some(Signal::Interrupt),
        _ => Some(Signal::Terminate),
    })
}

/// Under MPI: check that every rank starts from the same config, step and parameters (they
/// read them from their own copies of the config and the run folder), naming the first rank
/// that differs from rank 0. Alone: nothing to check.
fn ranks_agree(settings: &Settings, learner: &dyn Learner, step: usize) -> anyhow::Result<()> {
    use std::hash::{Hash, Hasher};
    if crate::ranks::size() == 1 {
        return Ok(());
    }
    // The same binary on every rank: std's SipHash with its fixed keys gives the same digest.
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new();
    settings.config.to_toml().hash(&mut h);
    (step, learner.optimizer().step).hash(&mut h);
    for (name, t) in learner.params().to_map() {
        name.hash(&mut h);
        let values = t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        values.iter().for_each(|v| v.to_bits().hash(&mut h));
    }
    let digests = fewshot_meta::distributed::gather_u64(h.finish() >> 11)?;
    if let Some(rank) = digests.iter().position(|&d| d != digests[0]) {
        bail!(
            "rank {rank} starts from another config, step or parameters than rank 0: every rank must read \
             the same config file and run folder (a file system shared by the machines)"
        );
    }
    Ok(())
}

/// The meta-train episode sampler, with its augmentation.
fn sampler(episodes: &Episodes, pool: &[Class], data: &Data) -> anyhow::Result<Sampler> {
    let mut sampler = data.sampler(pool, episodes.train).context("episodes vs the meta-train pool")?;
    sampler.rotate_classes = episodes.rotate_classes;
    sampler.task_augment = episodes.task_augment;
    sampler.augment_images = episodes.augment_images;
    Ok(sampler)
}

/// `data.normalize` without `data.mean` and `data.std`: measure them on the meta-train
/// classes' images, write them into the config (so the run's `config.toml` and every checkpoint
/// carry them, and `eval` and `predict` apply them) and into `data`. The measurement is a
/// function of the folder and the seed, so a resumed run measures the same numbers.
pub fn measure_normalization(settings: Settings, data: &mut Data) -> anyhow::Result<Settings> {
    let pool = splits(&settings.episodes, settings.seed, data)?.train;
    let Some(measured) = data.measure_normalization(&pool) else {
        bail!("data.normalize: only a folder's images (data.folder) are normalised");
    };
    let mut config = settings.config;
    config.data.mean = Some(measured.mean.clone());
    config.data.std = Some(measured.std.clone());
    eprintln!(
        "data.normalize: per-channel mean {:?}, standard deviation {:?} over the {} training classes",
        measured.mean,
        measured.std,
        pool.len()
    );
    data.set_normalization(measured);
    Settings::resolve(config)
}

/// The settings' learner at its seeded initialisation; the transfer baseline's head has one
/// output per class of the meta-train pool (`pool_size`).
fn learner(settings: &Settings, pool_size: usize) -> anyhow::Result<Box<dyn Learner>> {
    let n_out = match settings.method {
        Method::Transfer => pool_size,
        _ => settings.episodes.train.n_way,
    };
    let net = settings.net.net(n_out);
    let init_seed = stream_rng(settings.seed, streams::INIT, 0).random();
    let mut initial = MetaParams::from(fewshot_model::init(&net, init_seed, DType::F32, &Device::Cpu)?);
    Ok(match settings.learner {
        LearnerSettings::Maml { maml, extras } => {
            let inner = maml.inner;
            if extras.per_step_bn {
                initial.bn_steps = Some(fewshot_meta::init_bn_steps(&net, &initial.net, inner.steps)?);
            }
            if extras.learned_inner_lr {
                let rates = fewshot_meta::init_rates(&net, inner.steps, inner.inner_lr, DType::F32, &Device::Cpu)?;
                initial.rates = Some(rates);
            }
            Box::new(Maml::new(net, &initial, maml)?)
        }
        LearnerSettings::Supervised { outer, engine } => Box::new(Supervised::new(net, &initial, outer, engine)?),
    })
}

/// Validation accuracy of the learner's current parameters on the fixed validation episodes.
fn validate(settings: &Settings, data: &Data, learner: &dyn Learner, episodes: &[Episode]) -> anyhow::Result<Accuracy> {
    let n_way = settings.episodes.eval.n_way;
    let e = &settings.evaluation;
    let params = e.task_params(&settings.net, learner.params(), n_way)?;
    evaluate(e.engine, &settings.net.net(n_way), &params, data, episodes.iter().cloned(), &e.adaptation)
}

fn progress_bar(show: bool, steps: usize, at: usize) -> indicatif::ProgressBar {
    let bar = if show { indicatif::ProgressBar::new(steps as u64) } else { indicatif::ProgressBar::hidden() };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} step {pos}/{len} {msg} [eta {eta}]")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_position(at as u64);
    bar
}

/// A run's files and where it stands: its step, best validation accuracy, last checkpoint.
struct Run<'a> {
    settings: &'a Settings,
    last_path: PathBuf,
    best_path: PathBuf,
    /// `checkpoints/top/`: the `train.keep_best` best validations.
    top_dir: PathBuf,
    metrics_path: PathBuf,
    out: PathBuf,
    step: usize,
    best_val: Option<f64>,
    /// The step of the last checkpoint on disk.
    last_saved: Option<usize>,
    /// Wall time of the run before this process (when resumed).
    wall_before: f64,
    /// Whether this process writes the run's files (rank 0 under MPI; see `crate::ranks`).
    writer: bool,
}

impl<'a> Run<'a> {
    fn new(settings: &'a Settings, out: &Path, writer: bool) -> Run<'a> {
        let checkpoints = out.join("checkpoints");
        Run {
            settings,
            last_path: checkpoints.join("last.safetensors"),
            best_path: checkpoints.join("best.safetensors"),
            top_dir: checkpoints.join("top"),
            metrics_path: out.join("metrics.jsonl"),
            out: out.to_owned(),
            step: 0,
            best_val: None,
            last_saved: None,
            wall_before: 0.0,
            writer,
        }
    }

    /// Continue from the last checkpoint: the learner's parameters and optimiser, the step,
    /// the best validation accuracy; metrics written after that checkpoint are dropped.
    fn resume(&mut self, learner: &mut dyn Learner) -> anyhow::Result<()> {
        let last = &self.last_path;
        let ckpt = Checkpoint::load(last, &Device::Cpu).with_context(|| {
            format!(
                "--resume needs a readable {}; to keep this run's other files and start again, \
                 train with --overwrite (the old run is moved aside, not deleted) or a new --out",
                last.display()
            )
        })?;
        let mut saved = ckpt.config(last)?;
        // Extending a run (more steps) or keeping more of its best checkpoints is a resume;
        // anything else is a different run.
        let config = &self.settings.config;
        saved.train.steps = config.train.steps;
        saved.train.keep_best = config.train.keep_best;
        if saved != *config {
            bail!(
                "{} was written with another config ({}); resume with the same config (see {}) or start a new --out",
                last.display(),
                saved.differences(config).join(", "),
                self.out.join("config.toml").display()
            );
        }
        if ckpt.state.step > 0 && ckpt.adam_m.is_empty() {
            bail!(
                "{} holds parameters only (an exported model, see `fewshot export`), without the optimiser \
                 state a resume needs to continue the run exactly; evaluate it with `fewshot eval`, or train \
                 with --overwrite (the old run is moved aside) or a new --out",
                last.display()
            );
        }
        learner.set_params(&MetaParams::from_map(learner.config(), &ckpt.params)?)?;
        let adam = learner.optimizer_mut();
        adam.m = ckpt.adam_m;
        adam.v = ckpt.adam_v;
        adam.step = ckpt.state.adam_step;
        self.step = ckpt.state.step;
        self.best_val = ckpt.state.best_val;
        self.last_saved = (self.step > 0).then_some(self.step);
        if !self.writer {
            return Ok(()); // rank 0 tidies the run folder
        }
        self.wall_before = truncate_metrics(&self.metrics_path, self.step)?;
        // Top checkpoints of steps after the resumed one belong to the abandoned stretch
        // (they come back, identical, when those steps are trained again).
        for kept in top_checkpoints(&self.top_dir)?.into_iter().filter(|k| k.step > self.step) {
            kept.remove()?;
        }
        tracing::info!("resumed from {} at step {}", last.display(), self.step);
        Ok(())
    }

    /// Save the learner's state at this step to `path` (atomically).
    fn checkpoint(&self, learner: &dyn Learner, val_acc: Option<f64>, path: &Path) -> anyhow::Result<()> {
        if !self.writer {
            return Ok(());
        }
        let adam = learner.optimizer().clone();
        Checkpoint {
            params: learner.params().to_map(),
            adam_m: adam.m,
            adam_v: adam.v,
            state: State {
                format: CHECKPOINT_FORMAT.to_owned(),
                step: self.step,
                tasks_seen: self.step * self.settings.schedule.meta_batch_size,
                adam_step: adam.step,
                best_val: self.best_val,
                val_acc,
                config: self.settings.config.to_toml(),
            },
        }
        .save(path)
        .with_context(|| format!("writing checkpoint {}", path.display()))
    }

    /// With `train.keep_best = K > 0`: write this step's checkpoint to `top/` when its
    /// validation `val` is among the K best kept there (ties keep the earlier step), and drop
    /// those that fall out.
    fn keep_if_top(&self, learner: &dyn Learner, val: f64) -> anyhow::Result<()> {
        let k = self.settings.schedule.keep_best;
        if k == 0 || !self.writer {
            return Ok(());
        }
        let mut kept = top_checkpoints(&self.top_dir)?;
        kept.retain(|c| c.step != self.step);
        if kept.len() >= k && kept.iter().all(|c| c.val >= val) {
            return Ok(());
        }
        let path = self.top_dir.join(format!("step-{:07}.safetensors", self.step));
        self.checkpoint(learner, Some(val), &path)?;
        kept.push(TopCheckpoint { step: self.step, val, path });
        kept.sort_by(|a, b| b.val.total_cmp(&a.val).then(a.step.cmp(&b.step)));
        for dropped in kept.into_iter().skip(k) {
            dropped.remove()?;
        }
        Ok(())
    }

    /// The error of a failed step, saying which checkpoint is the last good one.
    fn diverged(&self, e: impl Into<anyhow::Error>) -> anyhow::Error {
        let what = match self.last_saved {
            Some(step) => format!("the last good checkpoint is {} (step {step})", self.last_path.display()),
            None => "no checkpoint was written yet (the loss diverged before the first one)".to_owned(),
        };
        e.into().context(format!("training stopped; {what}"))
    }
}

/// A checkpoint kept under `checkpoints/top/`.
#[derive(Debug)]
struct TopCheckpoint {
    step: usize,
    val: f64,
    path: PathBuf,
}

impl TopCheckpoint {
    /// Delete the checkpoint and its manifest.
    fn remove(&self) -> anyhow::Result<()> {
        for p in [self.path.clone(), crate::checkpoint::manifest_path(&self.path)] {
            match std::fs::remove_file(&p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("removing {}", p.display()));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// The checkpoints in `dir` (`step-<N>.safetensors`) with their step and validation accuracy
/// from their manifests; files without a readable manifest are left alone and not listed.
fn top_checkpoints(dir: &Path) -> anyhow::Result<Vec<TopCheckpoint>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry.with_context(|| format!("listing {}", dir.display()))?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if !(name.starts_with("step-") && name.ends_with(".safetensors")) {
            continue;
        }
        let manifest = std::fs::read_to_string(crate::checkpoint::manifest_path(&path))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
        if let Some(m) = manifest
            && let (Some(step), Some(val)) = (m["step"].as_u64(), m["val_acc"].as_f64())
        {
            out.push(TopCheckpoint { step: step as usize, val, path });
        }
    }
    Ok(out)
}

/// The batch of step `rng` for `method` (see [`train`]): `tasks` tasks of shape `spec`.
fn training_batch(
    method: Method,
    spec: &EpisodeSpec,
    tasks: usize,
    data: &Data,
    sampler: &Sampler,
    pool: &[Class],
    rng: &mut impl Rng,
) -> anyhow::Result<TaskBatch> {
    match method {
        Method::Maml | Method::Fomaml | Method::Protonet => {
            let episodes: Vec<_> = (0..tasks).map(|_| sampler.sample(rng)).collect();
            data.batch(&episodes, DType::F32, &Device::Cpu)
        }
        Method::TaskClassifier => {
            let episodes: Vec<_> = (0..tasks).map(|_| sampler.sample(rng)).collect();
            let b = data.batch(&episodes, DType::F32, &Device::Cpu)?;
            Ok(TaskBatch { query_images: b.support_images.clone(), query_labels: b.support_labels.clone(), ..b })
        }
        Method::Transfer => {
            // As many images per step as an episode batch holds, in chunks of one episode's size
            // (each chunk normalised by its own batch statistics, as a task is), labelled by
            // their class's index in the pool.
            let chunk = spec.n_way * (spec.k_shot + spec.n_query);
            let sizes = data.sizes(pool);
            let pixels: Vec<EpisodePixels> = (0..tasks)
                .map(|_| {
                    let labels: Vec<u32> = (0..chunk).map(|_| rng.random_range(0..pool.len()) as u32).collect();
                    let examples = labels
                        .iter()
                        .map(|&l| Example {
                            class: pool[l as usize],
                            drawing: rng.random_range(
                                0..sizes.as_ref().map_or(fewshot_tasks::DRAWINGS, |s| s[l as usize] as usize),
                            ) as u32,
                            label: 0,
                        })
                        .collect();
                    let augment_seed = sampler.augment_images.then(|| rng.random::<u64>());
                    let episode = Episode {
                        n_way: pool.len(),
                        support: vec![],
                        query: examples,
                        task_rotation: None,
                        augment_seed,
                    };
                    let mut p = data.render(&episode);
                    p.query_labels = labels;
                    EpisodePixels { support: p.query.clone(), support_labels: p.query_labels.clone(), ..p }
                })
                .collect();
            Ok(TaskBatch::from_pixels(&pixels, DType::F32, &Device::Cpu)?)
        }
    }
}

/// About `n` log-spaced steps in `1..=steps` (1, 2, 3, 5, ...).
fn log_spaced(steps: usize, n: usize) -> Vec<usize> {
    if n == 0 || steps == 0 {
        return Vec::new();
    }
    let mut out: Vec<usize> = (0..n)
        .map(|i| {
            let f = if n == 1 { 1.0 } else { i as f64 / (n - 1) as f64 };
            ((steps as f64).powf(f).round() as usize).clamp(1, steps)
        })
        .collect();
    out.dedup();
    out
}

/// `config.toml` (resolved) and `run.json` (seed, git revision, command line) beside the run.
fn write_run_files(settings: &Settings, out: &Path) -> anyhow::Result<()> {
    omniglot_data::write_atomic(&out.join("config.toml"), settings.config.to_toml().as_bytes())?;
    let git = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    let dirty = std::process::Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| !o.stdout.is_empty());
    let run = serde_json::json!({
        "seed": settings.seed,
        "git_revision": git,
        "git_dirty": dirty,
        "command": std::env::args().collect::<Vec<_>>(),
        "version": env!("CARGO_PKG_VERSION"),
        "machine": crate::machine(),
    });
    omniglot_data::write_atomic(&out.join("run.json"), serde_json::to_string_pretty(&run)?.as_bytes())?;
    Ok(())
}

/// Drop metrics lines past `step` (written after the checkpoint we resume from); returns the
/// wall time the kept lines had reached, so that `wall_s` continues.
fn truncate_metrics(path: &Path, step: usize) -> anyhow::Result<f64> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s as usize <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    omniglot_data::write_atomic(path, kept.as_bytes())?;
    let wall = kept.lines().last().and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["wall_s"].as_f64());
    Ok(wall.unwrap_or(0.0))
}

/// Whether stderr is a terminal (progress bar) or not (log lines).
pub fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}
