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
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let cfg = config(tmp.path(), "maml");
    let whole = tmp.path().join("whole");
    let split = tmp.path().join("split");
    ok(fewshot(&["train", "--config", cfg.to_str().unwrap(), "--out", whole.to_str().unwrap()], &data));
    ok(fewshot(
        &["train", "--config", cfg.to_str().unwrap(), "--set", "train.steps=3", "--out", split.to_str().unwrap()],
        &data,
    ));
    let log =
        ok(fewshot(&["train", "--config", cfg.to_str().unwrap(), "--resume", "--out", split.to_str().unwrap()], &data));
    assert!(log.contains("trained 6 steps"), "{log}");
    let a = std::fs::read(whole.join("checkpoints/last.safetensors")).unwrap();
    let b = std::fs::read(split.join("checkpoints/last.safetensors")).unwrap();
    let ta = safetensors::SafeTensors::deserialize(&a).unwrap();
    let tb = safetensors::SafeTensors::deserialize(&b).unwrap();
    let mut names = ta.names();
    names.sort();
    assert!(names.iter().any(|n| n.starts_with("adam.m.")));
    for n in names {
        assert_eq!(ta.tensor(n).unwrap().data(), tb.tensor(n).unwrap().data(), "{n} differs after resume");
    }
    let metrics = std::fs::read_to_string(split.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 6, "metrics continue without duplicates");
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
    assert!(err.contains("nothing/support is missing"), "{err}");
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
    assert!(err.contains("lower meta_lr or inner_lr"), "{err}");
    // The checkpoint written before the loss turned non-finite is intact.
    let manifest = out.join("checkpoints/last.safetensors.json");
    let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    assert!(m["step"].as_u64().unwrap() >= 1);
    let bytes = std::fs::read(out.join("checkpoints/last.safetensors")).unwrap();
    assert_eq!(m["sha256"].as_str().unwrap(), omniglot_data::sha256_bytes(&bytes));
}
