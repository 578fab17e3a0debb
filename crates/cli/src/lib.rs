//! Library side of the `fewshot` command: the glue between the Omniglot cache
//! (`omniglot-data`), episode descriptions (`fewshot-tasks`) and meta-learning
//! (`fewshot-meta`), and each subcommand's body (`commands`). A config file (`config`) is
//! resolved once into typed [`settings::Settings`], whose parts the commands take. The binary
//! in `main.rs` parses the command line and dispatches.
#![deny(missing_docs)]

pub mod budget;
pub mod checkpoint;
pub mod commands;
pub mod config;
pub mod data;
pub mod episodes;
pub mod evaluate;
pub mod omniglot;
pub mod predict;
pub mod ranks;
pub mod run_dir;
pub mod seeds;
pub mod settings;
pub mod signals;
pub mod stdout;
pub mod train;

/// Use `n` threads: `n` tasks in parallel, each on single-threaded kernels (measured fastest
/// for these small per-task computations; see docs/performance.md).
///
/// # Safety
/// Sets the environment variable `RAYON_NUM_THREADS` (candle's kernels read it when they first
/// run): call it before the process starts any other thread, as the first thing in `main`.
pub unsafe fn set_threads(n: usize) -> anyhow::Result<()> {
    if n == 0 {
        anyhow::bail!("--threads 0: give at least 1");
    }
    // SAFETY: the caller guarantees that no other thread exists yet, so nothing can read the
    // environment while it changes.
    unsafe { std::env::set_var("RAYON_NUM_THREADS", "1") };
    let _ = rayon::ThreadPoolBuilder::new().num_threads(1).build_global();
    fewshot_meta::set_parallel_tasks(n);
    THREADS.store(n, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

static THREADS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// This machine's CPU model and core count, and the threads [`set_threads`] chose (for the
/// record of where a run trained: speed depends on them, results do not).
pub fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|t| {
        t.lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
    });
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = THREADS.load(std::sync::atomic::Ordering::Relaxed);
    serde_json::json!({ "cpu": cpu, "cores": cores, "threads": (threads > 0).then_some(threads) })
}

/// Peak resident memory of this process so far, in MiB (Linux `VmHWM`), if known.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
