//! candle's per-thread switch between "gradients keep their graph" (second order, like
//! PyTorch's `create_graph=True`) and "gradients are detached", owned here so users never set
//! an environment variable and results never depend on how the process was started.
//!
//! candle reads `CANDLE_GRAD_DO_NOT_DETACH` once per thread, at that thread's first
//! `backward()`, and keeps the answer for the thread's life. We therefore run every backward
//! pass on one of two long-lived worker threads, each latched into its mode at start-up (the
//! variable set or removed under a lock, one tiny backward, the variable restored) and checked
//! by a second derivative it must (or must not) be able to take.

use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};

use crate::error::{Error, Result};

const SWITCH: &str = "CANDLE_GRAD_DO_NOT_DETACH";

/// Which kind of backward pass to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GradMode {
    /// Gradients carry their own graph and can be differentiated again (second order).
    KeepGraph,
    /// Gradients are plain values (first order; half the memory).
    Detach,
}

type Job = Box<dyn FnOnce() + Send>;

/// A worker is a one-thread rayon pool: candle's rayon-parallel kernels called from a job run
/// inline on that thread (its own pool) instead of queueing on a shared pool, so parallel tasks
/// neither contend nor deadlock while one of them waits for another mode's worker.
struct Worker {
    pool: rayon::ThreadPool,
}

/// Serialises the set-variable / first-backward / restore dance across workers.
static LATCH: Mutex<()> = Mutex::new(());
static KEEP_GRAPH: OnceLock<std::result::Result<Vec<Worker>, String>> = OnceLock::new();
static DETACH: OnceLock<std::result::Result<Vec<Worker>, String>> = OnceLock::new();

thread_local! {
    /// The mode this thread is latched into, on our worker threads.
    static LATCHED: std::cell::Cell<Option<GradMode>> = const { std::cell::Cell::new(None) };
}

/// Round-robin counter for choosing a worker.
static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Tasks run in parallel (workers per mode); 0 = not set.
static PARALLEL_TASKS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Set how many tasks run in parallel (one worker thread per task lane and mode). Takes
/// effect only before the first meta-gradient or evaluation of the process; default: the
/// number of cores. For these small per-task tensors, parallel tasks with single-threaded
/// kernels (`RAYON_NUM_THREADS=1`) measured fastest: see docs/performance.md.
pub fn set_parallel_tasks(n: usize) {
    PARALLEL_TASKS.store(n.max(1), std::sync::atomic::Ordering::SeqCst);
}

fn worker_count() -> usize {
    match PARALLEL_TASKS.load(std::sync::atomic::Ordering::SeqCst) {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// The workers of `mode`. Both modes start together, from the first caller, so that no worker
/// is ever started from inside another (a rayon pool waiting in `install` may run queued jobs).
fn workers(mode: GradMode) -> Result<&'static [Worker]> {
    let start = |mode| (0..worker_count()).map(|_| start_worker(mode)).collect();
    let keep = KEEP_GRAPH.get_or_init(|| start(GradMode::KeepGraph));
    let detach = DETACH.get_or_init(|| start(GradMode::Detach));
    match mode {
        GradMode::KeepGraph => keep,
        GradMode::Detach => detach,
    }
    .as_deref()
    .map_err(|e| Error::GradMode(e.clone()))
}

fn send(worker: &Worker, job: Job) -> Result<()> {
    worker.pool.spawn(job);
    Ok(())
}

/// Run `loss.backward()` in the given mode and return the gradients of every `Var` it reaches.
///
/// On a worker already latched into `mode` it runs in place; elsewhere it is handed to one.
/// Workers are plain threads, never rayon's, so candle's rayon-parallel kernels always find
/// free rayon threads while a caller waits.
pub fn backward(loss: &Tensor, mode: GradMode) -> Result<GradStore> {
    if LATCHED.with(|l| l.get()) == Some(mode) {
        return Ok(loss.backward()?);
    }
    let loss = loss.clone();
    let mut out = run_parallel(mode, vec![Box::new(move || loss.backward())])?;
    Ok(out.pop().expect("one job, one result")?)
}

/// A job for [`run_parallel`].
pub type ParallelJob<R> = Box<dyn FnOnce() -> R + Send>;

/// Run `jobs` on the workers of `mode` (job `i` on worker `i mod n`), in parallel, and return
/// their results in order. Backward passes inside a job in the same mode run in place.
pub fn run_parallel<R: Send + 'static>(mode: GradMode, jobs: Vec<ParallelJob<R>>) -> Result<Vec<R>> {
    let workers = workers(mode)?;
    let n = jobs.len();
    let (reply_tx, reply_rx) = mpsc::channel();
    let first = NEXT.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    for (i, job) in jobs.into_iter().enumerate() {
        let reply_tx = reply_tx.clone();
        let wrapped: Job = Box::new(move || {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            let _ = reply_tx.send((i, result));
        });
        send(&workers[(first + i) % workers.len()], wrapped)?;
    }
    drop(reply_tx);
    let mut results: Vec<Option<R>> = (0..n).map(|_| None).collect();
    for _ in 0..n {
        match reply_rx.recv() {
            Ok((i, Ok(r))) => results[i] = Some(r),
            Ok((_, Err(panic))) => std::panic::resume_unwind(panic),
            Err(_) => return Err(Error::GradMode("gradient worker thread has stopped".into())),
        }
    }
    Ok(results.into_iter().map(|r| r.expect("every job replied")).collect())
}

fn start_worker(mode: GradMode) -> std::result::Result<Worker, String> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .thread_name(move |_| format!("candle-backward-{mode:?}"))
        .build()
        .map_err(|e| format!("cannot start the gradient worker thread: {e}"))?;
    pool.install(|| {
        let ready = latch(mode).and_then(|()| self_check(mode));
        if ready.is_ok() {
            LATCHED.with(|l| l.set(Some(mode)));
        }
        ready
    })?;
    Ok(Worker { pool })
}

/// Latch this thread into `mode`: candle caches the variable at the first backward.
fn latch(mode: GradMode) -> std::result::Result<(), String> {
    let _guard = LATCH.lock().unwrap_or_else(|p| p.into_inner());
    let saved = std::env::var_os(SWITCH);
    // SAFETY: `set_var`/`remove_var` race with concurrent reads of the environment from other
    // threads. This runs once per worker (twice per process), under a lock, and restores the
    // previous value at once; candle reads the variable only at a thread's first backward.
    unsafe {
        match mode {
            GradMode::KeepGraph => std::env::set_var(SWITCH, "1"),
            GradMode::Detach => std::env::remove_var(SWITCH),
        }
    }
    let result = (|| -> candle_core::Result<()> {
        let v = Var::new(1f64, &Device::Cpu)?;
        v.as_tensor().sqr()?.backward()?;
        Ok(())
    })();
    // SAFETY: as above.
    unsafe {
        match saved {
            Some(value) => std::env::set_var(SWITCH, value),
            None => std::env::remove_var(SWITCH),
        }
    }
    result.map_err(|e| format!("latching the gradient mode failed: {e}"))
}

/// Check that the latch took. For y = (x^2)^2 at x = 3, dy/dx = 4x^3 = 108. Differentiating
/// that gradient again gives 12x^2 = 108 when gradients keep their graph; when candle detaches
/// the incoming gradient (2u, u = x^2) only the explicit factor x stays tracked: 4u = 36.
fn self_check(mode: GradMode) -> std::result::Result<(), String> {
    let second = second_derivative_probe().map_err(|e| format!("gradient mode self-check failed: {e}"))?;
    match (mode, second) {
        (GradMode::KeepGraph, Some(v)) if (v - 108.0).abs() < 1e-9 => Ok(()),
        (GradMode::Detach, Some(v)) if (v - 36.0).abs() < 1e-9 => Ok(()),
        (GradMode::Detach, None) => Ok(()),
        (mode, got) => Err(format!(
            "candle did not switch to {mode:?} (second derivative {got:?}); this candle version handles \
             {SWITCH} differently from 0.11: see docs/architecture.md"
        )),
    }
}

/// d/dx of the gradient of (x^2)^2 at x = 3, as this thread's backward computes it.
fn second_derivative_probe() -> candle_core::Result<Option<f64>> {
    let x = Var::new(3f64, &Device::Cpu)?;
    let y = x.as_tensor().sqr()?.sqr()?;
    let g = y.backward()?.get(x.as_tensor()).expect("x is in the graph").clone();
    let gg = g.backward()?;
    gg.get(x.as_tensor()).map(|t| t.to_scalar::<f64>()).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_differ_in_second_derivatives() {
        // y = (x^2)^2 at x = 2: dy/dx = 4x^3 = 32, d2y/dx2 = 12x^2 = 48.
        let x = Var::new(2f64, &Device::Cpu).unwrap();
        let y = x.as_tensor().sqr().unwrap().sqr().unwrap();
        let g = backward(&y, GradMode::KeepGraph).unwrap().get(x.as_tensor()).unwrap().clone();
        assert_eq!(g.to_scalar::<f64>().unwrap(), 32.0);
        let gg = backward(&g, GradMode::Detach).unwrap();
        assert_eq!(gg.get(x.as_tensor()).unwrap().to_scalar::<f64>().unwrap(), 48.0);
        // Detached: the incoming gradient 2u loses its dependence on x: 4u = 16, not 48.
        let g = backward(&y, GradMode::Detach).unwrap().get(x.as_tensor()).unwrap().clone();
        let gg = backward(&g, GradMode::Detach).unwrap();
        assert_eq!(gg.get(x.as_tensor()).unwrap().to_scalar::<f64>().unwrap(), 16.0);
    }
}
