//! Runs: train -> eval -> predict, resume equality, the best checkpoints kept, divergence,
//! signals, and a run folder that is never overwritten.

use super::*;

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
fn a_protonet_and_proto_maml_train_and_label_tasks_of_any_number_of_classes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let tasks = tmp.path().join("tasks");
    task_folder(&tasks, 2, 4);
    for (method, sets) in [
        ("protonet", ["train.inner_steps=0", "train.eval_inner_steps=0"]),
        ("maml", ["train.head_init=\"prototypes\"", "train.eval_inner_steps=1"]),
    ] {
        let cfg = config(tmp.path(), method);
        let out = tmp.path().join(format!("run-{method}-prototypes"));
        let mut args = train_args(&cfg, &out, &["--set", "train.steps=4"]);
        sets.iter().for_each(|s| args.extend(["--set", s]));
        let log = ok(fewshot(&args, &data));
        assert!(log.contains("trained 4 steps"), "{method}: {log}");
        let ckpt = out.join("checkpoints/last.safetensors");
        // Trained on 5-way tasks, evaluated 3-way and 7-way, with 1 query (its own) or 3.
        for (n_way, n_query) in [("3", "1"), ("7", "3")] {
            let c = ckpt.to_str().unwrap();
            let args = ["eval", "--checkpoint", c, "--n", "6", "--n-way", n_way, "--n-query", n_query, "--json"];
            let eval = ok(fewshot(&args, &data));
            let v: serde_json::Value = serde_json::from_str(eval.lines().next().unwrap()).unwrap();
            assert_eq!(v["n_way"].as_u64().unwrap().to_string(), n_way, "{method}");
            assert_eq!(v["n_query"].as_u64().unwrap().to_string(), n_query, "{method}");
            assert!((0.0..=1.0).contains(&v["accuracy"].as_f64().unwrap()));
        }
        let csv = tmp.path().join(format!("predictions-{method}.csv"));
        let (c, t, o) = (ckpt.to_str().unwrap(), tasks.to_str().unwrap(), csv.to_str().unwrap());
        ok(fewshot(&["predict", "--checkpoint", c, "--tasks", t, "--out", o], &data));
        let text = std::fs::read_to_string(&csv).unwrap();
        assert_eq!(text.lines().count(), 1 + 8, "{method}: 2 tasks of 4 queries");
        assert!(text.lines().skip(1).all(|r| r.split(',').nth(1).unwrap().parse::<u32>().unwrap() < 4));
    }
}
