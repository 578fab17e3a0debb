//! The settings' checks: every bad value named by its key, every shipped config resolving.

use std::path::Path;

use super::*;

#[track_caller]
fn check_err(text: &str, overrides: &[&str], expected: &str) {
    let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    let err = format!("{:#}", Settings::parse(text, "test.toml", &overrides).unwrap_err());
    assert!(err.contains(expected), "{err}\n  does not contain: {expected}");
}

#[test]
fn bad_configs_name_the_key() {
    check_err("name = \"x\"\n[train]\nstepz = 3\n", &[], "unknown field `stepz`");
    check_err("name = \"x\"\n", &["train.inner_lr=0"], "train.inner_lr = 0: must be a finite number > 0");
    check_err("name = \"x\"\n", &["train.meta_lr=-1"], "train.meta_lr = -1");
    check_err(
        "name = \"x\"\n",
        &["episodes.k_shot=10", "episodes.n_query=11"],
        "episodes.k_shot + episodes.n_query = 21: must be at most 20",
    );
    check_err("name = \"x\"\n", &["train.method=\"reptile\""], "unknown variant `reptile`");
    check_err("name = \"x\"\n", &["model.depth=6"], "image_size");
    check_err("name = \"x\"\n", &["model.depth=64"], "2^depth = 18446744073709551616 for depth 64");
    check_err("name = \"x\"\n", &["train.steps=18446744073709551615"], "out of range (a config number is at most");
    let long = format!("name = \"{}\"\n", "a".repeat(10_000_000));
    let err = format!("{:#}", Settings::parse(&long, "test.toml", &[]).unwrap_err());
    assert!(err.len() < 400 && err.contains("... (10000000 characters)"), "{}", &err[..err.len().min(400)]);
    check_err("name = \"x\"\n", &["model.depth=1000"], "2^depth = 2^1000 for depth 1000");
    check_err("name = \"x\"\n", &["trainsteps"], "expected key=value");
    check_err("name = \"x\"\n\n[train]\nsteps = \"many\"\n", &[], "line 4");
    check_err("name = \"x\"\n\n[train]\nsteps = \"many\"\n", &[], "steps = \"many\"");
    check_err("name = \"x\"\n", &["train.steps=many"], "--set train.steps=many: invalid type");
    // A file without a name is fine when --set gives one.
    let c = Settings::parse("[train]\nsteps = 5\n", "t", &["name=\"n\"".into()]).unwrap();
    assert_eq!((c.config.name.as_str(), c.schedule.steps), ("n", 5));
    check_err("name = \"\"\n", &[], "name = \"\": a run name is one folder name");
    check_err("name = \"../../x\"\n", &[], "a run name is one folder name");
    check_err("name = \"x\"\n", &["episodes.train_classes=3"], "episodes.train_classes = 3: must be at least");
    // Training tasks of another shape: queries any time, classes only for an any-way head.
    check_err("name = \"x\"\n", &["episodes.train_n_query=0"], "episodes.train_n_query = 0");
    check_err("name = \"x\"\n", &["episodes.train_n_query=20"], "episodes.k_shot + episodes.train_n_query = 21");
    check_err("name = \"x\"\n", &["episodes.n_way=20", "episodes.train_n_way=5"], "train.head_init");
    let c = Settings::parse(
        "name = \"x\"\n",
        "t",
        &[
            "episodes.n_way=20".into(),
            "episodes.train_n_way=5".into(),
            "episodes.train_n_query=3".into(),
            "train.head_init=\"shared\"".into(),
        ],
    )
    .unwrap();
    let (train, test) = (c.episodes.train, c.episodes.eval);
    assert_eq!((train.n_way, train.n_query, test.n_way, test.n_query), (5, 3, 20, 1));
}

#[test]
fn shipped_configs_parse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let c = Settings::load(&path, &[]).unwrap_or_else(|e| panic!("{e:#}"));
            assert_eq!(Some(c.config.name.as_str()), path.file_stem().and_then(|s| s.to_str()), "name matches file");
            n += 1;
        }
    }
    assert!(n >= 6, "{n} configs");
}

#[test]
fn a_protonet_is_maml_with_the_prototype_head_and_no_inner_step() {
    let sets = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let p = Settings::parse(
        "name = \"x\"\n",
        "t",
        &sets(&["train.method=\"protonet\"", "train.inner_steps=0", "train.eval_inner_steps=0"]),
    )
    .unwrap();
    let LearnerSettings::Maml { maml, .. } = p.learner else { panic!("a protonet trains as MAML") };
    assert_eq!((maml.head_init, maml.inner.steps), (HeadInit::Prototypes, 0));
    assert!(p.evaluation.adaptation.prototypes && p.evaluation.any_way());
    check_err(
        "name = \"x\"\n",
        &["train.method=\"protonet\""],
        "train.inner_steps = 1: a protonet takes no inner step",
    );
    check_err(
        "name = \"x\"\n",
        &["train.method=\"protonet\"", "train.inner_steps=0", "train.learned_inner_lr=true"],
        "has no inner loop and its own head",
    );
    check_err("name = \"x\"\n", &["train.head_init=\"prototypes\"", "train.per_step_bn=true"], "are not combined");
    // Proto-MAML: a head for any number of classes, so smaller training tasks are allowed.
    let m = Settings::parse(
        "name = \"x\"\n",
        "t",
        &sets(&["train.head_init=\"prototypes\"", "episodes.n_way=20", "episodes.train_n_way=5"]),
    )
    .unwrap();
    assert_eq!((m.episodes.train.n_way, m.episodes.eval.n_way), (5, 20));
}

#[test]
fn the_photo_keys_are_checked_and_off_by_default() {
    let folder = "name = \"x\"\n[data]\nfolder = \"photos\"\n[model]\nchannels = 3\n";
    check_err("name = \"x\"\n", &["data.normalize=true"], "are for your own images (data.folder)");
    check_err("name = \"x\"\n", &["augment.flip=true"], "are for your own images (data.folder)");
    check_err(folder, &["data.mean=[0.5, 0.5, 0.5]"], "data.mean and data.std go together");
    check_err(folder, &["data.mean=[0.5,0.5,0.5]", "data.std=[0.2,0.2,0.2]"], "data.normalize = false");
    let two = ["data.normalize=true", "data.mean=[0.5,0.5]", "data.std=[0.2,0.2]"];
    check_err(folder, &two, "3 finite value(s), one per channel");
    check_err(folder, &["augment.color_jitter=1.5"], "augment.crop_padding / augment.color_jitter");
    check_err(folder, &["augment.crop_padding=28"], "fewer pixels than the image side (28)");
    let off = Settings::parse(folder, "t", &[]).unwrap();
    assert_eq!(off.data.normalize, Normalization::Off);
    assert!(off.data.augment.is_off() && !off.episodes.augment_images);
    let sets: Vec<String> = ["data.normalize=true", "augment.flip=true"].iter().map(|s| s.to_string()).collect();
    let on = Settings::parse(folder, "t", &sets).unwrap();
    assert_eq!(on.data.normalize, Normalization::Measure);
    assert!(on.episodes.augment_images);
    // The transfer baseline takes the prototype head alone, for its test tasks.
    let t = Settings::parse(
        "name = \"x\"\n",
        "t",
        &["train.method=\"transfer\"".into(), "train.head_init=\"prototypes\"".into()],
    )
    .unwrap();
    assert!(t.evaluation.adaptation.prototypes && t.evaluation.head == EvalHead::Fresh);
    check_err(
        "name = \"x\"\n",
        &["train.method=\"transfer\"", "train.head_init=\"zero\""],
        "transfer takes train.head_init = \"prototypes\" alone",
    );
}
