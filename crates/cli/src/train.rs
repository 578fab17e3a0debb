//! `fewshot train`: meta-training (or the transfer baseline) with validation, metrics,
//! atomic checkpoints, resume and Ctrl-C handling.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, bail};
use candle_core::{DType, Device, Tensor, Var};
use fewshot_meta::{Adam, InnerLoop, Maml, Order};
use fewshot_model::{ConvNetConfig, ParamMap};
use fewshot_tasks::{EpisodeSet, Sampler, TaskAugment};
use rand::Rng;

use crate::checkpoint::{CHECKPOINT_FORMAT, Checkpoint, State};
use crate::config::{Config, Method, TaskRotationKind};
use crate::evaluate::{eval_params, evaluate, splits, stream_rng, streams};
use crate::omniglot::Omniglot;

/// Options of one training run beyond its config.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Output directory (`runs/<name>` by default).
    pub out: PathBuf,
    /// Continue from `<out>/checkpoints/last.safetensors`.
    pub resume: bool,
    /// Show a progress bar (otherwise plain log lines).
    pub progress: bool,
}

/// What a finished (or interrupted) run reports.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// Steps completed.
    pub steps: usize,
    /// Best validation accuracy.
    pub best_val: Option<f64>,
    /// Whether Ctrl-C stopped it early.
    pub interrupted: bool,
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

/// The learner being trained: MAML-family or the transfer baseline.
enum Learner {
    Maml(Box<Maml>),
    Transfer { net: ConvNetConfig, params: std::collections::BTreeMap<String, Var>, adam: Adam },
}

impl Learner {
    fn params(&self) -> ParamMap {
        match self {
            Learner::Maml(m) => m.params(),
            Learner::Transfer { params, .. } => {
                params.iter().map(|(k, v)| (k.clone(), v.as_tensor().detach())).collect()
            }
        }
    }

    fn adam(&mut self) -> &mut Adam {
        match self {
            Learner::Maml(m) => &mut m.optimizer,
            Learner::Transfer { adam, .. } => adam,
        }
    }
}

/// Train as `config` says; returns when done, interrupted, or on error (the last good
/// checkpoint stays on disk in every case).
pub fn train(
    config: &Config,
    data: &Omniglot,
    options: &TrainOptions,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<TrainSummary> {
    let device = Device::Cpu;
    let splits = splits(config, data)?;
    let spec = config.spec();
    let mut sampler = Sampler::new(splits.train.clone(), spec).context("episodes vs the meta-train pool")?;
    sampler.rotate_classes = config.augment.class_rotation;
    sampler.task_augment = match config.augment.task_rotation {
        TaskRotationKind::None => TaskAugment::None,
        TaskRotationKind::Quarter => TaskAugment::QuarterTurn { p: config.augment.task_rotation_p },
        TaskRotationKind::Angle => TaskAugment::Angle { p: config.augment.task_rotation_p },
    };
    let val_seed = stream_rng(config.seed, streams::VALIDATION, 0).random();
    let validation =
        EpisodeSet::generate(splits.validation.clone(), spec, config.train.val_episodes, val_seed, "validation")
            .context("episodes vs the validation pool")?;

    let t = &config.train;
    let n_out = match t.method {
        Method::Transfer => splits.train.len(),
        _ => spec.n_way,
    };
    let net = config.net(n_out);
    let init_seed = stream_rng(config.seed, streams::INIT, 0).random();
    let initial = fewshot_model::init(&net, init_seed, DType::F32, &device)?;
    let mut learner = match t.method {
        Method::Maml | Method::Fomaml => {
            let order = if t.method == Method::Maml { Order::Second } else { Order::First };
            let inner = InnerLoop { inner_lr: t.inner_lr, steps: t.inner_steps, order };
            let mut maml = Maml::new(net, &initial, inner, t.meta_lr)?;
            maml.task_chunk = t.task_chunk;
            Learner::Maml(Box::new(maml))
        }
        Method::Transfer => Learner::Transfer {
            net,
            params: initial
                .iter()
                .map(|(k, v)| Ok((k.clone(), Var::from_tensor(v)?)))
                .collect::<anyhow::Result<_>>()?,
            adam: Adam::new(t.meta_lr),
        },
    };

    let ckpt_dir = options.out.join("checkpoints");
    let last_path = ckpt_dir.join("last.safetensors");
    let best_path = ckpt_dir.join("best.safetensors");
    let mut step = 0usize;
    let mut best_val: Option<f64> = None;
    let metrics_path = options.out.join("metrics.jsonl");
    if options.resume {
        let ckpt = Checkpoint::load(&last_path, &device)
            .with_context(|| format!("--resume needs {}; train without --resume first", last_path.display()))?;
        let mut saved = ckpt.config(&last_path)?;
        // Extending a run (more steps) is a resume; anything else is a different run.
        saved.train.steps = config.train.steps;
        if saved != *config {
            bail!(
                "{} was written with another config; resume with the same config (see {}) or start a new --out",
                last_path.display(),
                options.out.join("config.toml").display()
            );
        }
        set_params(&mut learner, &ckpt.params)?;
        let adam = learner.adam();
        adam.m = ckpt.adam_m;
        adam.v = ckpt.adam_v;
        adam.step = ckpt.state.adam_step;
        step = ckpt.state.step;
        best_val = ckpt.state.best_val;
        truncate_metrics(&metrics_path, step)?;
        tracing::info!("resumed from {} at step {step}", last_path.display());
    } else {
        std::fs::create_dir_all(&options.out).with_context(|| format!("creating {}", options.out.display()))?;
        write_run_files(config, &options.out)?;
        omniglot_data::write_atomic(&metrics_path, b"")?;
    }

    let mut metrics = std::fs::OpenOptions::new()
        .append(true)
        .open(&metrics_path)
        .with_context(|| format!("opening {}", metrics_path.display()))?;
    let bar =
        if options.progress { indicatif::ProgressBar::new(t.steps as u64) } else { indicatif::ProgressBar::hidden() };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} step {pos}/{len} {msg} [eta {eta}]")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_position(step as u64);
    let start = Instant::now();
    let first_step = step;
    let checkpoint = |learner: &mut Learner, step: usize, best_val: Option<f64>, val_acc: Option<f64>, path: &Path| {
        let adam = learner.adam().clone();
        Checkpoint {
            params: learner.params(),
            adam_m: adam.m,
            adam_v: adam.v,
            state: State {
                format: CHECKPOINT_FORMAT.to_owned(),
                step,
                tasks_seen: step * t.meta_batch_size,
                adam_step: adam.step,
                best_val,
                val_acc,
                config: config.to_toml(),
            },
        }
        .save(path)
        .with_context(|| format!("writing checkpoint {}", path.display()))
    };
    let mut interrupted = false;
    while step < t.steps {
        if stop.load(Ordering::SeqCst) {
            interrupted = true;
            break;
        }
        let mut rng = stream_rng(config.seed, streams::TRAIN, step as u64);
        let stats = match &mut learner {
            Learner::Maml(maml) => {
                let episodes: Vec<_> = (0..t.meta_batch_size).map(|_| sampler.sample(&mut rng)).collect();
                let batch = data.batch(&episodes, DType::F32, &device)?;
                maml.meta_step(&batch).map_err(|e| diverged(e, &last_path))?
            }
            Learner::Transfer { net, params, adam } => transfer_step(
                net,
                params,
                adam,
                data,
                &splits.train,
                t.meta_batch_size * spec.n_way * (spec.k_shot + spec.n_query),
                &mut rng,
            )
            .map_err(|e| diverged(e, &last_path))?,
        };
        step += 1;
        bar.set_position(step as u64);
        let validate_now = step % t.val_every == 0 || step == t.steps;
        let val = if validate_now {
            let params = eval_params(config, &learner.params(), spec.n_way)?;
            Some(evaluate(
                &config.net(spec.n_way),
                &params,
                data,
                &validation.episodes,
                t.inner_lr,
                t.eval_inner_steps,
            )?)
        } else {
            None
        };
        if let Some(v) = val
            && best_val.is_none_or(|b| v.mean > b)
        {
            best_val = Some(v.mean);
            checkpoint(&mut learner, step, best_val, Some(v.mean), &best_path)?;
        }
        if step % t.checkpoint_every == 0 || step == t.steps {
            checkpoint(&mut learner, step, best_val, val.map(|v| v.mean), &last_path)?;
        }
        if step % t.log_every == 0 || val.is_some() || step == t.steps {
            let line = Metrics {
                step,
                tasks_seen: step * t.meta_batch_size,
                train_loss: stats.loss,
                train_acc: stats.accuracy,
                val_acc: val.map(|v| v.mean),
                val_ci95: val.map(|v| v.ci95),
                wall_s: start.elapsed().as_secs_f64(),
            };
            writeln!(metrics, "{}", serde_json::to_string(&line)?)
                .with_context(|| format!("writing {}", metrics_path.display()))?;
            let msg = format!(
                "loss {:.3} acc {:.3}{}",
                stats.loss,
                stats.accuracy,
                best_val.map(|b| format!(" best val {b:.3}")).unwrap_or_default()
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
    if interrupted {
        checkpoint(&mut learner, step, best_val, None, &last_path)?;
        bar.abandon_with_message(format!("interrupted at step {step}; wrote {}", last_path.display()));
    } else {
        bar.finish();
    }
    Ok(TrainSummary { steps: step, best_val, interrupted })
}

fn diverged(e: impl Into<anyhow::Error>, last: &Path) -> anyhow::Error {
    e.into().context(format!("training stopped; the last good checkpoint is {}", last.display()))
}

fn set_params(learner: &mut Learner, params: &ParamMap) -> anyhow::Result<()> {
    match learner {
        Learner::Maml(m) => Ok(m.set_params(params)?),
        Learner::Transfer { net, params: vars, .. } => {
            fewshot_model::check_params(net, params)?;
            for (k, v) in vars.iter() {
                v.set(&params[k])?;
            }
            Ok(())
        }
    }
}

/// One supervised step of the transfer baseline: a batch of `n_images` random drawings of
/// meta-train classes, labelled by their index in the pool.
fn transfer_step(
    net: &ConvNetConfig,
    params: &std::collections::BTreeMap<String, Var>,
    adam: &mut Adam,
    data: &Omniglot,
    pool: &[fewshot_tasks::Class],
    n_images: usize,
    rng: &mut impl Rng,
) -> anyhow::Result<fewshot_meta::StepStats> {
    let size = data.image_size();
    let mut pixels = Vec::with_capacity(n_images * size * size);
    let mut labels = Vec::with_capacity(n_images);
    for _ in 0..n_images {
        let label = rng.random_range(0..pool.len());
        let drawing = rng.random_range(0..fewshot_tasks::DRAWINGS);
        pixels.extend(data.image(pool[label].character, drawing).iter().map(|&p| fewshot_tasks::ink_intensity(p)));
        labels.push(label as u32);
    }
    let images = Tensor::from_vec(pixels, (1, n_images, 1, size, size), &Device::Cpu)?;
    let labels = Tensor::from_vec(labels, (1, n_images), &Device::Cpu)?;
    let theta: ParamMap = params.iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect();
    let logits = fewshot_model::forward(net, &fewshot_model::expand(&theta, 1)?, &images)?;
    let loss = fewshot_model::cross_entropy(&logits, &labels)?.mean_all()?;
    let stats = fewshot_meta::StepStats {
        loss: loss.to_scalar::<f32>()?,
        accuracy: fewshot_model::accuracy(&logits, &labels)?.mean_all()?.to_scalar::<f32>()?,
    };
    if !stats.loss.is_finite() {
        return Err(fewshot_meta::Error::NonFinite(stats.loss).into());
    }
    let grads = fewshot_meta::backward(&loss, fewshot_meta::GradMode::Detach)?;
    let grads: ParamMap =
        params.iter().filter_map(|(k, v)| grads.get(v.as_tensor()).map(|g| (k.clone(), g.detach()))).collect();
    adam.step(params, &grads)?;
    Ok(stats)
}

/// `config.toml` (resolved) and `run.json` (seed, git revision, command line) beside the run.
fn write_run_files(config: &Config, out: &Path) -> anyhow::Result<()> {
    omniglot_data::write_atomic(&out.join("config.toml"), config.to_toml().as_bytes())?;
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
        "seed": config.seed,
        "git_revision": git,
        "git_dirty": dirty,
        "command": std::env::args().collect::<Vec<_>>(),
        "version": env!("CARGO_PKG_VERSION"),
    });
    omniglot_data::write_atomic(&out.join("run.json"), serde_json::to_string_pretty(&run)?.as_bytes())?;
    Ok(())
}

/// Drop metrics lines past `step` (written after the checkpoint we resume from).
fn truncate_metrics(path: &Path, step: usize) -> anyhow::Result<()> {
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
    Ok(())
}

/// Install a Ctrl-C handler that asks the loop to stop after the current step.
pub fn ctrl_c_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    if let Err(e) = ctrlc::set_handler(move || {
        if f.swap(true, Ordering::SeqCst) {
            std::process::exit(130); // a second Ctrl-C: leave at once
        }
        eprintln!("\nCtrl-C: finishing this step and writing the last checkpoint (press again to quit now)");
    }) {
        tracing::warn!("cannot install a Ctrl-C handler: {e}");
    }
    flag
}

/// Whether stderr is a terminal (progress bar) or not (log lines).
pub fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}
