//! `fewshot`: meta-learn few-shot classifiers of handwritten characters (Omniglot) with MAML,
//! evaluate them, and label new images.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fewshot_cli::commands;
use fewshot_cli::stdout::ClosedPipe;
use fewshot_cli::train::stderr_is_terminal;
use fewshot_tasks::Protocol;

#[derive(Parser)]
#[command(
    name = "fewshot",
    version,
    about = "Meta-learn few-shot classifiers (MAML, first-order MAML) on Omniglot",
    after_help = "Example:\n  fewshot train --config configs/hw15-medium.toml\n  fewshot eval --checkpoint runs/hw15-medium/checkpoints/best.safetensors"
)]
struct Cli {
    /// Threads: tasks processed in parallel, each on single-threaded kernels (default: all cores;
    /// under MPI, each rank's share of its machine's cores).
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
        /// number other than the one it trained on (`train.head_init = "zero"`, `"shared"` or
        /// `"prototypes"`, a protonet, or the transfer baseline).
        #[arg(long)]
        n_way: Option<usize>,
        /// Queries per class of each fresh episode (default: the config's `episodes.n_query`),
        /// e.g. the paper's 15 for a model validated on another shape.
        #[arg(long)]
        n_query: Option<usize>,
        /// Support images per class of each fresh episode (default: the config's
        /// `episodes.k_shot`), e.g. 1 for a model validated 5-shot.
        #[arg(long)]
        k_shot: Option<usize>,
        /// Draw fresh episodes from the classes of this folder of class folders instead (new
        /// classes, or another dataset: a cross-domain test), read as the model reads images
        /// (size, channels, intensity, normalisation): its test/ classes when it has a test/
        /// folder, else all its classes (see --split). Classes too small for an episode are
        /// left out, with a count.
        #[arg(long, conflicts_with_all = ["episodes", "protocol", "validation"])]
        folder: Option<PathBuf>,
        /// With --folder: which classes: `train`, `val` or `test` (its split folder), or `all`.
        #[arg(long, value_enum, requires = "folder")]
        split: Option<SplitArg>,
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
    /// Label the query images of tasks stored as folders of images.
    ///
    /// Photos: DIR/support/<class name>/ (any number of images per class, PNG or JPEG) and
    /// DIR/query/ (the images to label, or DIR/query/<task>/ folders of them); writes
    /// `file,class` rows with the class folder's name. The course's layout:
    /// DIR/support/NNNN/image_C.png (one per class C) and DIR/query/NNNN/image_J.png; writes
    /// `id,class` rows with id = NNNN_J. Images may be any size, gray or colour, read as the
    /// model was trained (size, channels, intensity, normalisation).
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

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum SplitArg {
    Train,
    Val,
    Test,
    All,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Join the MPI job, if this process is one of its ranks, before any thread starts.
    let membership = match fewshot_cli::ranks::start() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    // Ranks other than 0 log only warnings and errors: rank 0 speaks for the job.
    let level = if fewshot_cli::ranks::is_writer() { "info" } else { "warn" };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| level.into()))
        .with_writer(std::io::stderr)
        .with_ansi(stderr_is_terminal()) // no colour codes in log files
        .init();
    match run(cli, &membership) {
        Ok(code) => code,
        // The reader of our output went away (`| head`): it has what it wanted.
        Err(e) if e.is::<ClosedPipe>() => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}error: {e:#}", fewshot_cli::ranks::prefix());
            if fewshot_cli::ranks::size() > 1 {
                // The other ranks may be waiting for this one: stop them all.
                membership.abort(1);
            }
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli, membership: &fewshot_cli::ranks::Membership) -> anyhow::Result<ExitCode> {
    // Ranks on one machine share its cores.
    let cores = membership.cores();
    let threads = match cli.threads {
        // More threads than cores only time-slice the same cores (100x slower at 10000).
        Some(t) if t > cores => {
            let what = match membership.local_ranks() {
                1 => format!("this machine has {cores} cores"),
                n => format!("this rank has {cores} of the cores its machine's {n} ranks share"),
            };
            tracing::warn!("--threads {t}: {what}; using {cores}");
            cores
        }
        Some(t) => t,
        None => cores,
    };
    // SAFETY: `run` is called from `main` before anything starts a thread (parsing the
    // command line and installing the log subscriber start none).
    unsafe { fewshot_cli::set_threads(threads)? };
    match cli.command {
        Command::Train { config, overrides, out, resume, overwrite, seed } => commands::train::run(
            commands::train::TrainArgs { config, overrides, out, resume, overwrite, seed },
            threads,
        ),
        Command::Eval {
            checkpoint,
            episodes,
            protocol,
            validation,
            n,
            inner_steps,
            json,
            n_way,
            n_query,
            k_shot,
            folder,
            split,
        } => {
            let protocol = protocol.map(protocol_of);
            let folder = folder.map(|path| commands::eval::FolderEval {
                path,
                split: split.and_then(|s| match s {
                    SplitArg::Train => Some(fewshot_images::Split::Train),
                    SplitArg::Val => Some(fewshot_images::Split::Val),
                    SplitArg::Test => Some(fewshot_images::Split::Test),
                    SplitArg::All => None,
                }),
                all: split == Some(SplitArg::All),
            });
            let args = commands::eval::EvalArgs {
                checkpoint,
                episodes,
                protocol,
                validation,
                n,
                inner_steps,
                json,
                n_way,
                n_query,
                k_shot,
                folder,
            };
            commands::eval::run(args, threads)
        }
        Command::Config { action: ConfigAction::List } => commands::config::list(),
        Command::Config { action: ConfigAction::Show { name, overrides } } => commands::config::show(name, overrides),
        Command::Export { checkpoint, out } => commands::export::run(checkpoint, out),
        Command::Predict { checkpoint, tasks, inner_steps, probabilities, out } => {
            commands::predict::run(commands::predict::PredictArgs {
                checkpoint,
                tasks,
                inner_steps,
                probabilities,
                out,
            })
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

fn protocol_of(p: ProtocolArg) -> Protocol {
    match p {
        ProtocolArg::Course => Protocol::Course,
        ProtocolArg::Paper => Protocol::Paper,
    }
}
