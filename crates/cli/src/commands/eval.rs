//! `fewshot eval`: accuracy with a 95% interval on fixed or freshly drawn episodes, of one
//! checkpoint or an ensemble, at one or more inner-step counts.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use candle_core::Device;
use fewshot_tasks::{EpisodeSet, Protocol};

use super::check_n_way;
use crate::checkpoint::Checkpoint;
use crate::config::Config;
use crate::episodes::{Drawn, test_draw, validation_draw};
use crate::evaluate::{Member, evaluate, evaluate_ensemble};
use crate::settings::Settings;
use crate::stdout;

const DEFAULT_EPISODES: &str = "configs/episodes/course-test-5w1s1q-640.json";
const DEFAULT_EPISODES_TEXT: &str = include_str!("../../../../configs/episodes/course-test-5w1s1q-640.json");

/// `fewshot eval`'s arguments.
#[derive(Debug, Clone)]
pub struct EvalArgs {
    /// Checkpoint files, or folders of them (an ensemble when more than one).
    pub checkpoint: Vec<PathBuf>,
    /// An episode file.
    pub episodes: Option<PathBuf>,
    /// Fresh episodes of this protocol's test classes.
    pub protocol: Option<Protocol>,
    /// The run's own validation episodes.
    pub validation: bool,
    /// Number of fresh episodes.
    pub n: Option<usize>,
    /// Inner-step counts to evaluate at (empty: the config's).
    pub inner_steps: Vec<usize>,
    /// JSON lines instead of sentences.
    pub json: bool,
    /// Classes of fresh episodes (a model with a head for any number of classes).
    pub n_way: Option<usize>,
    /// Queries per class of fresh episodes.
    pub n_query: Option<usize>,
    /// Support images per class of fresh episodes.
    pub k_shot: Option<usize>,
    /// Draw the episodes from another folder's classes.
    pub folder: Option<FolderEval>,
}

/// `eval --folder DIR [--split S]`: episodes of another folder's classes.
#[derive(Debug, Clone)]
pub struct FolderEval {
    /// The folder of class folders.
    pub path: PathBuf,
    /// The split folder to draw from (default: test/ when there is one).
    pub split: Option<fewshot_images::Split>,
    /// Every class, whatever its split.
    pub all: bool,
}

/// Run `fewshot eval` on `threads` threads.
pub fn run(args: EvalArgs, threads: usize) -> anyhow::Result<ExitCode> {
    let EvalArgs { checkpoint, episodes, protocol, validation, n, inner_steps, json, n_way, n_query, k_shot, folder } =
        args;
    let paths = checkpoint_files(&checkpoint)?;
    let mut models = Vec::with_capacity(paths.len());
    for path in &paths {
        let ckpt = Checkpoint::load(path, &Device::Cpu)?;
        let settings = Settings::resolve(data_from_here(ckpt.config(path)?))
            .with_context(|| format!("config inside {}: invalid configuration", path.display()))?;
        models.push((path.clone(), ckpt, settings));
    }
    let (first, _, trained) = &models[0];
    let trained = trained.clone();
    for (path, _, other) in &models[1..] {
        let (a, b) = (&trained.config, &other.config);
        if b.episodes != a.episodes || b.model != a.model || b.data != a.data {
            bail!(
                "{} and {} were trained on different episodes, nets or data ({}): an ensemble \
                     needs checkpoints of one protocol and net",
                first.display(),
                path.display(),
                a.differences(b)
                    .into_iter()
                    .filter(|d| !d.starts_with("train.") && !d.starts_with("seed"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    if n == Some(0) {
        bail!("--n 0: give at least 1 episode");
    }
    // The settings that draw fresh episodes: the trained ones, or with --n-way classes and
    // --n-query queries per class.
    let mut settings = trained.clone();
    if n_way.is_some() || n_query.is_some() || k_shot.is_some() {
        if episodes.is_some() {
            bail!("--n-way, --k-shot and --n-query shape fresh episodes; an --episodes file has its own");
        }
        let what = [
            n_way.map(|n| format!("--n-way {n}")),
            k_shot.map(|n| format!("--k-shot {n}")),
            n_query.map(|n| format!("--n-query {n}")),
        ];
        settings = trained
            .with_eval_shape(n_way, k_shot, n_query)
            .with_context(|| what.into_iter().flatten().collect::<Vec<_>>().join(" "))?;
    }
    if let Some(f) = &folder {
        let spec = settings.episodes.eval;
        let cache_dir =
            settings.data.folder.as_ref().map_or_else(|| PathBuf::from("data/folders"), |s| s.cache_dir.clone());
        settings.data.folder = Some(crate::settings::FolderSource {
            path: f.path.clone(),
            cache_dir,
            fractions: crate::data::Fractions { train: 0.0, val: 0.0, test: 1.0 },
            skip_small_classes: true,
            need: spec.k_shot + spec.n_query,
        });
    }
    let spec = settings.episodes.eval;
    let shipped = (spec.n_way, spec.k_shot, spec.n_query) == (5, 1, 1) && settings.data.is_omniglot();
    let fixed = episodes.is_some() || (shipped && protocol.is_none() && !validation);
    if n.is_some() && fixed {
        bail!("--n counts fresh episodes, but these episodes are a fixed set: use it with --protocol or --validation");
    }
    if settings.data.folder.is_some() {
        if episodes.is_some() {
            bail!(
                "--episodes: episode files describe Omniglot episodes; a model trained on data.folder is evaluated \
                 on episodes drawn from the folder's test classes (drop --episodes; --n sets how many)"
            );
        }
        if protocol.is_some() {
            bail!("--protocol chooses Omniglot's class pools; a folder's test classes are its own (drop --protocol)");
        }
    }
    let data = settings.data.load().map_err(|e| match &folder {
        Some(f) => anyhow::anyhow!("--folder {}: {e:#}", f.path.display()),
        None => e,
    })?;
    let (e, seed) = (&settings.episodes, settings.seed);
    let n_fresh = n.unwrap_or(600);
    // A file's episodes are read whole; fresh ones are drawn a batch at a time as they are
    // evaluated (`--n` of a billion holds one batch).
    let source = match (&folder, episodes, protocol) {
        (Some(f), ..) => Episodes::Drawn(crate::episodes::folder_draw(e, seed, &data, f.split, f.all, n_fresh)?),
        _ if validation => {
            Episodes::Drawn(validation_draw(e, seed, &data, n.unwrap_or(settings.schedule.val_episodes))?)
        }
        (None, Some(path), _) => Episodes::File(read_episodes(&path)?, path.display().to_string()),
        (None, None, Some(p)) => Episodes::Drawn(test_draw(e, seed, &data, p, n_fresh)?),
        (None, None, None) if shipped => {
            Episodes::File(EpisodeSet::from_json(DEFAULT_EPISODES_TEXT, DEFAULT_EPISODES)?, DEFAULT_EPISODES.to_owned())
        }
        (None, None, None) => Episodes::Drawn(test_draw(e, seed, &data, e.protocol, n_fresh)?),
    };
    let (spec, description) = match &source {
        Episodes::File(set, _) => (set.spec, set.description.clone()),
        Episodes::Drawn(d) => (d.spec, d.description.clone()),
    };
    let n_way = spec.n_way;
    let needs = crate::budget::evaluation(&settings, threads, n_way, crate::evaluate::EVAL_BATCH);
    crate::budget::check(&needs, crate::budget::available())?;
    let mut params = Vec::with_capacity(models.len());
    for (path, ckpt, model) in &models {
        check_n_way(model, n_way, path, "the episodes are")?;
        params.push(
            model
                .evaluation
                .params(&model.net, &ckpt.params, n_way)
                .with_context(|| format!("the parameters of {}", path.display()))?,
        );
    }
    // A file's characters must exist in the data (drawn sets' do by construction).
    if let Episodes::File(set, origin) = &source {
        set.check_characters(data.n_classes(), origin)?;
    }
    let ev = &settings.evaluation;
    let steps = if inner_steps.is_empty() { vec![ev.adaptation.steps] } else { inner_steps };
    for steps in steps {
        let (acc, each) = if models.len() == 1 {
            let net = settings.net.net(n_way);
            let acc = evaluate(ev.engine, &net, &params[0], &data, source.iter()?, &ev.adaptation(steps))?;
            (acc, vec![acc])
        } else {
            let members: Vec<Member> = models
                .iter()
                .zip(&params)
                .map(|((_, _, m), p)| Member {
                    engine: m.evaluation.engine,
                    net: m.net.net(n_way),
                    params: p.clone(),
                    adaptation: m.evaluation.adaptation(steps),
                })
                .collect();
            evaluate_ensemble(&members, &data, source.iter()?)?
        };
        if json {
            let members: Vec<serde_json::Value> = paths
                .iter()
                .zip(&each)
                .map(|(p, a)| serde_json::json!({"checkpoint": p, "accuracy": a.mean, "ci95": a.ci95}))
                .collect();
            // One checkpoint: its path, as before ensembles; several: the list.
            let checkpoint = if paths.len() == 1 { serde_json::json!(paths[0]) } else { serde_json::json!(paths) };
            stdout::line(
                &serde_json::json!({
                    "checkpoint": checkpoint, "episodes": acc.episodes, "accuracy": acc.mean,
                    "ci95": acc.ci95, "inner_steps": steps, "n_way": n_way, "k_shot": spec.k_shot,
                    "n_query": spec.n_query,
                    "description": description, "members": members,
                })
                .to_string(),
            )?;
        } else if models.len() == 1 {
            stdout::line(&format!("accuracy {acc} with {steps} inner steps ({})", description))?;
        } else {
            stdout::line(&format!(
                "accuracy {acc} with {steps} inner steps ({}), an ensemble of {} checkpoints",
                description,
                models.len()
            ))?;
            for (p, a) in paths.iter().zip(&each) {
                stdout::line(&format!("  member {}: {a}", p.display()))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

// The episodes `eval` evaluates: a file's (and its name), or freshly drawn ones.
enum Episodes {
    File(EpisodeSet, String),
    Drawn(Drawn),
}

impl Episodes {
    /// The episodes in order: a file's from memory, drawn ones as they are read.
    fn iter(&self) -> anyhow::Result<Box<dyn Iterator<Item = fewshot_tasks::Episode> + '_>> {
        Ok(match self {
            Episodes::File(set, _) => Box::new(set.episodes.iter().cloned()),
            Episodes::Drawn(d) => Box::new(d.episodes()?),
        })
    }
}

/// The checkpoint files named on the command line, a folder standing for the `*.safetensors`
/// files in it (by name).
fn checkpoint_files(given: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for path in given {
        if path.is_dir() {
            let mut inside: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("listing --checkpoint {}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
                .collect();
            if inside.is_empty() {
                bail!("--checkpoint {}: a folder with no .safetensors checkpoints in it", path.display());
            }
            inside.sort();
            out.extend(inside);
        } else {
            out.push(path.clone());
        }
    }
    Ok(out)
}

/// The Omniglot data directory and source of this command's environment win over those a
/// checkpoint recorded (which may name another machine's paths). A folder model keeps its
/// `data.dir`, the cache of its own images: `OMNIGLOT_DATA_DIR` is Omniglot's.
fn data_from_here(mut config: Config) -> Config {
    if config.data.folder.is_none() && std::env::var_os("OMNIGLOT_DATA_DIR").is_some_and(|d| !d.is_empty()) {
        config.data.dir = None;
    }
    if std::env::var_os("OMNIGLOT_SOURCE").is_some_and(|s| !s.is_empty()) {
        config.data.source = None;
    }
    config
}

fn read_episodes(path: &Path) -> anyhow::Result<EpisodeSet> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading episode set {}", path.display()))?;
    Ok(EpisodeSet::from_json(&text, &path.display().to_string())?)
}
