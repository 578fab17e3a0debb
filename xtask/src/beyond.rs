//! `cargo xtask experiment beyond-maml`: the MAML++ ablation on the course protocol. MAML (3
//! inner steps in training, so that a multi-step loss has steps to weigh), then each option
//! (multi-step loss, derivative-order annealing, cosine annealing, zero head, learned inner
//! rates, per-step batch norm) on its own, then all together, at one budget and one seed; each
//! run's last checkpoint is evaluated on 600 validation episodes. Then the protocol configs
//! (`PROTOCOLS`: the paper's 5- and 20-way MAML and MAML++ configs, the protonets, Proto-MAML, the
//! background-only 20-way ones and `hw15-boss-plus`): the runs of them found under `runs/<name>` (trained with `fewshot train --config configs/<name>.toml`; they
//! take hours, so this command does not start them) are tested on 600 episodes of their
//! protocol. Writes `report.md` and `results.json`. With `--keep-earlier`, arms and protocol
//! runs not on this machine keep what the earlier `results.json` says of them.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::ladder::Budget;
use crate::report::write_atomic;
use crate::runs::{fewshot_command, machine, metrics, read_json};

/// One arm of the ablation: its key, what it adds, and the `--set`s that add it.
struct Arm {
    key: &'static str,
    label: &'static str,
    sets: fn(steps: usize) -> Vec<String>,
}

const ARMS: [Arm; 9] = [
    Arm { key: "maml", label: "MAML (3 inner steps)", sets: |_| vec![] },
    Arm {
        key: "msl",
        label: "+ multi-step loss",
        sets: |steps| vec!["train.multi_step_loss=true".into(), format!("train.multi_step_loss_steps={}", steps / 3)],
    },
    Arm {
        key: "da",
        label: "+ derivative-order annealing",
        sets: |steps| vec![format!("train.first_order_steps={}", steps / 2)],
    },
    Arm {
        key: "cosine",
        label: "+ cosine annealing of meta_lr",
        sets: |steps| {
            vec![
                "train.meta_lr_schedule=\"cosine\"".into(),
                "train.meta_lr_min=0.00001".into(),
                format!("train.meta_lr_cosine_steps={steps}"),
            ]
        },
    },
    Arm { key: "zero-head", label: "+ zero head", sets: |_| vec!["train.head_init=\"zero\"".into()] },
    Arm { key: "lslr", label: "+ learned inner rates (LSLR)", sets: |_| vec!["train.learned_inner_lr=true".into()] },
    Arm { key: "per-step-bn", label: "+ per-step batch norm", sets: |_| vec!["train.per_step_bn=true".into()] },
    Arm {
        key: "all",
        label: "first four (MSL, DA, cosine, zero head)",
        sets: |steps| ARMS[1..5].iter().flat_map(|arm| (arm.sets)(steps)).collect(),
    },
    Arm {
        key: "all-six",
        label: "all six",
        sets: |steps| ARMS[1..7].iter().flat_map(|arm| (arm.sets)(steps)).collect(),
    },
];

/// The protocol configs whose runs the report tests, if they are there.
const PROTOCOLS: [&str; 12] = [
    "paper-5w1s",
    "paper-5w1s-plus",
    "paper-5w1s-plus15",
    "protonet-paper-5w1s",
    "paper-20w1s",
    "paper-20w1s-plus",
    "protonet-paper-20w1s",
    "proto-maml-paper-20w1s",
    "background-20w1s",
    "protonet-background-20w1s",
    "proto-maml-background-20w1s",
    "hw15-boss-plus",
];

/// The base config and the settings every arm shares.
const CONFIG: &str = "configs/hw15-strong.toml";
const COMMON: [&str; 3] = ["train.inner_steps=3", "train.val_log_points=0", "train.eval_inner_steps=3"];
/// Validation episodes each arm's last checkpoint is evaluated on.
const VAL_EPISODES: usize = 600;

fn steps(budget: Budget) -> usize {
    match budget {
        Budget::Quick => 3,
        Budget::Course => 200,
        Budget::Full => 1000,
    }
}

pub fn run(
    fewshot: &Path,
    budget: Budget,
    out: &Path,
    runs: &Path,
    threads: Option<usize>,
    keep_earlier: bool,
) -> anyhow::Result<()> {
    let steps = steps(budget);
    let quick = budget == Budget::Quick;
    let n_val = if quick { 16 } else { VAL_EPISODES };
    let earlier = if keep_earlier { Some(Earlier::read(out, budget, steps)?) } else { None };
    let mut results = Vec::new();
    for (i, arm) in ARMS.iter().enumerate() {
        let dir = runs.join(budget.name()).join(arm.key);
        if let Some(kept) = earlier.as_ref().filter(|_| !dir.join("config.toml").exists()).and_then(|e| e.arm(arm.key))
        {
            eprintln!("== beyond-maml: arm {} kept from {} (no run in {})", arm.key, results_path(out), dir.display());
            results.push(kept);
            continue;
        }
        eprintln!(
            "== beyond-maml {} budget: arm {}/{}: {} in {}",
            budget.name(),
            i + 1,
            ARMS.len(),
            arm.key,
            dir.display()
        );
        let mut sets: Vec<String> = COMMON.iter().map(|s| s.to_string()).collect();
        sets.push(format!("train.steps={steps}"));
        sets.push(format!("train.val_every={}", (steps / 4).max(1)));
        if quick {
            sets.push("train.val_episodes=16".into());
        }
        sets.extend((arm.sets)(steps));
        crate::runs::train_or_resume(fewshot, threads, CONFIG, &dir, &sets)?;
        let last = dir.join("checkpoints/last.safetensors");
        let mut eval = fewshot_command(fewshot, threads);
        eval.args(["eval", "--checkpoint"]).arg(&last).args(["--json", "--validation", "--n", &n_val.to_string()]);
        let output = eval.output().with_context(|| format!("running {eval:?}"))?;
        if !output.status.success() {
            bail!("{eval:?} failed:\n{}", String::from_utf8_lossy(&output.stderr));
        }
        let val: Value = serde_json::from_slice(&output.stdout).with_context(|| format!("{eval:?} printed no JSON"))?;
        let lines = metrics(&dir)?;
        let final_line = lines.last().context("empty metrics.jsonl")?;
        let mut command = format!("fewshot train --config {CONFIG} --out {}", dir.display());
        for s in &sets {
            command += &format!(" --set {s}");
        }
        results.push(json!({
            "key": arm.key,
            "label": arm.label,
            "command": command,
            "settings": (arm.sets)(steps),
            "steps": final_line["step"],
            "wall_s": final_line["wall_s"],
            "tasks_seen": final_line["tasks_seen"],
            "val": val,
            "run": read_json(&dir.join("run.json")).unwrap_or(Value::Null),
        }));
    }
    let protocols = if quick { Vec::new() } else { protocol_results(fewshot, runs, threads, earlier.as_ref())? };
    std::fs::create_dir_all(out)?;
    let all = json!({
        "budget": budget.name(), "steps": steps, "machine": machine(), "arms": results, "protocols": protocols,
    });
    // Atomic: with --keep-earlier the kept rows come from the file this replaces.
    write_atomic(&out.join("results.json"), serde_json::to_string_pretty(&all)?.as_bytes())?;
    write_atomic(&out.join("report.md"), report(&all).as_bytes())?;
    eprintln!("report: {}", out.join("report.md").display());
    Ok(())
}

/// Each protocol config's run under `runs/<name>` (beside the ablation's `runs`), if one is
/// there: its best checkpoint on its protocol's default test set (`fewshot eval`'s), its
/// training time and validation curve.
fn protocol_results(
    fewshot: &Path,
    runs: &Path,
    threads: Option<usize>,
    earlier: Option<&Earlier>,
) -> anyhow::Result<Vec<Value>> {
    let root = runs.parent().unwrap_or(Path::new("runs"));
    let mut out = Vec::new();
    for name in PROTOCOLS {
        let dir = root.join(name);
        let best = dir.join("checkpoints/best.safetensors");
        // An earlier test of a run that is not here, or that got further than this one (a run
        // started again), is kept rather than replaced.
        let lines = if best.exists() { metrics(&dir)? } else { Vec::new() };
        let here = lines.last().and_then(|l| l["step"].as_u64());
        if let Some(kept) = earlier
            .and_then(|e| e.protocol(name))
            .filter(|k| here.is_none_or(|here| k["steps"].as_u64().is_some_and(|there| there > here)))
        {
            let here = here.map_or("no run".to_owned(), |s| format!("{s} steps"));
            eprintln!("== beyond-maml: {name}: the earlier test kept ({} steps; here: {here})", kept["steps"]);
            out.push(kept);
            continue;
        }
        if !best.exists() {
            eprintln!("== beyond-maml: no run of {name} in {} (train it with configs/{name}.toml)", dir.display());
            out.push(json!({ "name": name, "run": Value::Null }));
            continue;
        }
        eprintln!("== beyond-maml: testing {}", best.display());
        // The default test set: 600 seeded episodes of the config's protocol, or the 640 fixed
        // course tasks for a 5-way 1-shot 1-query course model.
        let test = eval_json(fewshot, threads, &best)?;
        // The kept best checkpoints (`train.keep_best`) as an ensemble, MAML++'s test protocol.
        let top = dir.join("checkpoints/top");
        let members = std::fs::read_dir(&top)
            .map(|d| {
                d.filter_map(Result::ok).filter(|e| e.path().extension().is_some_and(|x| x == "safetensors")).count()
            })
            .unwrap_or(0);
        let ensemble = if members >= 2 {
            eprintln!("== beyond-maml: testing the ensemble of {members} checkpoints in {}", top.display());
            eval_json(fewshot, threads, &top)?
        } else {
            Value::Null
        };
        let validations: Vec<Value> = lines
            .iter()
            .filter(|l| !l["val_acc"].is_null())
            .map(|l| json!({ "step": l["step"], "val_acc": l["val_acc"], "wall_s": l["wall_s"] }))
            .collect();
        let config = read_json(&dir.join("run.json")).unwrap_or(Value::Null);
        out.push(json!({
            "name": name,
            "run": dir.display().to_string(),
            "steps": lines.last().map(|l| l["step"].clone()),
            "configured_steps": configured_steps(&dir),
            "wall_s": lines.last().map(|l| l["wall_s"].clone()),
            "validations": validations,
            "test": test,
            "ensemble": ensemble,
            "run_json": config,
        }));
    }
    Ok(out)
}

/// The results an earlier invocation wrote (`--keep-earlier`).
struct Earlier {
    all: Value,
}

/// Where the earlier results are read from, for messages.
fn results_path(out: &Path) -> String {
    out.join("results.json").display().to_string()
}

impl Earlier {
    /// `out/results.json`, which must be of the same budget and steps.
    fn read(out: &Path, budget: Budget, steps: usize) -> anyhow::Result<Self> {
        let all = read_json(&out.join("results.json")).with_context(|| {
            format!("--keep-earlier keeps the results in {}; without it every arm is trained", results_path(out))
        })?;
        if all["budget"].as_str() != Some(budget.name()) || all["steps"].as_u64() != Some(steps as u64) {
            bail!(
                "{} holds the {} budget ({} steps), not {} ({steps} steps): its arms cannot be kept",
                results_path(out),
                all["budget"],
                all["steps"],
                budget.name()
            );
        }
        Ok(Self { all })
    }

    /// The arm `key`, marked as kept.
    fn arm(&self, key: &str) -> Option<Value> {
        Self::find(&self.all["arms"], "key", key)
    }

    /// The protocol config `name`'s test, if there was a run of it, marked as kept.
    fn protocol(&self, name: &str) -> Option<Value> {
        Self::find(&self.all["protocols"], "name", name).filter(|p| !p["run"].is_null())
    }

    fn find(list: &Value, field: &str, value: &str) -> Option<Value> {
        let mut found = list.as_array()?.iter().find(|x| x[field] == value)?.clone();
        found["kept"] = Value::Bool(true);
        Some(found)
    }
}

/// `train.steps` of the config a run saved (`<run>/config.toml`, as `fewshot train` writes
/// it: a `[train]` table with a `steps = N` line), if it can be read.
pub fn configured_steps(dir: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join("config.toml")).ok()?;
    let mut table = "";
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            table = line;
        } else if table == "[train]"
            && let Some((key, value)) = line.split_once('=')
            && key.trim() == "steps"
        {
            return value.trim().parse().ok();
        }
    }
    None
}

/// `fewshot eval --checkpoint <checkpoint> --json` on its default test set: the JSON it prints.
fn eval_json(fewshot: &Path, threads: Option<usize>, checkpoint: &Path) -> anyhow::Result<Value> {
    let mut eval = fewshot_command(fewshot, threads);
    eval.args(["eval", "--checkpoint"]).arg(checkpoint).arg("--json");
    let output = eval.output().with_context(|| format!("running {eval:?}"))?;
    if !output.status.success() {
        bail!("{eval:?} failed:\n{}", String::from_utf8_lossy(&output.stderr));
    }
    serde_json::from_slice(&output.stdout).with_context(|| format!("{eval:?} printed no JSON"))
}

/// The footnote of a table with kept rows.
const KEPT: &str = "\n(kept): not run by this invocation. `--keep-earlier` kept what an earlier one wrote \
                    to `results.json`, because the run is not on this machine or is less far along \
                    here (started again); `git log -p results.json` says when it was tested.\n";

/// The report: the ablation table, each arm against plain MAML in words, and the protocols.
fn report(all: &Value) -> String {
    let arms = all["arms"].as_array().cloned().unwrap_or_default();
    let mut md = String::from("# Beyond MAML: the MAML++ ablation\n\n");
    let _ = writeln!(
        md,
        "Generated by `cargo xtask experiment beyond-maml --budget {}` from `results.json`. Course \
         protocol (5-way 1-shot, 1 query per class), `{CONFIG}` with 3 inner steps in training, \
         {} meta-steps of 32 tasks, seed 0 for every arm. Each arm's last checkpoint is evaluated \
         on {} validation episodes (3 inner steps); intervals are 95%. Wall minutes are this \
         machine's (2 cores), with other work running at times: compare them loosely.\n",
        all["budget"].as_str().unwrap_or("?"),
        all["steps"],
        arms.first().and_then(|a| a["val"]["episodes"].as_u64()).unwrap_or(0),
    );
    md += "| arm | validation accuracy | vs MAML | wall min | settings |\n| --- | --- | --- | --- | --- |\n";
    let base = arms
        .first()
        .map(|a| (a["val"]["accuracy"].as_f64().unwrap_or(f64::NAN), a["val"]["ci95"].as_f64().unwrap_or(f64::NAN)));
    for a in &arms {
        let (mean, ci) =
            (a["val"]["accuracy"].as_f64().unwrap_or(f64::NAN), a["val"]["ci95"].as_f64().unwrap_or(f64::NAN));
        let verdict = match base {
            Some((b, bci)) if a["key"] != "maml" => {
                let d = mean - b;
                let word = if d.abs() <= (ci.powi(2) + bci.powi(2)).sqrt() {
                    "within the noise"
                } else if d > 0.0 {
                    "better"
                } else {
                    "worse"
                };
                format!("{:+.3} ({word})", d)
            }
            _ => "-".into(),
        };
        // What the arm adds to plain MAML.
        let settings =
            a["settings"].as_array().into_iter().flatten().filter_map(Value::as_str).collect::<Vec<_>>().join(", ");
        let _ = writeln!(
            md,
            "| {}{} | {:.3} ± {:.3} | {verdict} | {:.1} | {} |",
            a["label"].as_str().unwrap_or("?"),
            if a["kept"] == true { " (kept)" } else { "" },
            mean,
            ci,
            a["wall_s"].as_f64().unwrap_or(f64::NAN) / 60.0,
            if settings.is_empty() { "-".into() } else { format!("`{settings}`") }
        );
    }
    if arms.iter().any(|a| a["kept"] == true) {
        md += KEPT;
    }
    md += "\n\"Within the noise\": the difference is smaller than the two intervals combined \
           (sqrt(ci_a^2 + ci_b^2)). A short budget favours options that speed up early training \
           and says little about where each arm would end.\n\n";
    md += "The `shared` head initialisation is not an arm of its own: under softmax \
           cross-entropy it labels exactly as the zero head does (the shared row shifts every \
           class's logit alike; `fewshot-meta`'s tests pin this down).\n\n";
    if all["protocols"].as_array().is_none_or(|p| p.is_empty()) {
        md += "## Protocols\n\nNot tested with this budget (the full and course budgets test the \
               protocol configs' runs found under `runs/`).\n";
        return md;
    }
    md += "## Protocols\n\nEach config's run (`fewshot train --config configs/<name>.toml`, 2 \
           cores), its best-validation checkpoint tested by `fewshot eval --checkpoint \
           runs/<name>/checkpoints/best.safetensors` (600 seeded episodes of its protocol's test \
           classes; for the 5-way 1-shot course model, the 640 course test tasks; the configs \
           state the episode shapes and inner steps). The wall time is the run's own clock, other \
           work sharing the machine at times. Where the run kept its best checkpoints \
           (`train.keep_best`), the last column tests them as an ensemble on the same episodes \
           (`fewshot eval --checkpoint runs/<name>/checkpoints/top`: each adapts on its own, the \
           mean softmax labels a query; the test protocol of MAML++'s published code, which \
           ensembles its top 5 validation checkpoints); members and their own accuracies are in \
           `results.json`.\n\n";
    md += "| config | trained steps | best validation | test accuracy | test episodes | wall min | top-k ensemble |\n\
           | --- | --- | --- | --- | --- | --- | --- |\n";
    for p in all["protocols"].as_array().into_iter().flatten() {
        let name = p["name"].as_str().unwrap_or("?");
        if p["run"].is_null() {
            let _ = writeln!(md, "| `{name}` | not trained here | - | - | - | - | - |");
            continue;
        }
        let best = p["validations"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v["val_acc"].as_f64())
            .fold(f64::NAN, f64::max);
        // A run still training (it resumes with --resume) says how far it is.
        let mut steps = match (p["steps"].as_u64(), p["configured_steps"].as_u64()) {
            (Some(done), Some(all)) if done < all => format!("{done} of {all} (still training)"),
            _ => p["steps"].to_string(),
        };
        if p["kept"] == true {
            steps += " (kept)";
        }
        let _ = writeln!(
            md,
            "| `{name}` | {steps} | {best:.4} | {:.4} ± {:.4} | {} ({}-way) | {:.0} | {} |",
            p["test"]["accuracy"].as_f64().unwrap_or(f64::NAN),
            p["test"]["ci95"].as_f64().unwrap_or(f64::NAN),
            p["test"]["episodes"],
            p["test"]["n_way"],
            p["wall_s"].as_f64().unwrap_or(f64::NAN) / 60.0,
            match p["ensemble"]["accuracy"].as_f64() {
                Some(a) => format!(
                    "{a:.4} ± {:.4} ({} models)",
                    p["ensemble"]["ci95"].as_f64().unwrap_or(f64::NAN),
                    p["ensemble"]["members"].as_array().map_or(0, Vec::len)
                ),
                None => "-".into(),
            },
        );
    }
    if all["protocols"].as_array().into_iter().flatten().any(|p| p["kept"] == true) {
        md += KEPT;
    }
    md += "\nValidation curves (step: accuracy):\n\n";
    for p in all["protocols"].as_array().into_iter().flatten().filter(|p| !p["run"].is_null()) {
        let curve: Vec<String> = p["validations"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| format!("{}: {:.3}", v["step"], v["val_acc"].as_f64().unwrap_or(f64::NAN)))
            .collect();
        let _ = writeln!(md, "- `{}`: {}", p["name"].as_str().unwrap_or("?"), curve.join(", "));
    }
    md
}
