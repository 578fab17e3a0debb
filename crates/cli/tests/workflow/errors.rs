//! Clear errors: bad configs, damaged checkpoints, output paths that would overwrite inputs,
//! failing standard output, and messages that say what to change.

use super::*;

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
