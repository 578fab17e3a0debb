//! The photo experiments: `cargo xtask photos` unpacks the shared Tiny ImageNet classes into
//! `data/tiny-imagenet-fs/` (checked against their SHA-256 first), and `cargo xtask experiment
//! photos` trains each photo recipe (the transfer baseline, the prototypical network,
//! first-order MAML; or reuses and resumes what `runs/photos/<budget>/` holds), tests each
//! best checkpoint on 600 5-way 1-shot and 600 5-way 5-shot episodes of the 40 validation
//! classes, and writes `reports/photos/{report.md,results.json,val-vs-time-<budget>.svg}`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use plotters::prelude::*;
use serde_json::{Value, json};

use crate::ladder::Budget;
use crate::runs::{fewshot_command, machine, metrics, read_json};

/// Where the photos are unpacked (the configs' `data.folder`).
pub const PHOTOS: &str = "data/tiny-imagenet-fs";

#[derive(clap::Args)]
pub struct UnpackArgs {
    /// The folder that holds tiny-imagenet-fs.tar and its SHA256SUMS.
    #[arg(long, default_value = "../shared/tiny-imagenet")]
    source: PathBuf,
    /// Where the photos go (the photo configs read data/tiny-imagenet-fs).
    #[arg(long, default_value = PHOTOS)]
    dest: PathBuf,
}

/// Classes per split of the shared photos.
const EXPECTED: [(&str, usize); 2] = [("train", 121), ("val", 40)];

/// Whether `dir` holds the unpacked photos (the expected class folders in train/ and val/).
fn unpacked(dir: &Path) -> bool {
    EXPECTED.iter().all(|(split, n)| std::fs::read_dir(dir.join(split)).is_ok_and(|r| r.flatten().count() == *n))
}

/// `cargo xtask photos`: verify the archive, unpack it beside `dest` and move it into place
/// (an interrupted unpack leaves no half folder at `dest`).
pub fn unpack(args: UnpackArgs) -> anyhow::Result<()> {
    if unpacked(&args.dest) {
        eprintln!("{}: already unpacked", args.dest.display());
        return Ok(());
    }
    if args.dest.exists() {
        bail!(
            "{} exists but does not hold the 121 train/ and 40 val/ class folders of the shared photos: move it \
             aside (nothing is deleted) and run again",
            args.dest.display()
        );
    }
    let tar = args.source.join("tiny-imagenet-fs.tar");
    let sums = args.source.join("SHA256SUMS");
    let text = std::fs::read_to_string(&sums).with_context(|| format!("reading {}", sums.display()))?;
    let expected = omniglot_data::parse_sha256sums(&text, &sums.display().to_string())?
        .into_iter()
        .find(|(_, name)| name == "tiny-imagenet-fs.tar")
        .with_context(|| format!("{} has no line for tiny-imagenet-fs.tar", sums.display()))?
        .0;
    let actual = omniglot_data::sha256_file(&tar)?;
    if !actual.eq_ignore_ascii_case(&expected) {
        bail!("{}: SHA-256 {actual}, but {} says {expected}: the archive is damaged", tar.display(), sums.display());
    }
    let parent = args.dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let tmp = parent.join(format!(".photos-unpack-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let status = Command::new("tar").arg("-xf").arg(&tar).arg("-C").arg(&tmp).status().context("running tar")?;
    if !status.success() {
        bail!("tar -xf {} failed ({status})", tar.display());
    }
    std::fs::rename(tmp.join("tiny-imagenet-fs"), &args.dest)
        .with_context(|| format!("moving the photos to {}", args.dest.display()))?;
    std::fs::remove_dir_all(&tmp).ok();
    if !unpacked(&args.dest) {
        bail!("{}: unpacked, but not 121 train/ and 40 val/ classes", args.dest.display());
    }
    eprintln!("unpacked {} (verified SHA-256 {actual})", args.dest.display());
    Ok(())
}

/// One recipe of the report.
struct Recipe {
    key: &'static str,
    label: &'static str,
    config: &'static str,
    /// The shape its validation curve is measured on.
    validated: &'static str,
    /// `--set`s of the full budget (the ablation's arms).
    sets: &'static [&'static str],
    /// Shot counts it is tested at.
    shots: &'static [u64],
    /// Test episodes at the full budget.
    episodes: usize,
}

const RECIPES: [Recipe; 3] = [
    Recipe {
        key: "transfer",
        label: "Transfer (121-way pre-training, nearest centroid)",
        config: "configs/photos-transfer.toml",
        validated: "5-way 5-shot",
        sets: &[],
        shots: &[1, 5],
        episodes: 600,
    },
    Recipe {
        key: "protonet",
        label: "Prototypical network",
        config: "configs/photos-protonet-5w5s.toml",
        validated: "5-way 5-shot",
        sets: &[],
        shots: &[1, 5],
        episodes: 600,
    },
    Recipe {
        key: "fomaml",
        label: "First-order MAML",
        config: "configs/photos-fomaml-5w1s.toml",
        validated: "5-way 1-shot",
        sets: &[],
        shots: &[1, 5],
        episodes: 600,
    },
];

/// The short schedule of the ablation's arms (the prototypical network's config).
const ABLATION_SCHEDULE: [&str; 4] =
    ["train.steps=250", "train.meta_lr_cosine_steps=250", "train.val_every=125", "train.checkpoint_every=125"];

/// The photo pipeline's pieces, added one at a time to the prototypical network.
const ABLATION: [Recipe; 4] = [
    Recipe {
        key: "ablation-plain",
        label: "no pipeline",
        config: "configs/photos-protonet-5w5s.toml",
        validated: "5-way 5-shot",
        sets: &["data.normalize=false", "augment.crop_padding=0", "augment.flip=false", "augment.color_jitter=0.0"],
        shots: &[1],
        episodes: 300,
    },
    Recipe {
        key: "ablation-normalize",
        label: "+ normalisation",
        config: "configs/photos-protonet-5w5s.toml",
        validated: "5-way 5-shot",
        sets: &["augment.crop_padding=0", "augment.flip=false", "augment.color_jitter=0.0"],
        shots: &[1],
        episodes: 300,
    },
    Recipe {
        key: "ablation-crop-flip",
        label: "+ crop and flip",
        config: "configs/photos-protonet-5w5s.toml",
        validated: "5-way 5-shot",
        sets: &["augment.color_jitter=0.0"],
        shots: &[1],
        episodes: 300,
    },
    Recipe {
        key: "ablation-jitter",
        label: "+ colour jitter (the config)",
        config: "configs/photos-protonet-5w5s.toml",
        validated: "5-way 5-shot",
        sets: &[],
        shots: &[1],
        episodes: 300,
    },
];

/// `cargo xtask experiment photos`.
pub fn run(
    fewshot: &Path,
    budget: Budget,
    out: &Path,
    runs: &Path,
    threads: Option<usize>,
    no_train: bool,
) -> anyhow::Result<()> {
    if budget == Budget::Course {
        bail!("experiment photos has the budgets quick and full (course is the HW15 report's)");
    }
    if !unpacked(Path::new(PHOTOS)) {
        bail!("{PHOTOS} does not hold the shared photos: run `cargo xtask photos` first");
    }
    let quick = budget == Budget::Quick;
    let mut results = serde_json::Map::new();
    for recipe in RECIPES.iter().chain(&ABLATION) {
        let dir = runs.join(budget.name()).join(recipe.key);
        eprintln!("== photos {} budget: {} in {}", budget.name(), recipe.key, dir.display());
        results.insert(recipe.key.into(), run_recipe(fewshot, recipe, &dir, quick, threads, no_train)?);
    }
    let all = json!({
        "budget": budget.name(),
        "runs": results,
        "date": crate::experiment::command_output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])),
        "machine": machine(),
    });
    crate::report::merge_results(out, budget, all)?;
    write_report(out)?;
    eprintln!("report: {}", out.join("report.md").display());
    Ok(())
}

/// The `--set`s of a recipe at a budget: quick trains 3 steps and validates on 8 episodes;
/// the ablation's arms train on a short schedule.
fn budget_sets(recipe: &Recipe, quick: bool) -> Vec<&'static str> {
    let mut sets = recipe.sets.to_vec();
    if recipe.key.starts_with("ablation") {
        sets.extend(ABLATION_SCHEDULE);
    }
    if quick {
        sets.extend([
            "train.steps=3",
            "train.val_every=2",
            "train.val_episodes=8",
            "train.checkpoint_every=2",
            "train.log_every=1",
        ]);
    }
    sets
}

fn run_recipe(
    fewshot: &Path,
    recipe: &Recipe,
    dir: &Path,
    quick: bool,
    threads: Option<usize>,
    no_train: bool,
) -> anyhow::Result<Value> {
    if !no_train {
        crate::runs::train_or_resume(fewshot, threads, recipe.config, dir, &budget_sets(recipe, quick))?;
    } else if !dir.join("checkpoints/best.safetensors").exists() {
        bail!("--no-train: {} holds no trained run", dir.display());
    }
    let best = dir.join("checkpoints/best.safetensors");
    let manifest = read_json(&dir.join("checkpoints/best.safetensors.json"))?;
    let provenance = read_json(&dir.join("run.json")).unwrap_or(Value::Null);
    let lines = metrics(dir)?;
    let last = lines.last().context("empty metrics.jsonl")?;
    let cache = dir.join("experiment.json");
    let tests = match read_json(&cache) {
        Ok(cached) if cached["best_sha256"] == manifest["sha256"] => {
            eprintln!("   reusing the evaluations in {}", cache.display());
            cached["tests"].clone()
        }
        _ => {
            let n = if quick { "16".to_owned() } else { recipe.episodes.to_string() };
            let mut tests = Vec::new();
            for k in recipe.shots.iter().map(u64::to_string) {
                let mut cmd = fewshot_command(fewshot, threads);
                cmd.args(["eval", "--checkpoint"]).arg(&best);
                cmd.args(["--validation", "--n", &n, "--n-way", "5", "--k-shot", &k, "--n-query", "15", "--json"]);
                let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
                if !out.status.success() {
                    bail!("{cmd:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
                }
                let line = String::from_utf8_lossy(&out.stdout);
                tests.push(serde_json::from_str::<Value>(line.lines().next().unwrap_or(""))?);
            }
            let tests = Value::Array(tests);
            let record = json!({ "best_sha256": manifest["sha256"], "tests": tests });
            crate::report::write_atomic(&cache, serde_json::to_string_pretty(&record)?.as_bytes())?;
            tests
        }
    };
    let mut command = format!("fewshot train --config {} --out {}", recipe.config, dir.display());
    for s in budget_sets(recipe, quick) {
        command += &format!(" --set {s}");
    }
    let curve: Vec<Value> = lines
        .iter()
        .filter(|l| l["val_acc"].is_number())
        .map(|l| json!([l["wall_s"], l["val_acc"], l["val_ci95"]]))
        .collect();
    Ok(json!({
        "key": recipe.key,
        "label": recipe.label,
        "config": recipe.config,
        "validated": recipe.validated,
        "command": command,
        "steps": last["step"],
        "configured_steps": crate::beyond::configured_steps(dir),
        "wall_s": last["wall_s"],
        "best_val": manifest["best_val"],
        "best_step": manifest["step"],
        "tests": tests,
        "curve": curve,
        "machine": Some(provenance["machine"].clone()).filter(|m| m.is_object()).unwrap_or_else(machine),
        "revision": provenance["git_revision"].clone(),
    }))
}

/// `report.md` and one figure per budget from `<out>/results.json`.
pub fn write_report(out: &Path) -> anyhow::Result<()> {
    let all = read_json(&out.join("results.json"))?;
    let mut md = String::from(
        "# Few-shot learning on colour photos\n\n\
         Regenerate: `cargo xtask photos` (unpacks the shared photos into data/tiny-imagenet-fs/), then \
         `cargo xtask experiment photos --budget full` (trains what runs/photos/full/ lacks; `--budget quick` is CI's \
         pipeline check, written under target/).\n\n\
         Data: the shared Tiny ImageNet classes (64x64 RGB JPEGs, some gray): 121 training classes and 40 \
         validation classes of 300 images. Every figure is on the 40 validation classes (5-way episodes, 15 queries \
         per class, 600 episodes at the full budget, 95% intervals); the classes held back for testing were not \
         used. Each recipe's \
         best validation checkpoint is tested at both shot counts.\n",
    );
    for budget in [Budget::Full, Budget::Quick] {
        let r = &all[budget.name()];
        if !r.is_object() {
            continue;
        }
        let _ = writeln!(md, "\n## Budget `{}` ({})\n", budget.name(), r["date"].as_str().unwrap_or("?"));
        md += "| recipe | config | steps | training time | 5-way 1-shot | 5-way 5-shot | best validation (step, shape) | machine | revision |\n";
        md += "| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n";
        let mut curves = Vec::new();
        for recipe in &RECIPES {
            let run = &r["runs"][recipe.key];
            if !run.is_object() {
                continue;
            }
            let test = |k: u64| {
                run["tests"].as_array().and_then(|t| t.iter().find(|x| x["k_shot"].as_u64() == Some(k))).map_or_else(
                    || "-".to_owned(),
                    |x| {
                        format!(
                            "{:.4} ± {:.4} ({} ep.)",
                            x["accuracy"].as_f64().unwrap_or(f64::NAN),
                            x["ci95"].as_f64().unwrap_or(0.0),
                            x["episodes"]
                        )
                    },
                )
            };
            let m = &run["machine"];
            let _ = writeln!(
                md,
                "| {} | `{}` | {} | {:.0} min | {} | {} | {:.4} ({}, {}) | {}, {} cores, {} | {} |",
                run["label"].as_str().unwrap_or(recipe.key),
                run["config"].as_str().unwrap_or("?"),
                match (run["steps"].as_u64(), run["configured_steps"].as_u64()) {
                    (Some(s), Some(c)) if s < c => format!("{s} of {c} (stopped)"),
                    (Some(s), _) => s.to_string(),
                    _ => "?".to_owned(),
                },
                run["wall_s"].as_f64().unwrap_or(0.0) / 60.0,
                test(1),
                test(5),
                run["best_val"].as_f64().unwrap_or(f64::NAN),
                run["best_step"],
                recipe.validated,
                m["cpu"].as_str().unwrap_or("?"),
                m["cores"],
                m["threads"].as_u64().map_or_else(|| "threads as run".to_owned(), |t| format!("{t} threads")),
                run["revision"].as_str().map_or("?", |s| &s[..s.len().min(7)]),
            );
            let pts: Vec<(f64, f64, f64)> = run["curve"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|p| Some((p[0].as_f64()? / 60.0, p[1].as_f64()?, p[2].as_f64().unwrap_or(0.0))))
                        .collect()
                })
                .unwrap_or_default();
            curves.push((format!("{} ({})", run["label"].as_str().unwrap_or(recipe.key), recipe.validated), pts));
        }
        let arms: Vec<&Value> = ABLATION.iter().map(|a| &r["runs"][a.key]).filter(|v| v.is_object()).collect();
        if !arms.is_empty() {
            md += "\n### The photo pipeline, one piece at a time\n\nThe prototypical network's config on a short schedule \
                   (250 steps, cosine to the end), each row adding one piece to the one above; tested 5-way 1-shot on \
                   the validation classes:\n\n| pipeline | 5-way 1-shot | change | training time |\n| --- | --- | --- | --- |\n";
            let mut previous: Option<f64> = None;
            for (arm, run) in ABLATION.iter().zip(&arms) {
                let t = &run["tests"][0];
                let acc = t["accuracy"].as_f64().unwrap_or(f64::NAN);
                let change = previous.map_or_else(|| "-".to_owned(), |p| format!("{:+.4}", acc - p));
                let _ = writeln!(
                    md,
                    "| {} | {acc:.4} ± {:.4} ({} ep.) | {change} | {:.0} min |",
                    arm.label,
                    t["ci95"].as_f64().unwrap_or(0.0),
                    t["episodes"],
                    run["wall_s"].as_f64().unwrap_or(0.0) / 60.0
                );
                previous = Some(acc);
            }
        }
        let name = format!("val-vs-time-{}.svg", budget.name());
        figure(&curves, &out.join(&name))?;
        let _ = writeln!(
            md,
            "\n![validation accuracy against training time]({name})\n\n*Validation accuracy (the run's own fixed \
             validation episodes, in the shape named; 95% bands) against training time.*"
        );
        md += "\nThe commands: ";
        let cmds: Vec<String> =
            RECIPES.iter().filter_map(|rc| r["runs"][rc.key]["command"].as_str().map(|c| format!("`{c}`"))).collect();
        md += &cmds.join("; ");
        md += ". Tests: `fewshot eval --checkpoint RUN/checkpoints/best.safetensors --validation --n 600 --n-way 5 \
               --k-shot K --n-query 15`.\n";
    }
    crate::report::write_atomic(&out.join("report.md"), md.as_bytes())
}

/// Validation accuracy (y) against training minutes (x), one curve per recipe.
fn figure(curves: &[(String, crate::report::Curve)], path: &Path) -> anyhow::Result<()> {
    let x_max = curves.iter().flat_map(|(_, p)| p.iter().map(|q| q.0)).fold(1e-3f64, f64::max) * 1.05;
    let lo = curves.iter().flat_map(|(_, p)| p.iter().map(|q| q.1 - q.2)).fold(1.0f64, f64::min);
    let hi = curves.iter().flat_map(|(_, p)| p.iter().map(|q| q.1 + q.2)).fold(0.0f64, f64::max);
    let (lo, hi) = (((lo - 0.02).max(0.0) * 20.0).floor() / 20.0, ((hi + 0.02).min(1.0) * 20.0).ceil() / 20.0);
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Photos: validation accuracy against training time", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(48)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, lo..hi.max(lo + 0.05))?;
    chart
        .configure_mesh()
        .x_desc("training time (minutes)")
        .y_desc("validation accuracy (5-way)")
        .label_style(("sans-serif", 15))
        .draw()?;
    crate::report::draw_curves(&mut chart, curves)?;
    root.present()?;
    Ok(())
}
