//! The `fewshot` binary end to end on generated data: train -> eval -> predict, the files each
//! step leaves, resume equality (`runs`), and clear errors (`errors`). This file holds the
//! helpers: running the binary, a generated data set, a config, a folder of tasks.

mod errors;
mod folders;
mod runs;

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

fn train_args<'a>(cfg: &'a Path, out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["train", "--config", cfg.to_str().unwrap(), "--out", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    args
}
