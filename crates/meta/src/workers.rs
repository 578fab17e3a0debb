//! The worker threads that run a batch's tasks in parallel: [`Workers`], a fixed set of
//! long-lived threads (one per task lane, see [`set_parallel_tasks`]) that takes one job per
//! task and returns the results in task order.
//!
//! A worker is a one-thread rayon pool: candle's rayon-parallel kernels called from a job run
//! inline on that thread (its own pool) instead of queueing on a shared pool, so parallel
//! tasks neither contend nor deadlock while one of them waits for another set's worker. The
//! native engine's tasks run on the [`plain`] set; candle's gradient modes keep sets of their
//! own (`grad_mode`).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

use crate::error::{Error, Result};

/// A job for [`Workers::run`].
pub(crate) type Job<R> = Box<dyn FnOnce() -> R + Send>;

/// Tasks run in parallel (workers per set); 0 = not set.
static PARALLEL_TASKS: AtomicUsize = AtomicUsize::new(0);

/// Set how many tasks run in parallel (worker threads per set). Takes effect only before the
/// first meta-gradient or evaluation of the process; default: the number of cores. For these
/// small per-task computations, parallel tasks with single-threaded kernels measured fastest:
/// see docs/performance.md.
pub fn set_parallel_tasks(n: usize) {
    PARALLEL_TASKS.store(n.max(1), Ordering::SeqCst);
}

/// Worker threads per set.
pub(crate) fn worker_count() -> usize {
    match PARALLEL_TASKS.load(Ordering::SeqCst) {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// A set of worker threads.
pub(crate) struct Workers {
    pools: Vec<rayon::ThreadPool>,
    /// Round-robin counter: consecutive batches start on different workers.
    next: AtomicUsize,
}

impl Workers {
    /// Start `n` workers named `name`, each running `init` on its thread before any job.
    pub fn start(
        name: &'static str,
        n: usize,
        init: impl Fn() -> std::result::Result<(), String> + Sync,
    ) -> std::result::Result<Workers, String> {
        let pools = (0..n)
            .map(|_| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(1)
                    .thread_name(move |_| name.to_owned())
                    .build()
                    .map_err(|e| format!("cannot start a worker thread: {e}"))?;
                pool.install(&init)?;
                Ok(pool)
            })
            .collect::<std::result::Result<_, String>>()?;
        Ok(Workers { pools, next: AtomicUsize::new(0) })
    }

    /// Run `jobs` (job `i` on worker `(start + i) mod n`) in parallel and return their results
    /// in order. A panic in a job is resumed on the caller's thread.
    pub fn run<R: Send + 'static>(&self, jobs: Vec<Job<R>>) -> Result<Vec<R>> {
        let n = jobs.len();
        let (reply_tx, reply_rx) = mpsc::channel();
        let first = self.next.fetch_add(n, Ordering::Relaxed);
        for (i, job) in jobs.into_iter().enumerate() {
            let reply_tx = reply_tx.clone();
            self.pools[(first + i) % self.pools.len()].spawn(move || {
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                let _ = reply_tx.send((i, result));
            });
        }
        drop(reply_tx);
        let mut results: Vec<Option<R>> = (0..n).map(|_| None).collect();
        for _ in 0..n {
            match reply_rx.recv() {
                Ok((i, Ok(r))) => results[i] = Some(r),
                Ok((_, Err(panic))) => std::panic::resume_unwind(panic),
                Err(_) => return Err(Error::Workers("a worker thread has stopped".into())),
            }
        }
        Ok(results.into_iter().map(|r| r.expect("every job replied")).collect())
    }
}

/// The workers for computations that need no candle gradient mode (the native engine).
pub(crate) fn plain() -> Result<&'static Workers> {
    static PLAIN: OnceLock<std::result::Result<Workers, String>> = OnceLock::new();
    PLAIN
        .get_or_init(|| Workers::start("fewshot-worker", worker_count(), || Ok(())))
        .as_ref()
        .map_err(|e| Error::Workers(e.clone()))
}
