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
use fewshot_cli::config::Config;
use fewshot_cli::evaluate::{eval_params, evaluate, test_episodes};
use fewshot_cli::train::{TrainOptions, ctrl_c_flag, stderr_is_terminal, train};
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
    #[arg(long, global = true)]
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
        #[arg(long)]
        resume: bool,
    },
    /// Accuracy with a 95% confidence interval on fixed or freshly seeded test episodes.
    ///
    /// Example: fewshot eval --checkpoint runs/hw15-strong/checkpoints/best.safetensors --inner-steps 3
    Eval {
        /// A checkpoint written by `fewshot train`.
        #[arg(long)]
        checkpoint: PathBuf,
        /// An episode-set file (default: the shipped 640 course test tasks when the checkpoint
        /// is 5-way 1-shot 1-query, else 600 seeded episodes of its protocol).
        #[arg(long, conflicts_with = "protocol")]
        episodes: Option<PathBuf>,
        /// Draw fresh test episodes from this protocol's test classes instead.
        #[arg(long, value_enum)]
        protocol: Option<ProtocolArg>,
        /// Number of fresh episodes with --protocol.
        #[arg(long, default_value_t = 600)]
        n: usize,
        /// Inner steps on each support set (default: the config's eval_inner_steps).
        #[arg(long)]
        inner_steps: Option<usize>,
        /// Print one JSON object instead of a sentence.
        #[arg(long)]
        json: bool,
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
        #[arg(long)]
        inner_steps: Option<usize>,
        /// Output CSV.
        #[arg(long)]
        out: PathBuf,
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
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let threads = cli.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    fewshot_cli::set_threads(threads)?;
    match cli.command {
        Command::Train { config, overrides, out, resume } => {
            let config = Config::load(&config, &overrides)?;
            let out = out.unwrap_or_else(|| PathBuf::from("runs").join(&config.name));
            let data = config.data.load()?;
            let options = TrainOptions { out: out.clone(), resume, progress: stderr_is_terminal() };
            let summary = train(&config, &data, &options, ctrl_c_flag())?;
            let best = summary.best_val.map(|b| format!("{b:.4}")).unwrap_or_else(|| "n/a".into());
            if summary.interrupted {
                eprintln!("interrupted after {} steps; resume with --resume --out {}", summary.steps, out.display());
            } else {
                eprintln!(
                    "trained {} steps; best validation accuracy {best}; outputs in {}",
                    summary.steps,
                    out.display()
                );
            }
            Ok(())
        }
        Command::Eval { checkpoint, episodes, protocol, n, inner_steps, json } => {
            let ckpt = Checkpoint::load(&checkpoint, &Device::Cpu)?;
            let config = ckpt.config(&checkpoint)?;
            let data = config.data.load()?;
            let spec = config.spec();
            let set = match (episodes, protocol) {
                (Some(path), _) => read_episodes(&path)?,
                (None, Some(p)) => test_episodes(&config, &data, protocol_of(p), n)?,
                (None, None)
                    if (spec.n_way, spec.k_shot, spec.n_query) == (5, 1, 1)
                        && config.data.expect == fewshot_cli::config::ExpectCounts::Omniglot =>
                {
                    EpisodeSet::from_json(DEFAULT_EPISODES_TEXT, DEFAULT_EPISODES)?
                }
                (None, None) => test_episodes(&config, &data, config.episodes.protocol, n)?,
            };
            let steps = inner_steps.unwrap_or(config.train.eval_inner_steps);
            let n_way = set.spec.n_way;
            let params = eval_params(&config, &ckpt.params, n_way)?;
            let acc = evaluate(&config.net(n_way), &params, &data, &set.episodes, config.train.inner_lr, steps)?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "checkpoint": checkpoint, "episodes": acc.episodes, "accuracy": acc.mean, "ci95": acc.ci95,
                        "inner_steps": steps, "n_way": n_way, "k_shot": set.spec.k_shot, "description": set.description,
                    })
                );
            } else {
                println!("accuracy {acc} with {steps} inner steps ({})", set.description);
            }
            Ok(())
        }
        Command::Predict { checkpoint, tasks, inner_steps, out } => {
            let ckpt = Checkpoint::load(&checkpoint, &Device::Cpu)?;
            let config = ckpt.config(&checkpoint)?;
            let folder_tasks = fewshot_cli::predict::read_tasks(&tasks, config.data.image_size)?;
            let n_way = folder_tasks[0].support.len();
            let params = eval_params(&config, &ckpt.params, n_way)?;
            if config.train.method != fewshot_cli::config::Method::Transfer && n_way != config.episodes.n_way {
                bail!(
                    "{} holds {n_way}-way tasks but the checkpoint is {}-way",
                    tasks.display(),
                    config.episodes.n_way
                );
            }
            let steps = inner_steps.unwrap_or(config.train.eval_inner_steps);
            let rows = fewshot_cli::predict::predict(
                &config.net(n_way),
                &params,
                &folder_tasks,
                config.train.inner_lr,
                steps,
            )?;
            let mut csv = String::from("id,class\n");
            for (id, class) in &rows {
                csv += &format!("{id},{class}\n");
            }
            omniglot_data::write_atomic(&out, csv.as_bytes()).with_context(|| format!("writing {}", out.display()))?;
            eprintln!("wrote {} predictions for {} tasks to {}", rows.len(), folder_tasks.len(), out.display());
            Ok(())
        }
    }
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
