//! `cargo xtask experiment hw15`: the course report as one command (`beyond-maml` is in
//! `beyond.rs`). Trains every rung of the
//! ladder (or reuses and resumes what `runs/` already holds), evaluates each on the 640 course
//! test tasks and on its validation set, and writes `report.md`, `results.json` and the two
//! figures (see `report.rs`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::ladder::{Budget, POOLS, RUNGS};
use crate::report;
use crate::runs::{fewshot_command, machine, metrics, read_json};

#[derive(clap::Args)]
pub struct Args {
    /// The experiment: `hw15` (the course's report) or `beyond-maml` (the MAML++ ablation;
    /// its budgets: quick 3 steps, course 200, full 1000).
    name: String,
    /// `course` (the course's epochs), `full` (the shipped configs' steps) or `quick` (a few
    /// steps per run and small episode counts: checks the pipeline, writes under target/).
    #[arg(long, value_enum, default_value = "course")]
    budget: Budget,
    /// Threads of each `fewshot` run (default: all cores). Results do not depend on it.
    #[arg(long)]
    threads: Option<usize>,
    /// Where the report goes (default: reports/hw15; target/experiment-quick/report for quick).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Where the runs go (default: runs/hw15; target/experiment-quick/runs for quick).
    #[arg(long)]
    runs: Option<PathBuf>,
    /// A built `fewshot` binary to use instead of building target/release/fewshot.
    #[arg(long)]
    fewshot: Option<PathBuf>,
    /// Only write the report from the results already in --out (train nothing).
    #[arg(long)]
    report_only: bool,
    /// beyond-maml: keep the results in --out's `results.json` for the ablation arms and
    /// protocol configs whose runs are not under --runs (or are less far along there) instead
    /// of training the arms again; the report marks each kept row. For a machine that holds
    /// only some of the runs (they take hours).
    #[arg(long)]
    keep_earlier: bool,
    /// photos: train nothing; test and report each run as its folder holds it (a run stopped
    /// before its configured steps is reported at the step it reached, not continued).
    #[arg(long)]
    no_train: bool,
}

/// Inner steps of the inference sweep.
pub const SWEEP: &str = "0,1,2,3,5,10,20";
/// Inner steps of the test evaluation: the configs' 3 and the course's 10.
pub const TEST_STEPS: &str = "3,10";

/// One `fewshot train` of the experiment.
struct Job {
    key: String,
    config: &'static str,
    sets: Vec<String>,
    dir: PathBuf,
    sweep: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if !["hw15", "beyond-maml", "photos"].contains(&args.name.as_str()) {
        bail!("unknown experiment `{}`: the experiments are: hw15, beyond-maml, photos", args.name);
    }
    if args.no_train && args.name != "photos" {
        bail!("--no-train is for photos");
    }
    if args.keep_earlier && args.name != "beyond-maml" {
        bail!("--keep-earlier is for beyond-maml (hw15 always keeps the results of runs it does not redo)");
    }
    let quick = args.budget == Budget::Quick;
    if args.name == "photos" {
        let out = args
            .out
            .clone()
            .unwrap_or_else(|| if quick { "target/experiment-quick/photos".into() } else { "reports/photos".into() });
        if args.report_only {
            return crate::photos::write_report(&out);
        }
        let runs = args
            .runs
            .clone()
            .unwrap_or_else(|| if quick { "target/experiment-quick/runs-photos".into() } else { "runs/photos".into() });
        let fewshot = fewshot_binary(args.fewshot.as_deref())?;
        return crate::photos::run(&fewshot, args.budget, &out, &runs, args.threads, args.no_train);
    }
    if args.name == "beyond-maml" {
        let out = args.out.clone().unwrap_or_else(|| {
            if quick { "target/experiment-quick/beyond-maml".into() } else { "reports/beyond-maml".into() }
        });
        let runs = args.runs.clone().unwrap_or_else(|| {
            if quick { "target/experiment-quick/runs-beyond".into() } else { "runs/beyond-maml".into() }
        });
        let fewshot = fewshot_binary(args.fewshot.as_deref())?;
        return crate::beyond::run(&fewshot, args.budget, &out, &runs, args.threads, args.keep_earlier);
    }
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| if quick { "target/experiment-quick/report".into() } else { "reports/hw15".into() });
    let runs = args
        .runs
        .clone()
        .unwrap_or_else(|| if quick { "target/experiment-quick/runs".into() } else { "runs/hw15".into() });
    if !args.report_only {
        let fewshot = fewshot_binary(args.fewshot.as_deref())?;
        let results = run_budget(&fewshot, args.budget, &runs, args.threads)?;
        report::merge_results(&out, args.budget, results)?;
    }
    report::write(&out)?;
    eprintln!("report: {}", out.join("report.md").display());
    Ok(())
}

/// `given`, or the release `fewshot` built now (under `CARGO_TARGET_DIR` when set).
fn fewshot_binary(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.to_owned());
    }
    let status = Command::new(env!("CARGO")).args(["build", "--release", "--bin", "fewshot"]).status()?;
    if !status.success() {
        bail!("building fewshot failed");
    }
    Ok(crate::release_binary("fewshot"))
}

/// Every run of `budget`: train (or reuse, or resume), evaluate (or reuse), collect.
fn run_budget(fewshot: &Path, budget: Budget, runs: &Path, threads: Option<usize>) -> anyhow::Result<Value> {
    let quick = budget == Budget::Quick;
    let mut jobs = Vec::new();
    for rung in &RUNGS {
        let steps = match budget {
            Budget::Quick => Some(3),
            Budget::Course => Some(rung.course_steps),
            Budget::Full => None,
        };
        jobs.push(job(rung.key, rung.config, &runs.join(budget.name()), steps, quick, rung.in_figures, None));
    }
    // The pool-size panel: MAML at the course budget (quick: its own).
    let pool_budget = if quick { Budget::Quick } else { Budget::Course };
    let pool_steps = if quick { 3 } else { RUNGS[3].course_steps };
    let pools: Vec<usize> = if quick { vec![10] } else { POOLS.to_vec() };
    for &n in &pools {
        let key = format!("maml-pool-{n}");
        let dir = runs.join(pool_budget.name());
        jobs.push(job(&key, RUNGS[3].config, &dir, Some(pool_steps), quick, false, Some(n)));
    }
    if budget == Budget::Full {
        // The full pool's point of the panel.
        jobs.push(job("maml", RUNGS[3].config, &runs.join("course"), Some(pool_steps), false, true, None));
    }

    let started = Instant::now();
    let mut results = serde_json::Map::new();
    let n = jobs.len();
    for (i, job) in jobs.iter().enumerate() {
        let eta = if i == 0 {
            String::new()
        } else {
            let per = started.elapsed().as_secs_f64() / i as f64;
            format!(", ETA {:.0} min", per * (n - i) as f64 / 60.0)
        };
        eprintln!(
            "== hw15 {} budget: experiment {}/{n}: {} in {}{eta}",
            budget.name(),
            i + 1,
            job.key,
            job.dir.display()
        );
        let result = run_job(fewshot, job, threads, quick)?;
        // The full budget's pool panel borrows the course budget's MAML run: keep both.
        let borrowed = budget == Budget::Full && job.dir.parent().is_some_and(|p| p.ends_with("course"));
        let key = if borrowed { format!("{}-course", job.key) } else { job.key.clone() };
        results.insert(key, result);
    }
    Ok(json!({
        "budget": budget.name(),
        "runs": results,
        // Where the work tree has no .git (a copy on another machine), the caller names it.
        "git_revision": git(&["rev-parse", "HEAD"]).or_else(|| std::env::var("FEWSHOT_GIT_REVISION").ok()),
        "date": command_output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])),
        "machine": machine(),
    }))
}

fn job(
    key: &str,
    config: &'static str,
    root: &Path,
    steps: Option<usize>,
    quick: bool,
    sweep: bool,
    pool: Option<usize>,
) -> Job {
    let mut sets = Vec::new();
    if let Some(s) = steps {
        sets.push(format!("train.steps={s}"));
    }
    if quick {
        sets.extend(
            ["train.val_episodes=16", "train.val_every=2", "train.val_log_points=3", "train.checkpoint_every=2"]
                .map(String::from),
        );
    } else {
        sets.push("train.val_log_points=16".into());
    }
    if let Some(n) = pool {
        sets.push(format!("episodes.train_classes={n}"));
    }
    Job { key: key.to_owned(), config, sets, dir: root.join(key), sweep }
}

fn run_job(fewshot: &Path, job: &Job, threads: Option<usize>, quick: bool) -> anyhow::Result<Value> {
    let mut train = fewshot_command(fewshot, threads);
    train.args(["train", "--config", job.config, "--out"]).arg(&job.dir);
    for s in &job.sets {
        train.args(["--set", s]);
    }
    // A folder that holds this run continues it (a finished one returns at once); `fewshot`
    // refuses it if its config differs.
    if job.dir.join("config.toml").exists() {
        train.arg("--resume");
    }
    let command = format!("{train:?}").replace('"', "");
    let status = train.status().with_context(|| format!("running {command}"))?;
    if !status.success() {
        bail!("{command} failed ({status})");
    }
    let best = job.dir.join("checkpoints/best.safetensors");
    let manifest: Value = read_json(&job.dir.join("checkpoints/best.safetensors.json"))?;
    // Where and from what it trained (a run may have been trained elsewhere and copied here).
    let provenance = read_json(&job.dir.join("run.json")).unwrap_or(Value::Null);
    let lines = metrics(&job.dir)?;
    let cache_path = job.dir.join("experiment.json");
    if let Ok(cached) = read_json(&cache_path)
        && cached["best_sha256"] == manifest["sha256"]
        && cached["sweep"].is_array() == job.sweep
    {
        eprintln!("   reusing the evaluations in {}", cache_path.display());
        let mut cached = cached;
        cached["curve"] = curve(&lines);
        cached["revision"] = provenance["git_revision"].clone();
        return Ok(cached);
    }
    let eval = |extra: &[&str], steps: &str| -> anyhow::Result<Value> {
        let mut cmd = fewshot_command(fewshot, threads);
        cmd.args(["eval", "--checkpoint"]).arg(&best).args(["--json", "--inner-steps", steps]).args(extra);
        let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
        if !out.status.success() {
            bail!("{cmd:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
        }
        let rows: Vec<Value> =
            String::from_utf8_lossy(&out.stdout).lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
        Ok(Value::Array(rows))
    };
    let test_extra: &[&str] = if quick { &["--protocol", "course", "--n", "16"] } else { &[] };
    let test = eval(test_extra, TEST_STEPS)?;
    let sweep = if job.sweep {
        let extra: &[&str] = if quick { &["--validation", "--n", "16"] } else { &["--validation"] };
        eval(extra, if quick { "0,1,3" } else { SWEEP })?
    } else {
        Value::Null
    };
    let last = lines.last().context("empty metrics.jsonl")?;
    let wall = last["wall_s"].as_f64().unwrap_or(f64::NAN);
    let tasks = last["tasks_seen"].as_f64().unwrap_or(f64::NAN);
    let mut train_cmd = format!("fewshot train --config {} --out {}", job.config, job.dir.display());
    for s in &job.sets {
        train_cmd += &format!(" --set {s}");
    }
    let result = json!({
        "key": job.key,
        "config": job.config,
        "command": train_cmd,
        "steps": last["step"],
        "tasks_seen": tasks,
        "best_val": manifest["best_val"],
        "best_step": manifest["step"],
        "best_sha256": manifest["sha256"],
        "wall_s": wall,
        "tasks_per_s": tasks / wall,
        "test": test,
        "sweep": sweep,
        "machine": Some(provenance["machine"].clone()).filter(|m| m.is_object()).unwrap_or_else(machine),
        "revision": provenance["git_revision"].clone(),
    });
    std::fs::write(&cache_path, serde_json::to_string_pretty(&result)?)?;
    let mut result = result;
    result["curve"] = curve(&lines);
    Ok(result)
}

/// Validation points of a run: `[tasks_seen, accuracy, ci95]`.
fn curve(lines: &[Value]) -> Value {
    lines
        .iter()
        .filter(|l| l["val_acc"].is_number())
        .map(|l| json!([l["tasks_seen"], l["val_acc"], l["val_ci95"]]))
        .collect()
}

pub fn command_output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok().filter(|o| o.status.success())?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn git(args: &[&str]) -> Option<String> {
    command_output(Command::new("git").args(args))
}
