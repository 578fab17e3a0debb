//! `fewshot train` under `mpirun` (the `mpi` feature): the same checkpoints, byte for byte, as
//! one process whatever the number of ranks and threads; resume across rank counts; one
//! writer; a killed rank stops the job with `last` intact. Needs OpenMPI's `mpirun` (see
//! `.ci/run`); run with `cargo test --release -p fewshot-cli --features mpi --test mpi`.
#![cfg(feature = "mpi")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use omniglot_data::Subset;
use omniglot_data::synthetic::{self, Spec};

/// A small synthetic Omniglot in `dir` with its cache built (so that ranks do not race to
/// build it).
fn dataset(dir: &Path) {
    synthetic::write_archive(dir, Subset::Background, Spec { alphabets: 3, characters_per_alphabet: 10 }).unwrap();
    synthetic::write_archive(dir, Subset::Evaluation, Spec { alphabets: 1, characters_per_alphabet: 10 }).unwrap();
}

/// MAML++ on 5 tasks a step (an odd number: ranks get unequal shares), 7 validation episodes.
fn config(dir: &Path, steps: usize) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("tiny-mpi.toml");
    let text = format!(
        "name = \"tiny-mpi\"\nseed = 11\n[data]\nexpect = \"any\"\n[model]\nhidden = 8\n\
         [train]\nsteps = {steps}\nmeta_batch_size = 5\ninner_steps = 2\nval_every = 3\nval_episodes = 7\n\
         checkpoint_every = 2\nlog_every = 1\nlearned_inner_lr = true\nmulti_step_loss = true\n\
         multi_step_loss_steps = 4\nkeep_best = 2\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn fewshot(data: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fewshot"));
    cmd.env("OMNIGLOT_DATA_DIR", data).env_remove("OMNIGLOT_SOURCE").env("RUST_LOG", "warn");
    cmd
}

/// `mpirun -n ranks fewshot ...` (as root too, on however many cores there are).
fn mpirun(ranks: usize, data: &Path) -> Command {
    let mut cmd = Command::new("mpirun");
    cmd.args(["-n", &ranks.to_string(), "--oversubscribe", "-x", "OMNIGLOT_DATA_DIR", "-x", "RUST_LOG"])
        .arg(env!("CARGO_BIN_EXE_fewshot"))
        .env("OMNIGLOT_DATA_DIR", data)
        .env_remove("OMNIGLOT_SOURCE")
        .env("RUST_LOG", "warn")
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        // Containers often forbid the cross-process memory calls of the single-copy path.
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none");
    cmd
}

#[track_caller]
fn ok(out: Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "failed:\n{text}");
    text
}

fn train(mut cmd: Command, threads: usize, config: &Path, out: &Path, extra: &[&str]) -> String {
    let out = cmd
        .args(["--threads", &threads.to_string(), "train", "--config"])
        .arg(config)
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .expect("running");
    ok(out)
}

fn bytes(run: &Path, file: &str) -> Vec<u8> {
    std::fs::read(run.join("checkpoints").join(file)).unwrap_or_else(|e| panic!("{}/{file}: {e}", run.display()))
}

/// The metrics without wall times.
fn metrics(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("wall_s");
            v
        })
        .collect()
}

/// Every file under `dir`, relative, sorted.
fn files(dir: &Path) -> Vec<String> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, base, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[test]
fn two_ranks_write_the_checkpoints_of_one_process_and_resume_on_one() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, runs) = (tmp.path().join("data"), tmp.path());
    dataset(&data);
    let cfg = config(tmp.path(), 6);
    let one = runs.join("one-thread");
    train(fewshot(&data), 1, &cfg, &one, &[]);
    let two_threads = runs.join("two-threads");
    train(fewshot(&data), 2, &cfg, &two_threads, &[]);
    let ranks = runs.join("two-ranks");
    let said = train(mpirun(2, &data), 1, &cfg, &ranks, &[]);
    let three = runs.join("three-ranks");
    train(mpirun(3, &data), 1, &cfg, &three, &[]);

    for file in ["last.safetensors", "best.safetensors"] {
        let want = bytes(&one, file);
        assert!(bytes(&two_threads, file) == want, "{file}: 2 threads differ from 1");
        assert!(bytes(&ranks, file) == want, "{file}: 2 ranks x 1 thread differ from 1 process");
        assert!(bytes(&three, file) == want, "{file}: 3 ranks differ from 1 process");
    }
    assert_eq!(metrics(&ranks), metrics(&one), "the same losses, accuracies and validations");
    assert_eq!(files(&ranks), files(&one), "the same files, written once");
    assert_eq!(said.matches("trained 6 steps").count(), 1, "rank 0 alone reports:\n{said}");

    // Half the run on 2 ranks, the rest on 1 process: the same run.
    let split = runs.join("split");
    let half = config(&tmp.path().join("half"), 3);
    train(mpirun(2, &data), 1, &half, &split, &[]);
    train(fewshot(&data), 1, &cfg, &split, &["--resume"]);
    assert!(bytes(&split, "last.safetensors") == bytes(&one, "last.safetensors"), "resumed on 1 rank");
    assert_eq!(metrics(&split), metrics(&one));
}

#[test]
fn eval_under_mpirun_splits_the_episodes_and_prints_once() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let run = tmp.path().join("run");
    train(fewshot(&data), 1, &config(tmp.path(), 2), &run, &[]);
    let ckpt = run.join("checkpoints").join("last.safetensors");
    let eval = |mut cmd: Command| {
        let out = cmd
            .args(["--threads", "1", "eval", "--checkpoint"])
            .arg(&ckpt)
            .args(["--protocol", "course", "--n", "9", "--json"])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        ok(out);
        stdout
    };
    let alone = eval(fewshot(&data));
    let ranks = eval(mpirun(2, &data));
    assert_eq!(alone.lines().count(), 1, "{alone}");
    assert_eq!(ranks, alone, "the same figures, printed once");
}

#[test]
fn a_killed_rank_stops_the_job_naming_it_and_last_stays_intact() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let cfg = config(tmp.path(), 100_000);
    let run = tmp.path().join("run");
    // Build the cache first, alone.
    train(fewshot(&data), 1, &config(&tmp.path().join("warm"), 1), &tmp.path().join("warm-run"), &[]);
    let mut job = mpirun(2, &data)
        .args(["--threads", "1", "train", "--config"])
        .arg(&cfg)
        .arg("--out")
        .arg(&run)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let last = run.join("checkpoints").join("last.safetensors");
    let start = Instant::now();
    while !last.exists() {
        assert!(start.elapsed() < Duration::from_secs(120), "no checkpoint after 2 minutes");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500)); // a few more steps and checkpoints
    let Some(rank1) = rank_pid(1, &data) else {
        let _ = job.kill();
        let out = job.wait_with_output().unwrap();
        panic!("rank 1 is not running:\n{}", String::from_utf8_lossy(&out.stderr));
    };
    assert!(Command::new("kill").args(["-KILL", &rank1.to_string()]).status().unwrap().success());
    let out = job.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the job went on without rank 1:\n{said}");
    assert!(said.contains("rank 1"), "the message names the rank:\n{said}");
    // `last` is whole: the run resumes from it on one process. (Its manifest, written just
    // after it, may be one checkpoint behind: 4 steps past it is 2 or 4 steps to train.)
    let step = serde_json::from_str::<serde_json::Value>(
        &std::fs::read_to_string(run.join("checkpoints").join("last.safetensors.json")).unwrap(),
    )
    .unwrap()["step"]
        .as_u64()
        .unwrap();
    let steps = format!("train.steps={}", step + 4);
    let resumed = train(fewshot(&data), 1, &cfg, &run, &["--resume", "--set", &steps]);
    assert!(resumed.contains(&format!("trained {} steps", step + 4)), "{resumed}");
}

/// The PID of the `fewshot` process of rank `rank` that reads `data` (from its environment).
fn rank_pid(rank: usize, data: &Path) -> Option<u32> {
    let want = format!("OMPI_COMM_WORLD_RANK={rank}");
    let ours = format!("OMNIGLOT_DATA_DIR={}", data.display());
    let exe = std::fs::canonicalize(env!("CARGO_BIN_EXE_fewshot")).ok()?;
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let is_ours = std::fs::read_link(e.path().join("exe")).ok()? == exe;
        let env = std::fs::read(e.path().join("environ")).ok()?;
        let has_rank = env.split(|&b| b == 0).any(|v| v == want.as_bytes());
        let this_test = env.split(|&b| b == 0).any(|v| v == ours.as_bytes());
        (is_ours && has_rank && this_test).then_some(pid)
    })
}
