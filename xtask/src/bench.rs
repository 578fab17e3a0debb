//! `cargo xtask bench`: meta-training and evaluation throughput, peak memory and achieved
//! GFLOP/s of the real code path on synthetic data, each case in its own process, and the
//! fraction of this machine's gemm peak (the engine's kernel on large square products, per
//! thread count, measured in the same run) that the achieved figure is; with
//! `--against-torch PYTHON`, the PyTorch reference on the same cases, alternating with ours.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};
use serde_json::Value;

#[derive(clap::Args)]
pub struct Args {
    /// Thread counts to measure, comma-separated.
    #[arg(long, default_value = "1,2", value_delimiter = ',')]
    threads: Vec<usize>,
    /// Cases: 5w1s (meta-batch 32, 1 inner step, 1 query per class), 20w1s (meta-batch 16, 5
    /// inner steps, 1 query) and the paper protocol's training shapes 5w1s15q (15 queries per
    /// class), 20w1s5q (5 queries per class) and 84rgb (the MAML paper's mini-ImageNet
    /// shape: 84x84 RGB, 32 filters, 5-way 1-shot, 15 queries, 5 inner steps; not run unless
    /// named).
    #[arg(long, default_value = "5w1s,20w1s,5w1s15q,20w1s5q", value_delimiter = ',')]
    cases: Vec<String>,
    /// Modes: so (second-order meta-train), fo (first-order), eval.
    #[arg(long, default_value = "so,fo,eval", value_delimiter = ',')]
    modes: Vec<String>,
    /// Timed meta-steps per measurement (after 3 warm-up steps).
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Measure each case this many times, ours and the others alternating round by round, and
    /// report the median round (and the median of the per-round ratios): on a shared machine
    /// one measurement can be 20-40% off, and ratios of neighbouring runs less so.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// A Python with torch installed: also run the PyTorch reference and print ratios.
    #[arg(long)]
    against_torch: Option<PathBuf>,
    /// Another build of `fewshot-bench` (e.g. a copy made before a change): also run it on
    /// every case, right after ours, and print our speed relative to it.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// The PyTorch reference script.
    #[arg(long, default_value = "../shared/bench/torch_maml_reference.py")]
    torch_script: PathBuf,
    /// Build `fewshot-bench` with the engine's profiling counters and report each case's time
    /// split (shares of thread time in gemm, elementwise passes, im2col and the rest).
    #[arg(long)]
    time_split: bool,
    /// Where results.jsonl and table.md go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
}

struct Case {
    name: &'static str,
    n_way: usize,
    q_query: usize,
    meta_batch: usize,
    train_steps: usize,
    eval_steps: usize,
    inner_lr: f64,
    /// Input shape and filters: (image side, channels, filters per block).
    shape: (usize, usize, usize),
}

/// Omniglot's net: 28x28 gray, 64 filters.
const OMNIGLOT: (usize, usize, usize) = (28, 1, 64);

impl Case {
    /// A case of Omniglot's net with the course's inner rate.
    const fn omniglot(name: &'static str, n_way: usize, q_query: usize, meta_batch: usize, steps: [usize; 2]) -> Case {
        let [train_steps, eval_steps] = steps;
        Case { name, n_way, q_query, meta_batch, train_steps, eval_steps, inner_lr: 0.4, shape: OMNIGLOT }
    }
}

/// Each Omniglot case: name, classes, queries per class, tasks a step, [training, evaluation]
/// inner steps.
const CASES: [Case; 5] = [
    Case::omniglot("5w1s", 5, 1, 32, [1, 3]),
    Case::omniglot("20w1s", 20, 1, 16, [5, 5]),
    Case::omniglot("5w1s15q", 5, 15, 32, [1, 3]),
    Case::omniglot("20w1s5q", 20, 5, 16, [5, 5]),
    // The MAML paper's mini-ImageNet setup (configs/miniimagenet-5w1s.toml): 84x84 RGB, 32
    // filters, 5-way 1-shot with 15 queries, 4 tasks a step, 5 inner steps at 0.01, 10 at test.
    Case {
        name: "84rgb",
        n_way: 5,
        q_query: 15,
        meta_batch: 4,
        train_steps: 5,
        eval_steps: 10,
        inner_lr: 0.01,
        shape: (84, 3, 32),
    },
];

/// The median of `v` (the lower middle one for an even count); `None` when empty.
fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    v.get(v.len().saturating_sub(1) / 2).copied()
}

/// A measurement's tasks per second (NaN where it has none).
fn tps(run: &Value) -> f64 {
    run["tasks_per_sec"].as_f64().unwrap_or(f64::NAN)
}

/// The run with the median tasks per second (the lower middle one for an even count).
fn median_run(runs: &[Value]) -> Option<Value> {
    let mid = median(runs.iter().map(tps).collect())?;
    runs.iter().find(|r| tps(r).total_cmp(&mid).is_eq()).cloned()
}

fn run_json(cmd: &mut Command) -> anyhow::Result<Value> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .with_context(|| format!("{cmd:?} printed no JSON"))?;
    Ok(serde_json::from_str(line)?)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut build = Command::new(env!("CARGO"));
    build.args(["build", "--release", "--bin", "fewshot-bench"]);
    // Without the feature, rebuild without it: a profiled binary left by an earlier run must
    // not time the plain measurements.
    build.args(["-p", "fewshot-bench"]);
    if args.time_split {
        build.args(["--features", "profile"]);
    }
    let status = build.status()?;
    if !status.success() {
        bail!("building fewshot-bench failed");
    }
    // Where cargo put it (a profiled build can live beside the plain one:
    // `CARGO_TARGET_DIR=target/prof cargo xtask bench --time-split`).
    let bench_bin = crate::release_binary("fewshot-bench");
    if let Some(unknown) = args.cases.iter().find(|n| !CASES.iter().any(|c| c.name == n.as_str())) {
        let known: Vec<&str> = CASES.iter().map(|c| c.name).collect();
        bail!("--cases {unknown}: unknown case; the cases are {}", known.join(", "));
    }
    std::fs::create_dir_all(&args.out)?;
    let mut results = Vec::new();
    let mut table = String::from(
        "| case | mode | threads | fewshot tasks/s | torch tasks/s | ratio | fewshot peak MB | torch peak MB | fewshot GFLOP/s | of gemm peak | gemm / elementwise / im2col / rest % | baseline tasks/s | vs baseline |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for &threads in &args.threads {
        let peak = run_json(Command::new(&bench_bin).args(["--mode", "gemm-peak", "--threads", &threads.to_string()]))?;
        let peak_gflops = peak["gflops_per_sec"].as_f64().unwrap_or(f64::NAN);
        eprintln!("gemm peak, {threads} thread(s): {peak_gflops:.1} GFLOP/s");
        results.push(serde_json::json!({ "case": "gemm-peak", "threads": threads, "fewshot": peak }));
        for case in CASES.iter().filter(|c| args.cases.iter().any(|n| n == c.name)) {
            for mode in &args.modes {
                let inner = if mode == "eval" { case.eval_steps } else { case.train_steps };
                let common = [
                    "--n-way".to_owned(),
                    case.n_way.to_string(),
                    "--q-query".into(),
                    case.q_query.to_string(),
                    "--meta-batch".into(),
                    case.meta_batch.to_string(),
                    "--inner-steps".into(),
                    inner.to_string(),
                    "--steps".into(),
                    args.steps.to_string(),
                    "--inner-lr".into(),
                    case.inner_lr.to_string(),
                ];
                let (side, channels, hidden) = case.shape;
                let shape = [
                    "--image-size",
                    &side.to_string(),
                    "--channels",
                    &channels.to_string(),
                    "--hidden",
                    &hidden.to_string(),
                ]
                .map(str::to_owned);
                let (mut ours_runs, mut base_runs, mut torch_runs) = (Vec::new(), Vec::new(), Vec::new());
                for _ in 0..args.rounds.max(1) {
                    ours_runs.push(run_json(
                        Command::new(&bench_bin)
                            .args(["--mode", mode, "--threads", &threads.to_string()])
                            .args(&common)
                            .args(&shape),
                    )?);
                    if let Some(bin) = &args.baseline {
                        // A baseline from before the shape flags knows only Omniglot's shape.
                        let mut cmd = Command::new(bin);
                        cmd.args(["--mode", mode, "--threads", &threads.to_string()]).args(&common);
                        if case.shape != OMNIGLOT {
                            cmd.args(&shape);
                        }
                        base_runs.push(run_json(&mut cmd)?);
                    }
                    if let Some(python) = &args.against_torch {
                        let mut cmd = Command::new(python);
                        // The reference script is written for Omniglot's shape; another shape
                        // runs it through xtask/torch_shapes.py, which sets the shape first.
                        if case.shape != OMNIGLOT {
                            cmd.arg("xtask/torch_shapes.py").arg(&args.torch_script).args(&shape);
                        } else {
                            cmd.arg(&args.torch_script);
                        }
                        cmd.args(["--threads", &threads.to_string(), "--json"]).args(&common);
                        match mode.as_str() {
                            "fo" => {
                                cmd.arg("--first-order");
                            }
                            "eval" => {
                                cmd.arg("--eval");
                            }
                            _ => {}
                        }
                        torch_runs.push(run_json(&mut cmd)?);
                    }
                }
                let ours = median_run(&ours_runs).expect("at least one round");
                let baseline = median_run(&base_runs);
                let torch = median_run(&torch_runs);
                let per_round = |others: &[Value]| -> Option<f64> {
                    median(ours_runs.iter().zip(others).map(|(o, t)| tps(o) / tps(t)).collect())
                };
                let (ratio, vs_baseline) = (per_round(&torch_runs), per_round(&base_runs));
                let ours_tps = tps(&ours);
                let torch_tps = torch.as_ref().and_then(|t| t["tasks_per_sec"].as_f64());
                let fmt = |v: Option<f64>, digits: usize| v.map_or("-".to_owned(), |v| format!("{v:.digits$}"));
                let base_tps = baseline.as_ref().and_then(|b| b["tasks_per_sec"].as_f64());
                let gflops = ours["achieved_gflops_per_sec"].as_f64().unwrap_or(f64::NAN);
                let split = &ours["time_split"];
                let split = if split.is_null() {
                    "-".to_owned()
                } else {
                    let pct = |k: &str| 100.0 * split[k].as_f64().unwrap_or(f64::NAN);
                    format!(
                        "{:.0} / {:.0} / {:.0} / {:.0}",
                        pct("gemm"),
                        pct("elementwise"),
                        pct("im2col"),
                        pct("rest")
                    )
                };
                let row = format!(
                    "| {} | {mode} | {threads} | {ours_tps:.1} | {} | {} | {:.0} | {} | {gflops:.1} | {:.0}% | {split} | {} | {} |\n",
                    case.name,
                    fmt(torch_tps, 1),
                    fmt(ratio, 2),
                    ours["peak_rss_mb"].as_f64().unwrap_or(f64::NAN),
                    fmt(torch.as_ref().and_then(|t| t["peak_rss_mb"].as_f64()), 0),
                    100.0 * gflops / peak_gflops,
                    fmt(base_tps, 1),
                    fmt(vs_baseline, 3),
                );
                eprint!("{row}");
                table += &row;
                results.push(serde_json::json!({
                    "case": case.name, "mode": mode, "threads": threads,
                    "fewshot": ours, "torch": torch, "baseline": baseline, "ratio": ratio,
                    "rounds": { "fewshot": ours_runs, "torch": torch_runs, "baseline": base_runs },
                }));
            }
        }
    }
    let jsonl: String = results.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(args.out.join("results.jsonl"), jsonl)?;
    let peaks: Vec<String> = results
        .iter()
        .filter(|r| r["case"] == "gemm-peak")
        .map(|r| {
            format!("{} thread(s) {:.1}", r["threads"], r["fewshot"]["gflops_per_sec"].as_f64().unwrap_or(f64::NAN))
        })
        .collect();
    table += &format!("\ngemm peak (GFLOP/s, f32, {}x{} products, one per thread): {}\n", 1024, 1024, peaks.join(", "));
    std::fs::write(args.out.join("table.md"), &table)?;
    println!("{table}");
    println!("results: {}", args.out.join("results.jsonl").display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_takes_the_middle_round() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), Some(2.0), "the lower middle of an even count");
        assert_eq!(median(vec![]), None);
        let runs: Vec<Value> =
            [9.0, 30.0, 12.0].iter().map(|t| serde_json::json!({ "tasks_per_sec": t, "round": *t as u32 })).collect();
        assert_eq!(median_run(&runs).unwrap()["round"], 12);
        assert!(median_run(&[]).is_none());
    }
}
