//! `fewshot`: meta-learn few-shot classifiers of handwritten characters (Omniglot) with MAML,
//! evaluate them, and label new images.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use candle_core::Device;
use clap::{Parser, Subcommand};
use fewshot_cli::checkpoint::Checkpoint;
use fewshot_cli::config::{Config, HeadInitKind, Method};
use fewshot_cli::episodes::{Drawn, test_draw, validation_draw};
use fewshot_cli::evaluate::{Member, eval_params, evaluate, evaluate_ensemble};
use fewshot_cli::signals::StopSignal;
use fewshot_cli::stdout::{self, ClosedPipe};
use fewshot_cli::train::{TrainOptions, stderr_is_terminal, train};
use fewshot_tasks::{EpisodeSet, Protocol};

/// The 640 course test tasks (5-way 1-shot, 1 query, evaluation set) shipped with the project.
const DEFAULT_EPISODES: &str = "configs/episodes/course-test-5w1s1q-640.json";
const DEFAULT_EPISODES_TEXT: &str = include_str!("../../../configs/episodes/course-test-5w1s1q-640.json");

#[derive(Parser)]
#[command(
    name = "fewshot",
    version,
    about = "Meta-learn few-shot classifiers (MAML, first-order MAML) on Omniglot",
    after_help = "Example:\n  fewshot train --config configs/hw15-medium.toml\n  fewshot eval --checkpoint runs/hw15-medium/checkpoints/best.safetensors"
)]
struct Cli {
    /// Threads: tasks processed in parallel, each on single-threaded kernels (default: all cores).
    #[arg(long, global = true, allow_negative_numbers = true, value_parser = positive_count)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Meta-train from a TOML config; writes metrics.jsonl and checkpoints under --out.
    ///
    /// Example: fewshot train --config configs/hw15-strong.toml --set train.steps=500
    Train {
        /// The config file (see configs/).
        #[arg(long)]
        config: PathBuf,
        /// Override a config key, e.g. --set train.steps=100 (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Output directory (default: runs/<name>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Continue from <out>/checkpoints/last.safetensors.
        #[arg(long, conflicts_with = "overwrite")]
        resume: bool,
        /// Start afresh in a folder that already holds a run: the old run is first moved to
        /// <out>.old-N (nothing is deleted). Without it, such a folder is refused.
        #[arg(long)]
        overwrite: bool,
        /// The run's seed (the same as --set seed=N).
        #[arg(long, allow_negative_numbers = true, value_parser = seed_value)]
        seed: Option<u64>,
    },
    /// Accuracy with a 95% confidence interval on fixed or freshly seeded test episodes.
    ///
    /// Example: fewshot eval --checkpoint runs/hw15-strong/checkpoints/best.safetensors --inner-steps 3
    Eval {
        /// A checkpoint written by `fewshot train`. Give it more than once, or give a folder
        /// (e.g. a run's checkpoints/top, see `train.keep_best`), to evaluate an ensemble: each
        /// model adapts on its own and the mean of their softmax probabilities labels a query.
        #[arg(long, required = true)]
        checkpoint: Vec<PathBuf>,
        /// An episode-set file (default: the shipped 640 course test tasks when the checkpoint
        /// is 5-way 1-shot 1-query, else 600 seeded episodes of its protocol).
        #[arg(long, conflicts_with = "protocol")]
        episodes: Option<PathBuf>,
        /// Draw fresh test episodes from this protocol's test classes instead.
        #[arg(long, value_enum)]
        protocol: Option<ProtocolArg>,
        /// Evaluate on the run's own fixed validation episodes (the dev set of its training).
        #[arg(long, conflicts_with_all = ["episodes", "protocol"])]
        validation: bool,
        /// Number of episodes with --protocol (default 600) or --validation (default: the
        /// config's val_episodes).
        #[arg(long)]
        n: Option<usize>,
        /// Inner steps on each support set, or a list swept in one call, e.g. 0,1,2,3,5,10
        /// (default: the config's eval_inner_steps).
        #[arg(long, value_delimiter = ',', allow_negative_numbers = true, value_parser = count)]
        inner_steps: Vec<usize>,
        /// Print one JSON object per inner-step count instead of sentences.
        #[arg(long)]
        json: bool,
        /// Classes per fresh episode (--protocol or --validation), when the model can take a
        /// number other than the one it trained on (`train.head_init = "zero"` or `"shared"`,
        /// or the transfer baseline).
        #[arg(long)]
        n_way: Option<usize>,
    },
    /// The shipped configs: `config list` (each with its purpose), `config show NAME|FILE`
    /// (the resolved config with every default, so every key is discoverable).
    ///
    /// Example: fewshot config show hw15-strong
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Write a checkpoint's parameters and config without its optimiser state: a small file
    /// to ship or share, which `eval` and `predict` read (`train --resume` does not).
    ///
    /// Example: fewshot export --checkpoint runs/hw15-boss/checkpoints/best.safetensors --out models/hw15-boss.safetensors
    Export {
        /// A checkpoint written by `fewshot train`.
        #[arg(long)]
        checkpoint: PathBuf,
        /// The file to write (its manifest goes beside it as <out>.json).
        #[arg(long)]
        out: PathBuf,
    },
    /// Label the query images of tasks stored as folders of PNGs.
    ///
    /// Layout: DIR/support/NNNN/image_C.png (one per class C) and DIR/query/NNNN/image_J.png.
    /// Images may be any size, gray or colour; the model expects dark ink on a light background.
    /// Writes `id,class` rows with id = NNNN_J.
    ///
    /// Example: fewshot predict --checkpoint best.safetensors --tasks test_tasks/ --out predictions.csv
    Predict {
        /// A checkpoint written by `fewshot train`.
        #[arg(long)]
        checkpoint: PathBuf,
        /// The folder of tasks.
        #[arg(long)]
        tasks: PathBuf,
        /// Inner steps on each support set (default: the config's eval_inner_steps).
        #[arg(long, allow_negative_numbers = true, value_parser = one_count)]
        inner_steps: Option<usize>,
        /// Add one column per class with its probability (`p0`, `p1`, ...).
        #[arg(long)]
        probabilities: bool,
        /// Output CSV (`-`: standard output). A symlink is written through; a special file
        /// (a device, a pipe) is written directly.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum ConfigAction {
    /// The configs in configs/, one line each.
    List,
    /// A config with every default filled in.
    Show {
        /// A name in configs/ (e.g. hw15-strong) or a path to a TOML file.
        name: String,
        /// Overrides, as for train.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ProtocolArg {
    Course,
    Paper,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(stderr_is_terminal()) // no colour codes in log files
        .init();
    match run(cli) {
        Ok(code) => code,
        // The reader of our output went away (`| head`): it has what it wanted.
        Err(e) if e.is::<ClosedPipe>() => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = match cli.threads {
        // More threads than cores only time-slice the same cores (100x slower at 10000).
        Some(t) if t > cores => {
            tracing::warn!("--threads {t}: this machine has {cores} cores; using {cores}");
            cores
        }
        Some(t) => t,
        None => cores,
    };
    // SAFETY: `run` is called from `main` before anything starts a thread (parsing the
    // command line and installing the log subscriber start none).
    unsafe { fewshot_cli::set_threads(threads)? };
    match cli.command {
        Command::Train { config, mut overrides, out, resume, overwrite, seed } => {
            if let Some(seed) = seed {
                overrides.push(format!("seed={seed}"));
            }
            let config = Config::load(&config, &overrides)?;
            fewshot_cli::budget::check(
                &fewshot_cli::budget::training(&config, threads),
                fewshot_cli::budget::available(),
            )?;
            let out = out.unwrap_or_else(|| PathBuf::from("runs").join(&config.name));
            let stop = StopSignal::install()?;
            let data = config.data.load()?;
            let options = TrainOptions { out: out.clone(), resume, overwrite, progress: stderr_is_terminal() };
            let summary = train(&config, &data, &options, &stop)?;
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
                    config.train.steps
                );
                return Ok(ExitCode::SUCCESS);
            }
            eprintln!("trained {} steps; best validation accuracy {best}; outputs in {}", summary.steps, out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Eval { checkpoint, episodes, protocol, validation, n, inner_steps, json, n_way } => {
            let paths = checkpoint_files(&checkpoint)?;
            let mut models = Vec::with_capacity(paths.len());
            for path in &paths {
                let ckpt = Checkpoint::load(path, &Device::Cpu)?;
                let config = data_from_here(ckpt.config(path)?);
                models.push((path.clone(), ckpt, config));
            }
            let (first, _, trained) = &models[0];
            let trained = trained.clone();
            for (path, _, other) in &models[1..] {
                if other.episodes != trained.episodes || other.model != trained.model || other.data != trained.data {
                    bail!(
                        "{} and {} were trained on different episodes, nets or data ({}): an ensemble \
                         needs checkpoints of one protocol and net",
                        first.display(),
                        path.display(),
                        trained
                            .differences(other)
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
            // The config that draws fresh episodes: the trained one, or with --n-way classes.
            let mut config = trained.clone();
            if let Some(n_way) = n_way {
                if episodes.is_some() {
                    bail!("--n-way sets the classes of fresh episodes; an --episodes file has its own");
                }
                config.episodes.n_way = n_way;
                config.validate().with_context(|| format!("--n-way {n_way}"))?;
            }
            let spec = config.spec();
            let shipped = (spec.n_way, spec.k_shot, spec.n_query) == (5, 1, 1)
                && config.data.expect == fewshot_cli::config::ExpectCounts::Omniglot;
            let fixed = episodes.is_some() || (shipped && protocol.is_none() && !validation);
            if n.is_some() && fixed {
                bail!(
                    "--n counts fresh episodes, but these episodes are a fixed set: use it with --protocol or --validation"
                );
            }
            let data = config.data.load()?;
            let n_fresh = n.unwrap_or(600);
            // A file's episodes are read whole; fresh ones are drawn a batch at a time as they are
            // evaluated (`--n` of a billion holds one batch).
            let source = match (episodes, protocol) {
                _ if validation => Episodes::Drawn(validation_draw(&config, &data, n)?),
                (Some(path), _) => Episodes::File(read_episodes(&path)?, path.display().to_string()),
                (None, Some(p)) => Episodes::Drawn(test_draw(&config, &data, protocol_of(p), n_fresh)?),
                (None, None) if shipped => Episodes::File(
                    EpisodeSet::from_json(DEFAULT_EPISODES_TEXT, DEFAULT_EPISODES)?,
                    DEFAULT_EPISODES.to_owned(),
                ),
                (None, None) => Episodes::Drawn(test_draw(&config, &data, config.episodes.protocol, n_fresh)?),
            };
            let (spec, description) = match &source {
                Episodes::File(set, _) => (set.spec, set.description.clone()),
                Episodes::Drawn(d) => (d.spec, d.description.clone()),
            };
            let n_way = spec.n_way;
            let needs = fewshot_cli::budget::evaluation(&config, threads, n_way, fewshot_cli::evaluate::EVAL_BATCH);
            fewshot_cli::budget::check(&needs, fewshot_cli::budget::available())?;
            let mut params = Vec::with_capacity(models.len());
            for (path, ckpt, model_config) in &models {
                check_n_way(model_config, n_way, path, "the episodes are")?;
                params.push(
                    eval_params(model_config, &ckpt.params, n_way)
                        .with_context(|| format!("the parameters of {}", path.display()))?,
                );
            }
            // A file's characters must exist in the data (drawn sets' do by construction).
            if let Episodes::File(set, origin) = &source {
                set.check_characters(data.n_background() + data.n_evaluation(), origin)?;
            }
            let steps = if inner_steps.is_empty() { vec![config.train.eval_inner_steps] } else { inner_steps };
            for steps in steps {
                let (acc, each) = if models.len() == 1 {
                    let adaptation = config.adaptation(steps);
                    let acc =
                        evaluate(config.engine(), &config.net(n_way), &params[0], &data, source.iter()?, &adaptation)?;
                    (acc, vec![acc])
                } else {
                    let members: Vec<Member> = models
                        .iter()
                        .zip(&params)
                        .map(|((_, _, c), p)| Member {
                            engine: c.engine(),
                            net: c.net(n_way),
                            params: p.clone(),
                            adaptation: c.adaptation(steps),
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
                    let checkpoint =
                        if paths.len() == 1 { serde_json::json!(paths[0]) } else { serde_json::json!(paths) };
                    stdout::line(
                        &serde_json::json!({
                            "checkpoint": checkpoint, "episodes": acc.episodes, "accuracy": acc.mean,
                            "ci95": acc.ci95, "inner_steps": steps, "n_way": n_way, "k_shot": spec.k_shot,
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
        Command::Config { action: ConfigAction::List } => {
            let mut paths: Vec<PathBuf> = std::fs::read_dir("configs")
                .context("reading configs/ (run from the repository root)")?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "toml"))
                .collect();
            paths.sort();
            for path in paths {
                let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
                let purpose: Vec<&str> =
                    text.lines().take_while(|l| l.starts_with('#')).map(|l| l.trim_start_matches('#').trim()).collect();
                stdout::line(&format!("{:<28} {}", path.display(), purpose.join(" ")))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Config { action: ConfigAction::Show { name, overrides } } => {
            let path = if name.ends_with(".toml") || name.contains('/') {
                PathBuf::from(&name)
            } else {
                PathBuf::from("configs").join(format!("{name}.toml"))
            };
            stdout::write(Config::load(&path, &overrides)?.to_toml().as_bytes())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Export { checkpoint, out } => {
            refuse_to_overwrite_inputs(&out, &[(&checkpoint, "the checkpoint it exports")], None)?;
            let mut ckpt = Checkpoint::load(&checkpoint, &Device::Cpu)?;
            ckpt.adam_m.clear();
            ckpt.adam_v.clear();
            ckpt.save(&out)?;
            eprintln!("wrote the parameters of {} to {}", checkpoint.display(), out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Predict { checkpoint, tasks, inner_steps, probabilities, out } => {
            refuse_to_overwrite_inputs(&out, &[(&checkpoint, "the checkpoint it reads")], Some(&tasks))?;
            let ckpt = Checkpoint::load(&checkpoint, &Device::Cpu)?;
            let config = ckpt.config(&checkpoint)?;
            let folder_tasks = fewshot_cli::predict::read_tasks(&tasks, config.data.image_size)?;
            let n_way = folder_tasks[0].support.len();
            check_n_way(&config, n_way, &checkpoint, &format!("{} holds", tasks.display()))?;
            let params = eval_params(&config, &ckpt.params, n_way)?;
            let steps = inner_steps.unwrap_or(config.train.eval_inner_steps);
            let rows =
                fewshot_cli::predict::predict(&config.net(n_way), &params, &folder_tasks, &config.adaptation(steps))?;
            let mut csv = String::from("id,class");
            if probabilities {
                (0..n_way).for_each(|c| csv += &format!(",p{c}"));
            }
            csv += "\n";
            for row in &rows {
                csv += &format!("{},{}", fewshot_cli::predict::csv_field(&row.id), row.class);
                if probabilities {
                    row.probabilities.iter().for_each(|p| csv += &format!(",{p:.6}"));
                }
                csv += "\n";
            }
            fewshot_cli::predict::write_output(&out, csv.as_bytes())?;
            eprintln!("wrote {} predictions for {} tasks to {}", rows.len(), folder_tasks.len(), out.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A whole number of something (0 allowed), with a message that says what was expected.
fn count(s: &str) -> Result<usize, String> {
    s.trim().parse().map_err(|_| format!("expected a whole number such as 3 (0 or more), got '{s}'"))
}

/// [`count`], at least 1.
fn positive_count(s: &str) -> Result<usize, String> {
    match count(s)? {
        0 => Err("expected a whole number of 1 or more, got 0".into()),
        n => Ok(n),
    }
}

/// [`count`] where a list makes no sense (`predict` adapts once per task).
fn one_count(s: &str) -> Result<usize, String> {
    if s.contains(',') {
        return Err(format!(
            "predict adapts once per task: give one number of inner steps, not a list ('{s}'); \
             `fewshot eval --inner-steps {s}` sweeps a list"
        ));
    }
    count(s)
}

/// A seed: a whole number from 0 to 2^64 - 1.
fn seed_value(s: &str) -> Result<u64, String> {
    s.trim().parse().map_err(|_| format!("expected a seed, a whole number from 0 to {}, got '{s}'", u64::MAX))
}

/// The episodes `eval` evaluates: a file's (and its name), or freshly drawn ones.
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

/// Refuse an `--out` that is one of the command's inputs (the same file after resolving links,
/// or the manifest `<input>.json` beside it) or lies among the images of its task folder
/// `within` (`--tasks`: its `support` and `query` folders): writing it would replace or join
/// what the command reads. `-` (standard output) is
/// never an input.
fn refuse_to_overwrite_inputs(
    out: &std::path::Path,
    inputs: &[(&std::path::Path, &str)],
    within: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    if out.as_os_str() == "-" {
        return Ok(());
    }
    // The path `out` will be written at: through a symlink, under a resolved folder.
    let resolve = |p: &std::path::Path| -> Option<PathBuf> {
        std::fs::canonicalize(p).ok().or_else(|| {
            let parent = match p.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => std::path::Path::new("."),
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

/// The data directory and source of this command's environment win over those a checkpoint
/// recorded (which may name another machine's paths).
/// Refuse `n_way`-way tasks for a model whose head has a fixed number of classes other than
/// `n_way`; `what` says where the tasks come from ("the episodes are", "DIR holds").
fn check_n_way(config: &Config, n_way: usize, checkpoint: &std::path::Path, what: &str) -> anyhow::Result<()> {
    let trained = config.episodes.n_way;
    let any_way = config.train.method == Method::Transfer || config.train.head_init != HeadInitKind::Learned;
    if n_way != trained && !any_way {
        bail!(
            "{} is a {trained}-way model and {what} {n_way}-way: use {trained}-way tasks (a model trained with \
             train.head_init = \"zero\" or \"shared\" takes any number of classes)",
            checkpoint.display()
        );
    }
    Ok(())
}

fn data_from_here(mut config: Config) -> Config {
    if std::env::var_os("OMNIGLOT_DATA_DIR").is_some_and(|d| !d.is_empty()) {
        config.data.dir = None;
    }
    if std::env::var_os("OMNIGLOT_SOURCE").is_some_and(|s| !s.is_empty()) {
        config.data.source = None;
    }
    config
}

fn protocol_of(p: ProtocolArg) -> Protocol {
    match p {
        ProtocolArg::Course => Protocol::Course,
        ProtocolArg::Paper => Protocol::Paper,
    }
}

fn read_episodes(path: &std::path::Path) -> anyhow::Result<EpisodeSet> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading episode set {}", path.display()))?;
    Ok(EpisodeSet::from_json(&text, &path.display().to_string())?)
}
