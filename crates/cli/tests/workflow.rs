//! The `fewshot` binary end to end on generated data: train -> eval -> predict, the files each
//! step leaves, resume equality, and clear errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use omniglot_data::Subset;
use omniglot_data::synthetic::{self, Spec};

fn fewshot(args: &[&str], data: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fewshot"))
        .args(args)
        .env("OMNIGLOT_DATA_DIR", data)
        .env_remove("OMNIGLOT_SOURCE")
        .env("RUST_LOG", "warn")
        .output()
        .expect("running fewshot")
}

#[track_caller]
fn ok(out: Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "fewshot failed:\n{stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned() + &stderr
}

#[track_caller]
fn fails(out: Output) -> String {
    assert!(!out.status.success(), "fewshot unexpectedly succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Where a run of `fewshot` sends its standard output.
enum Stdout {
    /// `/dev/full`: every write fails with "no space left".
    Full,
    /// A pipe whose reader closed its end before anything was written.
    ClosedPipe,
    /// No standard output at all (file descriptor 1 closed, `>&-`).
    Closed,
    /// `> /dev/null`, opened for writing as a shell does.
    Null,
}

fn with_stdout(args: &[&str], data: &Path, stdout: Stdout) -> Output {
    use std::process::Stdio;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fewshot"));
    cmd.args(args).env("OMNIGLOT_DATA_DIR", data).env_remove("OMNIGLOT_SOURCE").env("RUST_LOG", "warn");
    cmd.stderr(Stdio::piped());
    match stdout {
        Stdout::Full => {
            cmd.stdout(std::fs::OpenOptions::new().write(true).open("/dev/full").expect("/dev/full"));
        }
        Stdout::ClosedPipe => {
            cmd.stdout(Stdio::piped());
        }
        Stdout::Closed => {
            use std::os::unix::process::CommandExt;
            unsafe extern "C" {
                fn close(fd: i32) -> i32;
            }
            // SAFETY: close(2) is async-signal-safe; only the child's descriptor 1 goes.
            unsafe {
                cmd.pre_exec(|| {
                    close(1);
                    Ok(())
                });
            }
        }
        Stdout::Null => {
            cmd.stdout(std::fs::OpenOptions::new().write(true).open("/dev/null").expect("/dev/null"));
        }
    }
    let mut child = cmd.spawn().expect("running fewshot");
    drop(child.stdout.take()); // the reader goes away at once
    child.wait_with_output().expect("waiting for fewshot")
}

/// A small synthetic Omniglot: 30 background characters, 10 evaluation ones.
fn dataset(dir: &Path) {
    synthetic::write_archive(dir, Subset::Background, Spec { alphabets: 3, characters_per_alphabet: 10 }).unwrap();
    synthetic::write_archive(dir, Subset::Evaluation, Spec { alphabets: 1, characters_per_alphabet: 10 }).unwrap();
}

fn config(dir: &Path, method: &str) -> PathBuf {
    let path = dir.join(format!("tiny-{method}.toml"));
    let text = format!(
        "name = \"tiny-{method}\"\nseed = 3\n[data]\nexpect = \"any\"\n[model]\nhidden = 8\n\
         [train]\nmethod = \"{method}\"\nsteps = 6\nmeta_batch_size = 4\nval_every = 3\nval_episodes = 8\n\
         checkpoint_every = 2\nlog_every = 1\ntask_chunk = 2\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Folder tasks made of evaluation-set drawings: `n_tasks` tasks of `n_way` classes.
fn task_folder(root: &Path, n_tasks: usize, n_way: usize) {
    for t in 0..n_tasks {
        let id = format!("{t:04}");
        for split in ["support", "query"] {
            std::fs::create_dir_all(root.join(split).join(&id)).unwrap();
        }
        for c in 0..n_way {
            let character = 10_000 + (t + c) % 10;
            synthetic::image(character, 1).save(root.join("support").join(&id).join(format!("image_{c}.png"))).unwrap();
            // Query images in another size and in colour: predict must take ordinary PNGs.
            let img =
                image::imageops::resize(&synthetic::image(character, 2), 64, 64, image::imageops::FilterType::Triangle);
            let rgb = image::DynamicImage::ImageLuma8(img).into_rgb8();
            rgb.save(root.join("query").join(&id).join(format!("image_{}.png", (c * 3) % n_way))).unwrap();
        }
    }
}

#[test]
fn train_eval_predict() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    for method in ["maml", "fomaml", "transfer"] {
        let cfg = config(tmp.path(), method);
        let out = tmp.path().join(format!("run-{method}"));
        let log = ok(fewshot(&["train", "--config", cfg.to_str().unwrap(), "--out", out.to_str().unwrap()], &data));
        assert!(log.contains("trained 6 steps"), "{log}");
        for f in [
            "config.toml",
            "run.json",
            "metrics.jsonl",
            "checkpoints/last.safetensors",
            "checkpoints/best.safetensors",
            "checkpoints/last.safetensors.json",
        ] {
            assert!(out.join(f).exists(), "{method}: {f} missing");
        }
        let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
        let lines: Vec<serde_json::Value> = metrics.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 6, "{method}: one line per step with log_every = 1");
        assert_eq!(lines[5]["step"], 6);
        assert!(lines[2]["val_acc"].as_f64().is_some() && lines[0]["val_acc"].is_null());
        let run: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
        assert_eq!(run["seed"], 3);

        let ckpt = out.join("checkpoints/best.safetensors");
        let eval = ok(fewshot(&["eval", "--checkpoint", ckpt.to_str().unwrap(), "--n", "12", "--json"], &data));
        let v: serde_json::Value = serde_json::from_str(eval.lines().next().unwrap()).unwrap();
        assert_eq!(v["episodes"], 12);
        let acc = v["accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc), "{acc}");

        let tasks = tmp.path().join("tasks");
        task_folder(&tasks, 3, 5);
        let csv = tmp.path().join(format!("predictions-{method}.csv"));
        ok(fewshot(
            &[
                "predict",
                "--checkpoint",
                ckpt.to_str().unwrap(),
                "--tasks",
                tasks.to_str().unwrap(),
                "--out",
                csv.to_str().unwrap(),
            ],
            &data,
        ));
        let text = std::fs::read_to_string(&csv).unwrap();
        let rows: Vec<&str> = text.lines().collect();
        assert_eq!(rows[0], "id,class");
        assert_eq!(rows.len(), 1 + 15);
        assert!(rows[1].starts_with("0000_0,"), "{}", rows[1]);
        assert!(rows[1..].iter().all(|r| r.split(',').nth(1).unwrap().parse::<u32>().unwrap() < 5));
    }
}

#[test]
fn resume_gives_the_same_parameters() {
    resume_matches(&[], "plain");
    // MAML++'s step-dependent options (multi-step loss, derivative-order annealing, cosine
    // annealing) resume exactly too: each is a function of the saved step count.
    let plus = [
        "train.inner_steps=2",
        "train.multi_step_loss=true",
        "train.multi_step_loss_steps=4",
        "train.first_order_steps=2",
        "train.meta_lr_schedule=\"cosine\"",
        "train.meta_lr_cosine_steps=6",
        "train.learned_inner_lr=true",
        "train.per_step_bn=true",
    ];
    resume_matches(&plus, "maml++");
}

fn resume_matches(sets: &[&str], what: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let cfg = config(tmp.path(), "maml");
    let whole = tmp.path().join("whole");
    let split = tmp.path().join("split");
    let with_sets = |args: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        for s in sets {
            v.extend(["--set".to_owned(), s.to_string()]);
        }
        v
    };
    let run = |args: &[&str]| fewshot(&with_sets(args).iter().map(String::as_str).collect::<Vec<_>>(), &data);
    ok(run(&["train", "--config", cfg.to_str().unwrap(), "--out", whole.to_str().unwrap()]));
    ok(run(&["train", "--config", cfg.to_str().unwrap(), "--set", "train.steps=3", "--out", split.to_str().unwrap()]));
    let log = ok(run(&["train", "--config", cfg.to_str().unwrap(), "--resume", "--out", split.to_str().unwrap()]));
    assert!(log.contains("trained 6 steps"), "{log}");
    let a = std::fs::read(whole.join("checkpoints/last.safetensors")).unwrap();
    let b = std::fs::read(split.join("checkpoints/last.safetensors")).unwrap();
    let ta = safetensors::SafeTensors::deserialize(&a).unwrap();
    let tb = safetensors::SafeTensors::deserialize(&b).unwrap();
    let mut names = ta.names();
    names.sort();
    assert!(names.iter().any(|n| n.starts_with("adam.m.")));
    for n in names {
        assert_eq!(ta.tensor(n).unwrap().data(), tb.tensor(n).unwrap().data(), "{what}: {n} differs after resume");
    }
    let metrics = std::fs::read_to_string(split.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 6, "metrics continue without duplicates");
    if sets.contains(&"train.learned_inner_lr=true") {
        // The learned rates are parameters like the others: saved, optimised, restored...
        for n in ["param.inner_lr.block0.conv.weight", "adam.v.inner_lr.head.bias", "param.bn_step.block0.bn.weight"] {
            assert!(ta.names().contains(&n), "{what}: no {n} in the checkpoint");
        }
        let rates = ta.tensor("param.inner_lr.block0.conv.weight").unwrap();
        assert_eq!(rates.shape(), [2], "one rate per inner step");
        let sets = ta.tensor("param.bn_step.block0.bn.weight").unwrap();
        assert_eq!(sets.shape()[0], 2, "one batch-norm set per inner step");
        // ... and evaluation adapts with them, for more steps than were learned.
        let ckpt = split.join("checkpoints/last.safetensors");
        let eval = ok(fewshot(
            &["eval", "--checkpoint", ckpt.to_str().unwrap(), "--n", "4", "--inner-steps", "3", "--json"],
            &data,
        ));
        let v: serde_json::Value = serde_json::from_str(eval.lines().next().unwrap()).unwrap();
        assert!((0.0..=1.0).contains(&v["accuracy"].as_f64().unwrap()), "{eval}");
    }
}

/// The `(step, val_acc)` of each checkpoint kept under `dir`, by step.
fn kept(dir: &Path) -> Vec<(u64, f64)> {
    let mut out: Vec<(u64, f64)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            let ckpt = p.with_extension("");
            assert!(ckpt.exists(), "{} without its checkpoint", p.display());
            (m["step"].as_u64().unwrap(), m["val_acc"].as_f64().unwrap())
        })
        .collect();
    out.sort_by_key(|k| k.0);
    out
}

#[test]
fn keep_best_keeps_the_top_validations_across_resume_and_they_evaluate_as_an_ensemble() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let cfg = config(tmp.path(), "maml");
    let sets = ["--set", "train.steps=10", "--set", "train.val_every=1", "--set", "train.keep_best=3"];
    let whole = tmp.path().join("whole");
    ok(fewshot(&train_args(&cfg, &whole, &sets), &data));
    // The kept ones are the three best validations in metrics.jsonl, ties to the earlier step.
    let metrics = std::fs::read_to_string(whole.join("metrics.jsonl")).unwrap();
    let mut vals: Vec<(u64, f64)> = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| (v["step"].as_u64().unwrap(), v["val_acc"].as_f64().unwrap()))
        .collect();
    assert_eq!(vals.len(), 10);
    vals.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut expected: Vec<(u64, f64)> = vals[..3].to_vec();
    expected.sort_by_key(|k| k.0);
    let top = whole.join("checkpoints/top");
    assert_eq!(kept(&top), expected);
    // A run stopped at step 4 and resumed keeps the same; a kept file of a step after the
    // resumed one (left by a process that died before its next `last`) is dropped on resume.
    let split = tmp.path().join("split");
    ok(fewshot(&train_args(&cfg, &split, &[&sets[..], &["--set", "train.steps=4"]].concat()), &data));
    let split_top = split.join("checkpoints/top");
    let (step, _) = kept(&split_top)[0];
    let from = split_top.join(format!("step-{step:07}.safetensors"));
    let stray = split_top.join("step-0000009.safetensors");
    std::fs::copy(&from, &stray).unwrap();
    let manifest = std::fs::read_to_string(from.with_extension("safetensors.json")).unwrap();
    let mut m: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    m["step"] = 9.into();
    m["val_acc"] = 1.0.into();
    std::fs::write(stray.with_extension("safetensors.json"), m.to_string()).unwrap();
    ok(fewshot(&train_args(&cfg, &split, &[&sets[..], &["--resume"]].concat()), &data));
    assert_eq!(kept(&split_top), expected);
    // keep_best = 0 keeps none.
    let none = tmp.path().join("none");
    ok(fewshot(&train_args(&cfg, &none, &["--set", "train.steps=2"]), &data));
    assert!(!none.join("checkpoints/top").exists());

    // The folder evaluates as an ensemble; each member's accuracy is its own eval's.
    let eval = |ckpts: &[&Path]| -> serde_json::Value {
        let mut args = vec!["eval", "--n", "12", "--json"];
        for c in ckpts {
            args.extend(["--checkpoint", c.to_str().unwrap()]);
        }
        serde_json::from_str(ok(fewshot(&args, &data)).lines().next().unwrap()).unwrap()
    };
    let ensemble = eval(&[&top]);
    let members = ensemble["members"].as_array().unwrap();
    assert_eq!(members.len(), 3);
    assert_eq!(ensemble["checkpoint"].as_array().map(Vec::len), Some(3));
    for m in members {
        let path = PathBuf::from(m["checkpoint"].as_str().unwrap());
        let single = eval(&[&path]);
        assert_eq!(single["accuracy"], m["accuracy"], "{}", path.display());
        assert_eq!(single["checkpoint"].as_str(), path.to_str(), "one checkpoint: its path as a string");
    }
    // An ensemble of one model twice is that model.
    let one = PathBuf::from(members[0]["checkpoint"].as_str().unwrap());
    assert_eq!(eval(&[&one, &one])["accuracy"], members[0]["accuracy"]);
    // Checkpoints of different nets do not make an ensemble.
    let other = tmp.path().join("other");
    ok(fewshot(&train_args(&cfg, &other, &["--set", "train.steps=1", "--set", "model.hidden=4"]), &data));
    let last = other.join("checkpoints/last.safetensors");
    let err = fails(fewshot(
        &["eval", "--n", "4", "--checkpoint", one.to_str().unwrap(), "--checkpoint", last.to_str().unwrap()],
        &data,
    ));
    // The values in the order of the files: the first's (hidden = 8), then the other's (4).
    assert!(err.contains("model.hidden: 8 -> 4"), "{err}");
}

#[test]
fn clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let cfg = config(tmp.path(), "fomaml");
    let err = fails(fewshot(&["train", "--config", cfg.to_str().unwrap(), "--set", "train.inner_lr=-1"], &data));
    assert!(err.contains("train.inner_lr = -1"), "{err}");
    let err = fails(fewshot(&["train", "--config", cfg.to_str().unwrap(), "--set", "episodes.n_way=9"], &data));
    assert!(err.contains("n_way") && err.contains("6 classes"), "{err}");
    let err = fails(fewshot(&["train", "--config", "/no/such.toml"], &data));
    assert!(err.contains("/no/such.toml"), "{err}");
    // A `cache` that is a file is named, with what to do.
    let odd = tmp.path().join("odd-data");
    dataset(&odd);
    std::fs::write(odd.join("cache"), "not a folder").unwrap();
    let err = fails(fewshot(&["train", "--config", cfg.to_str().unwrap(), "--set", "train.steps=1"], &odd));
    assert!(err.contains("odd-data/cache is unusable: it is a file"), "{err}");
    // Sizes that cannot fit in memory are refused at once, naming the key (they grew until the
    // kernel killed the process).
    let err = fails(fewshot(&["train", "--config", cfg.to_str().unwrap(), "--set", "model.hidden=100000"], &data));
    assert!(err.contains("model.hidden = 100000") && err.contains("available"), "{err}");
    let sets = ["--set", "train.meta_batch_size=100000000000"];
    let err = fails(fewshot(&[&["train", "--config", cfg.to_str().unwrap()][..], &sets[..]].concat(), &data));
    assert!(err.contains("train.meta_batch_size = 100000000000"), "{err}");
    // Numbers on the command line: what was expected, not a parser's complaint.
    let cfg_s = cfg.to_str().unwrap();
    let err = fails(fewshot(&["train", "--config", cfg_s, "--threads", "-1"], &data));
    assert!(err.contains("expected a whole number") && err.contains("'-1'"), "{err}");
    let err = fails(fewshot(&["train", "--config", cfg_s, "--seed", "-1"], &data));
    assert!(err.contains("expected a seed"), "{err}");
    let err =
        fails(fewshot(&["predict", "--checkpoint", "x", "--tasks", "t", "--out", "-", "--inner-steps", "1,2"], &data));
    assert!(err.contains("give one number of inner steps"), "{err}");
    let err = fails(fewshot(&["eval", "--checkpoint", "x", "--inner-steps", "1,-2"], &data));
    assert!(err.contains("expected a whole number") && err.contains("'-2'"), "{err}");
    let out = tmp.path().join("run");
    let err = fails(fewshot(
        &["train", "--config", cfg.to_str().unwrap(), "--resume", "--out", out.to_str().unwrap()],
        &data,
    ));
    assert!(err.contains("last.safetensors"), "{err}");

    ok(fewshot(
        &["train", "--config", cfg.to_str().unwrap(), "--set", "train.steps=1", "--out", out.to_str().unwrap()],
        &data,
    ));
    let ckpt = out.join("checkpoints/last.safetensors");
    let missing = tmp.path().join("nothing");
    let err = fails(fewshot(
        &["predict", "--checkpoint", ckpt.to_str().unwrap(), "--tasks", missing.to_str().unwrap(), "--out", "x.csv"],
        &data,
    ));
    assert!(err.contains("nothing: cannot open it as a folder"), "{err}");
    // A file, or a symlink cycle, is named as what it is.
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let err = fails(fewshot(
        &["predict", "--checkpoint", ckpt.to_str().unwrap(), "--tasks", file.to_str().unwrap(), "--out", "x.csv"],
        &data,
    ));
    assert!(err.contains("is a file, not a folder"), "{err}");
    let cycle = tmp.path().join("cycle");
    std::os::unix::fs::symlink(&cycle, &cycle).unwrap();
    let err = fails(fewshot(
        &["predict", "--checkpoint", ckpt.to_str().unwrap(), "--tasks", cycle.to_str().unwrap(), "--out", "x.csv"],
        &data,
    ));
    assert!(err.contains("cannot open it as a folder") && err.contains("symbolic links"), "{err}");
    let tasks = tmp.path().join("tasks");
    task_folder(&tasks, 2, 5);
    std::fs::remove_file(tasks.join("support/0001/image_4.png")).unwrap();
    let err = fails(fewshot(
        &["predict", "--checkpoint", ckpt.to_str().unwrap(), "--tasks", tasks.to_str().unwrap(), "--out", "x.csv"],
        &data,
    ));
    assert!(err.contains("support/0001 has 4 classes"), "{err}");
    std::fs::write(tasks.join("support/0001/image_4.png"), b"not a png").unwrap();
    let err = fails(fewshot(
        &["predict", "--checkpoint", ckpt.to_str().unwrap(), "--tasks", tasks.to_str().unwrap(), "--out", "x.csv"],
        &data,
    ));
    assert!(err.contains("support/0001/image_4.png"), "{err}");
    let err = fails(fewshot(&["eval", "--checkpoint", cfg.to_str().unwrap()], &data));
    assert!(err.contains("tiny-fomaml.toml"), "{err}");
}

#[test]
fn divergence_stops_and_keeps_the_last_good_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let cfg = config(tmp.path(), "fomaml");
    let out = tmp.path().join("run");
    let err = fails(fewshot(
        &[
            "train",
            "--config",
            cfg.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--set",
            "train.meta_lr=1e38",
            "--set",
            "train.checkpoint_every=1",
        ],
        &data,
    ));
    assert!(err.contains("diverged") && err.contains("last good checkpoint"), "{err}");
    // Diverging before the first checkpoint says so instead of naming a file that is not there.
    let early = tmp.path().join("early");
    let args = train_args(&cfg, &early, &["--set", "train.meta_lr=1e38", "--set", "train.checkpoint_every=1000"]);
    let err = fails(fewshot(&args, &data));
    assert!(err.contains("no checkpoint was written yet"), "{err}");
    assert!(!early.join("checkpoints/last.safetensors").exists());
    assert!(err.contains("lower meta_lr or inner_lr"), "{err}");
    // The checkpoint written before the loss turned non-finite is intact.
    let manifest = out.join("checkpoints/last.safetensors.json");
    let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    assert!(m["step"].as_u64().unwrap() >= 1);
    let bytes = std::fs::read(out.join("checkpoints/last.safetensors")).unwrap();
    assert_eq!(m["sha256"].as_str().unwrap(), omniglot_data::sha256_bytes(&bytes));
}

fn train_args<'a>(cfg: &'a Path, out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["train", "--config", cfg.to_str().unwrap(), "--out", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    args
}

#[test]
fn a_finished_run_is_never_overwritten() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let cfg = config(tmp.path(), "fomaml");
    let out = tmp.path().join("run");
    ok(fewshot(&train_args(&cfg, &out, &[]), &data));
    let best = std::fs::read(out.join("checkpoints/best.safetensors")).unwrap();
    let err = fails(fewshot(&train_args(&cfg, &out, &["--set", "train.steps=2"]), &data));
    assert!(err.contains("already holds a run") && err.contains("--resume") && err.contains("--overwrite"), "{err}");
    assert_eq!(std::fs::read(out.join("checkpoints/best.safetensors")).unwrap(), best, "best was touched");
    // --overwrite moves the old run aside, whole, and starts afresh.
    let log = ok(fewshot(&train_args(&cfg, &out, &["--set", "train.steps=2", "--overwrite"]), &data));
    assert!(log.contains("trained 2 steps"), "{log}");
    let aside = tmp.path().join("run.old-1");
    assert_eq!(std::fs::read(aside.join("checkpoints/best.safetensors")).unwrap(), best);
    assert_eq!(std::fs::read_to_string(aside.join("metrics.jsonl")).unwrap().lines().count(), 6);
    // --resume of a folder without a run says so and creates nothing.
    let empty = tmp.path().join("empty");
    let err = fails(fewshot(&train_args(&cfg, &empty, &["--resume"]), &data));
    assert!(err.contains("holds no run"), "{err}");
    assert!(!empty.exists());
}

/// Start a long training in the background; returns once it has written its first metrics line.
fn background_train(cfg: &Path, out: &Path, data: &Path) -> std::process::Child {
    let mut args = train_args(cfg, out, &["--set", "train.steps=100000", "--set", "train.val_every=100000"]);
    args.extend(["--set", "train.checkpoint_every=100000"]);
    let child = Command::new(env!("CARGO_BIN_EXE_fewshot"))
        .args(&args)
        .env("OMNIGLOT_DATA_DIR", data)
        .env_remove("OMNIGLOT_SOURCE")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let metrics = out.join("metrics.jsonl");
    for _ in 0..600 {
        if std::fs::read_to_string(&metrics).is_ok_and(|t| !t.is_empty()) {
            return child;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("the background run wrote no metrics in 30 s");
}

#[test]
fn signals_write_a_checkpoint_exit_non_zero_and_a_folder_has_one_writer() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let cfg = config(tmp.path(), "fomaml");
    for (signal, code) in [("-TERM", 143), ("-INT", 130)] {
        let out = tmp.path().join(format!("run{signal}"));
        let mut child = background_train(&cfg, &out, &data);
        // A second writer is refused, by name and PID, and changes nothing.
        let config_before = std::fs::read(out.join("config.toml")).unwrap();
        let err = fails(fewshot(&train_args(&cfg, &out, &["--resume"]), &data));
        assert!(err.contains("in use by process") && err.contains(&child.id().to_string()), "{err}");
        assert_eq!(std::fs::read(out.join("config.toml")).unwrap(), config_before);

        let status = Command::new("kill").args([signal, &child.id().to_string()]).status().unwrap();
        assert!(status.success());
        let exit = child.wait().unwrap();
        assert_eq!(exit.code(), Some(code), "{signal}");
        let mut stderr = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        assert!(stderr.contains("continue with --resume"), "{stderr}");
        // Said at once, not only after the step: what happens now, and what a second one does.
        assert!(stderr.contains("stopping after the current step") && stderr.contains("again to leave at once"));
        // The checkpoint written on the signal is where the run stopped; the lock went with the
        // process, so the run resumes.
        let m: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("checkpoints/last.safetensors.json")).unwrap())
                .unwrap();
        let step = m["step"].as_u64().unwrap();
        assert!(step >= 1);
        let target = format!("train.steps={}", step + 1);
        let args = train_args(&cfg, &out, &["--resume", "--set", &target, "--set", "train.val_every=100000"]);
        let mut args = args;
        args.extend(["--set", "train.checkpoint_every=100000"]);
        let log = ok(fewshot(&args, &data));
        assert!(log.contains(&format!("trained {} steps", step + 1)), "{log}");
    }
}

#[test]
fn damaged_checkpoints_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let cfg = config(tmp.path(), "fomaml");
    let out = tmp.path().join("run");
    ok(fewshot(&train_args(&cfg, &out, &["--set", "train.steps=2"]), &data));
    let last = out.join("checkpoints/last.safetensors");
    let ckpt = fewshot_cli::checkpoint::Checkpoint::load(&last, &candle_core::Device::Cpu).unwrap();

    // One flipped byte: the manifest's checksum names it.
    let damaged = tmp.path().join("damaged.safetensors");
    ckpt.save(&damaged).unwrap();
    let mut bytes = std::fs::read(&damaged).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x40;
    std::fs::write(&damaged, &bytes).unwrap();
    let err =
        fails(fewshot(&["eval", "--checkpoint", damaged.to_str().unwrap(), "--protocol", "course", "--n", "4"], &data));
    assert!(err.contains("does not match its manifest") && err.contains("damaged.safetensors.json"), "{err}");

    // A manifest of another write of the same path (SIGKILL between the two renames, or eval
    // reading `last` while training rewrites it) does not make a sound checkpoint unreadable:
    // the file carries its own checksum.
    use fewshot_cli::checkpoint::{Checkpoint, manifest_path};
    let pair = tmp.path().join("pair.safetensors");
    ckpt.save(&pair).unwrap();
    let old_manifest = std::fs::read(manifest_path(&pair)).unwrap();
    let mut newer = ckpt.clone();
    newer.state.step += 1;
    newer.save(&pair).unwrap();
    std::fs::write(manifest_path(&pair), &old_manifest).unwrap();
    assert_eq!(Checkpoint::load(&pair, &candle_core::Device::Cpu).unwrap().state.step, ckpt.state.step + 1);
    // Without a manifest it still checks itself, and a flipped byte is still caught.
    std::fs::remove_file(manifest_path(&pair)).unwrap();
    Checkpoint::load(&pair, &candle_core::Device::Cpu).unwrap();
    let mut bytes = std::fs::read(&pair).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x40;
    std::fs::write(&pair, &bytes).unwrap();
    let err = format!("{:#}", Checkpoint::load(&pair, &candle_core::Device::Cpu).unwrap_err());
    assert!(err.contains("does not match the checksum written into it"), "{err}");
    // A temporary file that a killed writer left in the run is removed when the run resumes.
    let stale = out.join("checkpoints/.tmp-killed");
    std::fs::write(&stale, b"half a checkpoint").unwrap();
    ok(fewshot(&train_args(&cfg, &out, &["--resume", "--set", "train.steps=3"]), &data));
    assert!(!stale.exists());
    // A resume with fewer steps than the run has says that nothing was trained, and why.
    let log = ok(fewshot(&train_args(&cfg, &out, &["--resume", "--set", "train.steps=2"]), &data));
    assert!(log.contains("nothing to train") && log.contains("at step 3"), "{log}");

    // A member of an ensemble whose parameters do not fit its net is named.
    let mut partial = ckpt.clone();
    partial.params.remove("head.bias");
    let partial_path = tmp.path().join("partial.safetensors");
    partial.save(&partial_path).unwrap();
    let both = ["eval", "--checkpoint", last.to_str().unwrap(), "--checkpoint", partial_path.to_str().unwrap()];
    let err = fails(fewshot(&[&both[..], &["--protocol", "course", "--n", "4"]].concat(), &data));
    assert!(err.contains("partial.safetensors") && err.contains("head.bias"), "{err}");

    // NaN parameters with a consistent manifest: refused on load, not evaluated to 0.2.
    let mut nan = ckpt.clone();
    let w = &nan.params["head.weight"];
    nan.params.insert("head.weight".into(), (w.ones_like().unwrap() * f64::NAN).unwrap());
    let nan_path = tmp.path().join("nan.safetensors");
    nan.save(&nan_path).unwrap();
    let err = fails(fewshot(
        &["eval", "--checkpoint", nan_path.to_str().unwrap(), "--protocol", "course", "--n", "4"],
        &data,
    ));
    assert!(err.contains("head.weight") && err.contains("NaN"), "{err}");

    // A truncated `last`: the advice keeps everything.
    std::fs::write(&last, &std::fs::read(&last).unwrap()[..100]).unwrap();
    let err = fails(fewshot(&train_args(&cfg, &out, &["--resume"]), &data));
    assert!(err.contains("--overwrite") && !err.contains("train without --resume first"), "{err}");

    // eval's episode count: 0 and a count without a source of fresh episodes are refused.
    let best = out.join("checkpoints/best.safetensors");
    let err =
        fails(fewshot(&["eval", "--checkpoint", best.to_str().unwrap(), "--protocol", "course", "--n", "0"], &data));
    assert!(err.contains("--n 0"), "{err}");
    let set = tmp.path().join("set.json");
    let shipped =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/episodes/course-test-5w1s1q-640.json");
    std::fs::copy(shipped, &set).unwrap();
    let args = ["eval", "--checkpoint", best.to_str().unwrap(), "--episodes", set.to_str().unwrap(), "--n", "5"];
    let err = fails(fewshot(&args, &data));
    assert!(err.contains("--protocol or --validation"), "{err}");
    // An episode file whose characters are not in the data (the real set's 640 tasks on these 40
    // characters) is refused, naming the file, the episode, the value and the range (it
    // panicked in the data crate with an internal index).
    let args = ["eval", "--checkpoint", best.to_str().unwrap(), "--episodes", set.to_str().unwrap()];
    let out = fewshot(&args, &data);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("set.json: episode 0: character ") && !err.contains("panicked"), "{err}");
    assert!(err.contains("is out of range: the data have 40 characters, 0 to 39"), "{err}");
}

#[test]
fn predict_output_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let cfg = config(tmp.path(), "fomaml");
    let out = tmp.path().join("run");
    ok(fewshot(&train_args(&cfg, &out, &["--set", "train.steps=1"]), &data));
    let ckpt = out.join("checkpoints/last.safetensors");
    let tasks = tmp.path().join("tasks");
    task_folder(&tasks, 1, 5);
    // A task folder whose name needs quoting in CSV.
    std::fs::rename(tasks.join("support/0000"), tasks.join("support/00,02")).unwrap();
    std::fs::rename(tasks.join("query/0000"), tasks.join("query/00,02")).unwrap();
    let predict = |out: &str| {
        fewshot(
            &["predict", "--checkpoint", ckpt.to_str().unwrap(), "--tasks", tasks.to_str().unwrap(), "--out", out],
            &data,
        )
    };
    // `-`: standard output.
    let stdout = String::from_utf8(predict("-").stdout).unwrap();
    assert_eq!(stdout.lines().next(), Some("id,class"));
    assert!(stdout.lines().nth(1).unwrap().starts_with("\"00,02_0\","), "{stdout}");
    // `-` on a full disk: an error, not a success that wrote nothing.
    let args = ["predict", "--checkpoint", ckpt.to_str().unwrap(), "--tasks", tasks.to_str().unwrap(), "--out", "-"];
    let full = with_stdout(&args, &data, Stdout::Full);
    assert_eq!(full.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&full.stderr).contains("writing to standard output"));
    // `-` with standard output closed: an error, not a success that wrote nothing; `> /dev/null`
    // is what the user asked for.
    let closed = with_stdout(&args, &data, Stdout::Closed);
    assert_eq!(closed.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&closed.stderr).contains("standard output is closed"));
    assert!(with_stdout(&args, &data, Stdout::Null).status.success());
    // A symlink is written through: it stays a link and its target gets the CSV.
    let target = tmp.path().join("target.csv");
    std::fs::write(&target, "old").unwrap();
    let link = tmp.path().join("link.csv");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    ok(predict(link.to_str().unwrap()));
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read_to_string(&target).unwrap(), stdout);
    // A special file is written, never replaced.
    ok(predict("/dev/null"));
    assert!(!std::fs::metadata("/dev/null").unwrap().is_file());

    // --probabilities: one column per class, rows summing to 1, the class their arg-max.
    let args = ["predict", "--checkpoint", ckpt.to_str().unwrap(), "--tasks", tasks.to_str().unwrap(), "--out", "-"];
    let text = String::from_utf8(fewshot(&[&args[..], &["--probabilities"]].concat(), &data).stdout).unwrap();
    assert!(text.starts_with("id,class,p0,p1,p2,p3,p4\n"), "{text}");
    for line in text.lines().skip(1) {
        let fields: Vec<&str> = line.rsplitn(6, ',').collect(); // p4..p0, then id,class
        let p: Vec<f64> = fields[..5].iter().rev().map(|f| f.parse().unwrap()).collect();
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-4, "{line}");
        let class: usize = fields[5].rsplit(',').next().unwrap().parse().unwrap();
        let argmax = (0..5).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap();
        assert_eq!(p[class], p[argmax], "{line}");
    }

    // What predict does not read, it names.
    std::fs::write(tasks.join("query/00,02/notes.txt"), "x").unwrap();
    std::fs::create_dir_all(tasks.join("query/0009")).unwrap();
    std::fs::create_dir_all(tasks.join("support/0010")).unwrap();
    let log = ok(predict("-"));
    assert!(log.contains("notes.txt: not an image_<N>.png") && log.contains("0009: no support folder"), "{log}");
    // The same rule the other way round: a support folder without a query folder is skipped.
    assert!(log.contains("0010: no query folder"), "{log}");
    // A folder name that is not UTF-8 is read, not reported missing.
    {
        use std::os::unix::ffi::OsStrExt;
        let odd = std::ffi::OsStr::from_bytes(b"t\xff");
        for side in ["support", "query"] {
            let (from, to) = (tasks.join(side).join("00,02"), tasks.join(side).join(odd));
            std::fs::create_dir_all(&to).unwrap();
            for e in std::fs::read_dir(&from).unwrap().flatten() {
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
        let csv = String::from_utf8_lossy(&predict("-").stdout).into_owned();
        assert!(csv.lines().any(|l| l.starts_with("t\u{FFFD}_")), "{csv}");
        for side in ["support", "query"] {
            std::fs::remove_dir_all(tasks.join(side).join(odd)).unwrap();
        }
    }

    // Transparent paper is paper: an RGBA image whose background is transparent black reads as
    // the same ink as the opaque gray image.
    let gray = synthetic::image(10_003, 1);
    let gray_path = tmp.path().join("gray.png");
    gray.save(&gray_path).unwrap();
    let rgba = image::RgbaImage::from_fn(gray.width(), gray.height(), |x, y| {
        let ink = 255 - gray.get_pixel(x, y).0[0];
        image::Rgba([0, 0, 0, ink])
    });
    let rgba_path = tmp.path().join("rgba.png");
    rgba.save(&rgba_path).unwrap();
    let a = fewshot_cli::predict::read_image(&gray_path, 28).unwrap();
    let b = fewshot_cli::predict::read_image(&rgba_path, 28).unwrap();
    let diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(diff < 0.01, "{diff}");
    assert!(b.iter().any(|&v| v > 0.5), "ink survives");

    // An --out that is one of the command's inputs is refused, and the input is left as it was.
    let before = std::fs::read(&ckpt).unwrap();
    let err = fails(predict(ckpt.to_str().unwrap()));
    assert!(err.contains("is the checkpoint it reads"), "{err}");
    let image = tasks.join("query/00,02/image_0.png");
    let image_bytes = std::fs::read(&image).unwrap();
    let err = fails(predict(image.to_str().unwrap()));
    assert!(err.contains("support or query folders"), "{err}");
    assert_eq!(std::fs::read(&image).unwrap(), image_bytes);
    let export =
        |to: &Path| fewshot(&["export", "--checkpoint", ckpt.to_str().unwrap(), "--out", to.to_str().unwrap()], &data);
    let err = fails(export(&ckpt));
    assert!(err.contains("is the checkpoint it exports"), "{err}");
    let link = tmp.path().join("last-link.safetensors");
    std::os::unix::fs::symlink(&ckpt, &link).unwrap();
    let err = fails(export(&link));
    assert!(err.contains("is the checkpoint it exports"), "{err}");
    assert_eq!(std::fs::read(&ckpt).unwrap(), before);
    // A parameters-only file in place of `last` cannot resume the run: --resume says what it is.
    let exported = tmp.path().join("exported.safetensors");
    ok(export(&exported));
    std::fs::copy(&exported, &ckpt).unwrap();
    std::fs::copy(tmp.path().join("exported.safetensors.json"), out.join("checkpoints/last.safetensors.json")).unwrap();
    let err = fails(fewshot(&train_args(&cfg, &out, &["--resume", "--set", "train.steps=2"]), &data));
    assert!(err.contains("holds parameters only"), "{err}");
}

#[test]
fn config_list_and_show() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let run =
        |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_fewshot")).args(args).current_dir(&root).output().unwrap();
    let list = ok(run(&["config", "list"]));
    assert!(list.contains("configs/hw15-strong.toml") && list.contains("MAML (second order)"), "{list}");
    let shown = ok(run(&["config", "show", "hw15-strong", "--set", "train.steps=7"]));
    // Every default is spelled out, and the result is a config that loads.
    assert!(shown.contains("val_episodes = 200") && shown.contains("steps = 7"), "{shown}");
    let parsed = fewshot_cli::config::Config::parse(&shown, "shown", &[]).unwrap();
    assert_eq!(parsed.train.steps, 7);
}

#[test]
fn messages_name_what_to_change() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let cfg = config(tmp.path(), "fomaml");
    let out = tmp.path().join("run");
    // --seed is --set seed=N; logs written to a pipe carry no colour codes.
    let log = ok(fewshot(&train_args(&cfg, &out, &["--set", "train.steps=2", "--seed", "11"]), &data));
    assert!(!log.contains('\x1b'), "{log:?}");
    let saved = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(saved.contains("seed = 11"), "{saved}");
    // Resume with another config names the keys that differ.
    let args = train_args(&cfg, &out, &["--resume", "--seed", "11", "--set", "train.meta_lr=0.002"]);
    let err = fails(fewshot(&args, &data));
    assert!(err.contains("train.meta_lr: 0.001 -> 0.002"), "{err}");
    // wall_s continues across a resume.
    ok(fewshot(&train_args(&cfg, &out, &["--resume", "--seed", "11", "--set", "train.steps=4"]), &data));
    let walls: Vec<f64> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["wall_s"].as_f64().unwrap())
        .collect();
    assert!(walls.windows(2).all(|w| w[1] >= w[0]), "{walls:?}");
    // A 6-way checkpoint on 5-way episodes says which is which.
    let six = tmp.path().join("six");
    ok(fewshot(&train_args(&cfg, &six, &["--set", "train.steps=1", "--set", "episodes.n_way=6"]), &data));
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/episodes/course-test-5w1s1q-640.json");
    let ckpt = six.join("checkpoints/last.safetensors");
    let err = fails(fewshot(
        &["eval", "--checkpoint", ckpt.to_str().unwrap(), "--episodes", shipped.to_str().unwrap()],
        &data,
    ));
    assert!(err.contains("is a 6-way model and the episodes are 5-way"), "{err}");
    // A shared-head model evaluates on any number of classes; a learned head refuses, naming the key.
    let shared = tmp.path().join("shared");
    ok(fewshot(&train_args(&cfg, &shared, &["--set", "train.steps=1", "--set", "train.head_init=\"shared\""]), &data));
    let ckpt = shared.join("checkpoints/last.safetensors");
    let any_way =
        ["eval", "--checkpoint", ckpt.to_str().unwrap(), "--protocol", "course", "--n", "4", "--n-way", "7", "--json"];
    let v: serde_json::Value = serde_json::from_str(ok(fewshot(&any_way, &data)).lines().next().unwrap()).unwrap();
    assert_eq!((v["n_way"].as_u64(), v["episodes"].as_u64()), (Some(7), Some(4)));
    let learned = six.join("checkpoints/last.safetensors");
    let mut fixed_way = any_way;
    fixed_way[2] = learned.to_str().unwrap();
    let err = fails(fewshot(&fixed_way, &data));
    assert!(err.contains("is a 6-way model and the episodes are 7-way") && err.contains("head_init"), "{err}");
    // Trained on 5-way tasks, validated and tested on 6-way ones (`episodes.train_n_way`).
    let small = tmp.path().join("small-tasks");
    let sets = ["train.steps=1", "train.head_init=\"shared\"", "episodes.n_way=6", "episodes.train_n_way=5"];
    let extra: Vec<&str> = sets.iter().flat_map(|s| ["--set", s]).collect();
    ok(fewshot(&train_args(&cfg, &small, &extra), &data));
    let ckpt = small.join("checkpoints/last.safetensors");
    let bytes = std::fs::read(&ckpt).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(tensors.tensor("param.head.weight").unwrap().shape()[0], 5, "the head trained on 5-way tasks");
    let eval = ["eval", "--checkpoint", ckpt.to_str().unwrap(), "--protocol", "course", "--n", "4", "--json"];
    let v: serde_json::Value = serde_json::from_str(ok(fewshot(&eval, &data)).lines().next().unwrap()).unwrap();
    assert_eq!(v["n_way"].as_u64(), Some(6), "tested on the config's n_way");
    // The environment's data directory wins over the one a checkpoint recorded.
    let moved = tmp.path().join("moved-data");
    let recorded = tmp.path().join("recorded");
    dataset(&recorded);
    let dir_set = format!("data.dir={:?}", recorded.to_str().unwrap());
    let run = tmp.path().join("dir-run");
    ok(fewshot(&train_args(&cfg, &run, &["--set", "train.steps=1", "--set", &dir_set]), &data));
    std::fs::rename(&recorded, &moved).unwrap();
    let ckpt = run.join("checkpoints/last.safetensors");
    ok(fewshot(&["eval", "--checkpoint", ckpt.to_str().unwrap(), "--protocol", "course", "--n", "4"], &moved));
}

#[test]
fn standard_output_that_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), "fomaml");
    let args = ["config", "show", cfg.to_str().unwrap()];
    // A full disk: exit 1 with a message, no panic.
    let out = with_stdout(&args, tmp.path(), Stdout::Full);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("writing to standard output") && err.contains("No space left"), "{err}");
    // A reader that went away (`| head -c 10`): quiet, as Unix tools are.
    let out = with_stdout(&args, tmp.path(), Stdout::ClosedPipe);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.is_empty(), "{:?}: {err}", out.status);
}

#[test]
fn an_empty_data_dir_variable_counts_as_unset() {
    // OMNIGLOT_DATA_DIR="" looked for (and fetched) the archives in the current directory; now
    // it means the default, data/omniglot under the current directory, like an empty
    // OMNIGLOT_SOURCE.
    let tmp = tempfile::tempdir().unwrap();
    let here = tmp.path().join("here");
    dataset(&here.join("data/omniglot"));
    let cfg = config(tmp.path(), "fomaml");
    let out = Command::new(env!("CARGO_BIN_EXE_fewshot"))
        .args(train_args(&cfg, &tmp.path().join("run"), &["--set", "train.steps=1"]))
        .current_dir(&here)
        .env("OMNIGLOT_DATA_DIR", "")
        .env_remove("OMNIGLOT_SOURCE")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    ok(out);
    assert!(!here.join(Subset::Background.archive_name()).exists());
}
