//! Training on a folder of the user's own images (`[data] folder`): colour, any size, PNG and
//! JPEG, nested classes, splits by fractions or by folders; errors that name the folder.

use std::path::Path;

use super::{fails, fewshot, ok};

/// A synthetic colour dataset: `classes` classes of `per_class` images, each class a colour
/// and a bar at its own place, images of several sizes, a third of them JPEG; grouped in two
/// folders (`warm/`, `cool/`) as Omniglot's characters are in alphabets.
fn colour_folder(root: &Path, classes: usize, per_class: usize) {
    for c in 0..classes {
        let group = if c % 2 == 0 { "warm" } else { "cool" };
        let dir = root.join(group).join(format!("class{c:02}"));
        std::fs::create_dir_all(&dir).unwrap();
        let colour = [(c * 53 % 256) as u8, (c * 97 % 256) as u8, (c * 151 % 256) as u8];
        for i in 0..per_class {
            let (w, h) = [(20, 20), (31, 24), (48, 48)][i % 3];
            let img = image::RgbImage::from_fn(w, h, |x, y| {
                let bar = (x * 5 / w) as usize == c % 5 || (y * 4 / h) as usize == (c / 5) % 4;
                let noise = ((x * 7 + y * 13 + i as u32 * 29) % 40) as u8;
                if bar { image::Rgb(colour.map(|v| v.saturating_add(noise))) } else { image::Rgb([noise; 3]) }
            });
            let ext = if i % 3 == 2 { "jpg" } else { "png" };
            img.save(dir.join(format!("{i}.{ext}"))).unwrap();
        }
    }
}

fn folder_config(dir: &Path, folder: &Path, extra: &str) -> std::path::PathBuf {
    let path = dir.join("colour.toml");
    let text = format!(
        "name = \"colour\"\nseed = 5\n[data]\nfolder = \"{}\"\ndir = \"{}\"\nimage_size = 16\n{extra}\n\
         [model]\nhidden = 8\nchannels = 3\n[episodes]\nn_way = 3\nk_shot = 1\nn_query = 2\n\
         [train]\nsteps = 4\nmeta_batch_size = 2\nval_every = 2\nval_episodes = 4\ncheckpoint_every = 2\n",
        folder.display(),
        dir.join("cache").display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_colour_folder_trains_evaluates_and_labels_tasks() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("photos");
    colour_folder(&folder, 24, 5);
    let cfg = folder_config(tmp.path(), &folder, "");
    let run = tmp.path().join("run");
    let data = tmp.path().join("unused-omniglot");
    ok(fewshot(&["train", "--config", cfg.to_str().unwrap(), "--out", run.to_str().unwrap()], &data));
    let caches: Vec<_> = std::fs::read_dir(tmp.path().join("cache")).unwrap().flatten().collect();
    assert_eq!(caches.len(), 2, "one cache and its manifest");
    let best = run.join("checkpoints/best.safetensors");
    let said = ok(fewshot(&["eval", "--checkpoint", best.to_str().unwrap(), "--n", "12", "--json"], &data));
    let line: serde_json::Value = serde_json::from_str(said.lines().next().unwrap()).unwrap();
    let acc = line["accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc), "{said}");
    // Tasks from test images, in predict's layout (colour PNGs of any size).
    let tasks = tmp.path().join("tasks");
    for split in ["support", "query"] {
        std::fs::create_dir_all(tasks.join(split).join("0000")).unwrap();
    }
    for (c, class) in ["warm/class00", "cool/class01", "warm/class02"].iter().enumerate() {
        let from = folder.join(class);
        std::fs::copy(from.join("0.png"), tasks.join("support/0000").join(format!("image_{c}.png"))).unwrap();
        std::fs::copy(from.join("1.png"), tasks.join("query/0000").join(format!("image_{c}.png"))).unwrap();
    }
    let csv = tmp.path().join("predictions.csv");
    ok(fewshot(
        &[
            "predict",
            "--checkpoint",
            best.to_str().unwrap(),
            "--tasks",
            tasks.to_str().unwrap(),
            "--out",
            csv.to_str().unwrap(),
        ],
        &data,
    ));
    let rows = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(rows.lines().count(), 4, "a header and three queries:\n{rows}");
    // Episode files are Omniglot's: refused with a folder model, saying what to do.
    let err = fails(fewshot(
        &["eval", "--checkpoint", best.to_str().unwrap(), "--episodes", "configs/episodes/course-test-5w1s1q-640.json"],
        &data,
    ));
    assert!(err.contains("--episodes") && err.contains("drop --episodes"), "{err}");
}

#[test]
fn split_folders_and_small_classes() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("split");
    for split in ["train", "val", "test"] {
        colour_folder(&folder.join(split), 4, 4);
    }
    // The same class names in each split: refused, naming one.
    let cfg = folder_config(tmp.path(), &folder, "");
    let data = tmp.path().join("unused");
    let train = |cfg: &Path, out: &str| {
        fewshot(&["train", "--config", cfg.to_str().unwrap(), "--out", tmp.path().join(out).to_str().unwrap()], &data)
    };
    let err = fails(train(&cfg, "a"));
    assert!(err.contains("is in both train/ and val/"), "{err}");
    std::fs::rename(folder.join("val/warm"), folder.join("val/hot")).unwrap();
    std::fs::rename(folder.join("val/cool"), folder.join("val/cold")).unwrap();
    std::fs::rename(folder.join("test/warm"), folder.join("test/red")).unwrap();
    std::fs::rename(folder.join("test/cool"), folder.join("test/blue")).unwrap();
    ok(train(&cfg, "b"));
    // A class too small for an episode (k_shot + n_query = 3): named, or left out on request.
    for f in ["1.png", "2.jpg", "3.png"] {
        std::fs::remove_file(folder.join("train/warm/class00").join(f)).unwrap();
    }
    let err = fails(train(&cfg, "c"));
    assert!(err.contains("warm/class00 (1 images)") && err.contains("data.skip_small_classes"), "{err}");
    let skip = folder_config(tmp.path(), &folder, "skip_small_classes = true");
    let said = ok(train(&skip, "d"));
    assert!(said.contains("left out 1 class(es)"), "{said}");
    // Too few classes left in a split for a 3-way episode.
    std::fs::remove_dir_all(folder.join("test/red")).unwrap();
    let err = fails(train(&cfg, "e"));
    assert!(err.contains("test/ holds 2 usable classes, fewer than the 3"), "{err}");
}

#[test]
fn colour_needs_a_folder_and_bad_folders_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("unused");
    let cfg = tmp.path().join("c.toml");
    std::fs::write(&cfg, "name = \"c\"\n[model]\nchannels = 3\n").unwrap();
    let err = fails(fewshot(&["train", "--config", cfg.to_str().unwrap()], &data));
    assert!(err.contains("model.channels = 3") && err.contains("data.folder"), "{err}");
    let missing = folder_config(tmp.path(), &tmp.path().join("nowhere"), "");
    let err = fails(fewshot(&["train", "--config", missing.to_str().unwrap()], &data));
    assert!(err.contains("data.folder") && err.contains("nowhere"), "{err}");
    let folder = tmp.path().join("strays");
    colour_folder(&folder, 4, 3);
    std::fs::write(folder.join("warm/class00/readme.txt"), "x").unwrap();
    let err = fails(fewshot(&["train", "--config", folder_config(tmp.path(), &folder, "").to_str().unwrap()], &data));
    assert!(err.contains("readme.txt") && err.contains("not images"), "{err}");
}

#[test]
fn the_mini_imagenet_config_trains_end_to_end_on_generated_colour_images() {
    // The shipped config as written (84x84 RGB, 32 filters, 5-way 1-shot with 15 queries, 5
    // inner steps, 10 at test) on a generated folder, for two meta-steps and a validation.
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("generated");
    colour_folder(&folder, 36, 16);
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs/miniimagenet-5w1s.toml");
    let run = tmp.path().join("run");
    let sets = [
        format!("data.folder={:?}", folder.display().to_string()),
        format!("data.dir={:?}", tmp.path().join("cache").display().to_string()),
        "train.steps=2".into(),
        "train.meta_batch_size=2".into(),
        "train.val_every=2".into(),
        "train.val_episodes=2".into(),
    ];
    let mut args = vec!["train", "--config", config, "--out", run.to_str().unwrap()];
    for s in &sets {
        args.extend(["--set", s.as_str()]);
    }
    let said = ok(fewshot(&args, &tmp.path().join("unused")));
    assert!(said.contains("trained 2 steps"), "{said}");
    let best = run.join("checkpoints/best.safetensors");
    let said = ok(fewshot(
        &["eval", "--checkpoint", best.to_str().unwrap(), "--n", "3", "--json"],
        &tmp.path().join("unused"),
    ));
    let line: serde_json::Value = serde_json::from_str(said.lines().next().unwrap()).unwrap();
    assert_eq!(line["inner_steps"], 10, "{said}");
}

#[test]
fn the_transfer_baseline_and_protonets_train_on_a_folder() {
    // The baseline's images are drawn by class size (classes of 4 to 9 images here), in colour.
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("photos");
    colour_folder(&folder, 24, 9);
    for c in 0..6 {
        let group = if c % 2 == 0 { "warm" } else { "cool" };
        for i in 4..9 {
            let ext = if i % 3 == 2 { "jpg" } else { "png" };
            std::fs::remove_file(folder.join(group).join(format!("class{c:02}")).join(format!("{i}.{ext}"))).unwrap();
        }
    }
    let cfg = folder_config(tmp.path(), &folder, "");
    let data = tmp.path().join("unused");
    for (method, extra) in [("transfer", vec![]), ("protonet", vec!["--set", "train.inner_steps=0"])] {
        let out = tmp.path().join(method);
        let set = format!("train.method=\"{method}\"");
        let mut args = vec!["train", "--config", cfg.to_str().unwrap(), "--out", out.to_str().unwrap(), "--set", &set];
        args.extend(extra);
        let said = ok(fewshot(&args, &data));
        assert!(said.contains("trained 4 steps"), "{method}: {said}");
    }
}

/// The parameters in a checkpoint, by name.
fn tensors(path: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let t = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = t.names().into_iter().map(str::to_owned).collect();
    names.sort();
    names.into_iter().map(|n| (n.clone(), t.tensor(&n).unwrap().data().to_vec())).collect()
}

#[test]
fn the_photo_pipeline_resumes_exactly_and_eval_and_predict_read_photos_as_trained() {
    // Tiny ImageNet's layout as distributed: train/<wnid>/images/*.JPEG beside a boxes file.
    let tmp = tempfile::tempdir().unwrap();
    let generated = tmp.path().join("generated");
    colour_folder(&generated, 16, 6);
    let folder = tmp.path().join("tiny");
    for c in 0..16 {
        let (split, group) = (if c < 10 { "train" } else { "val" }, if c % 2 == 0 { "warm" } else { "cool" });
        let to = folder.join(format!("{split}/n{c:02}/images"));
        std::fs::create_dir_all(&to).unwrap();
        for f in std::fs::read_dir(generated.join(format!("{group}/class{c:02}"))).unwrap().flatten() {
            std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
        }
        std::fs::write(folder.join(format!("{split}/n{c:02}/n{c:02}_boxes.txt")), "0 0 8 8\n").unwrap();
    }
    let photo = "normalize = true\n[augment]\ncrop_padding = 2\nflip = true\ncolor_jitter = 0.3\n";
    let cfg = folder_config(tmp.path(), &folder, photo);
    let data = tmp.path().join("unused");
    let (whole, split) = (tmp.path().join("whole"), tmp.path().join("split"));
    let said = ok(fewshot(&["train", "--config", cfg.to_str().unwrap(), "--out", whole.to_str().unwrap()], &data));
    assert!(said.contains("left out 16 file(s) that are not images"), "{said}");
    let cfg_s = cfg.to_str().unwrap();
    ok(fewshot(&["train", "--config", cfg_s, "--set", "train.steps=2", "--out", split.to_str().unwrap()], &data));
    ok(fewshot(&["train", "--config", cfg_s, "--resume", "--out", split.to_str().unwrap()], &data));
    let last = |run: &Path| tensors(&run.join("checkpoints/last.safetensors"));
    assert_eq!(last(&whole), last(&split), "augmented photo training resumes exactly");
    // Without the pipeline the same seed trains other parameters.
    let plain = tmp.path().join("plain");
    let plain_cfg = folder_config(tmp.path(), &folder, "");
    ok(fewshot(&["train", "--config", plain_cfg.to_str().unwrap(), "--out", plain.to_str().unwrap()], &data));
    assert_ne!(last(&whole), last(&plain));
    // The measured normalisation is in the run's config and its checkpoints.
    let config = std::fs::read_to_string(whole.join("config.toml")).unwrap();
    assert!(config.contains("mean = [") && config.contains("std = ["), "{config}");

    // eval --folder: the val/ classes of this folder, or another folder's, read as trained.
    let best = whole.join("checkpoints/best.safetensors");
    let b = best.to_str().unwrap();
    let eval = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["eval", "--checkpoint", b, "--n", "8", "--json"];
        args.extend_from_slice(extra);
        serde_json::from_str(ok(fewshot(&args, &data)).lines().next().unwrap()).unwrap()
    };
    let f = folder.to_str().unwrap();
    let v = eval(&["--folder", f, "--split", "val", "--k-shot", "2", "--n-query", "3"]);
    assert_eq!((v["k_shot"].as_u64(), v["n_query"].as_u64(), v["episodes"].as_u64()), (Some(2), Some(3), Some(8)));
    assert!(v["description"].as_str().unwrap().contains("val/ classes, 6"), "{v}");
    let g = eval(&["--folder", generated.to_str().unwrap()]);
    assert!(g["description"].as_str().unwrap().contains("all classes, 16"), "{g}");
    let all = eval(&["--folder", f]);
    assert!(all["description"].as_str().unwrap().contains("all classes, 16"), "no test/: every class {all}");
    let err = fails(fewshot(&["eval", "--checkpoint", b, "--folder", f, "--split", "test"], &data));
    assert!(err.contains("0 usable test/ classes") && err.contains("--split"), "{err}");

    // predict in the photo layout: support/<class>/ with several shots, query/ of photos.
    let tasks = tmp.path().join("photo-tasks");
    for (c, name) in [(10, "cat"), (11, "dog"), (12, "fox")] {
        let from = folder.join(format!("val/n{c}/images"));
        std::fs::create_dir_all(tasks.join(format!("support/{name}"))).unwrap();
        std::fs::create_dir_all(tasks.join("query/batch2")).unwrap();
        for i in 0..3 {
            let file = if i == 2 { "2.jpg" } else { ["0.png", "1.png"][i] };
            std::fs::copy(from.join(file), tasks.join(format!("support/{name}/{file}"))).unwrap();
        }
        std::fs::copy(from.join("3.png"), tasks.join(format!("query/{name}-3.png"))).unwrap();
        std::fs::copy(from.join("4.png"), tasks.join(format!("query/batch2/{name}-4.png"))).unwrap();
    }
    std::fs::write(tasks.join("support/cat/notes.txt"), "not an image").unwrap();
    let csv = ok(fewshot(
        &["predict", "--checkpoint", b, "--tasks", tasks.to_str().unwrap(), "--probabilities", "--out", "-"],
        &data,
    ));
    let rows: Vec<&str> = csv.lines().filter(|l| !l.starts_with("wrote") && !l.contains("WARN")).collect();
    assert_eq!(rows[0], "file,class,p_cat,p_dog,p_fox", "{csv}");
    assert_eq!(rows.len(), 1 + 6, "{csv}");
    assert!(rows.iter().any(|r| r.starts_with("batch2/cat-4.png,")), "{csv}");
    for row in &rows[1..] {
        let cells: Vec<&str> = row.split(',').collect();
        assert!(["cat", "dog", "fox"].contains(&cells[1]), "{row}");
        let p: f64 = cells[2..].iter().map(|v| v.parse::<f64>().unwrap()).sum();
        assert!((p - 1.0).abs() < 1e-4, "{row}");
    }
}
