//! candle's per-thread switch between "gradients keep their graph" (second order, like
//! PyTorch's `create_graph=True`) and "gradients are detached", owned here so users never set
//! an environment variable and results never depend on how the process was started.
//!
//! candle reads `CANDLE_GRAD_DO_NOT_DETACH` once per thread, at that thread's first
//! `backward()`, and keeps the answer for the thread's life. We therefore run every candle
//! backward pass on one of two sets of long-lived worker threads ([`crate::workers`]), one set
//! per mode, each thread latched into its mode at start-up (the variable set or removed under a
//! lock, one tiny backward, the variable restored) and checked by a second derivative it must
//! (or must not) be able to take. The native engine needs none of this and runs on plain
//! workers.

use std::sync::{Mutex, MutexGuard, OnceLock};

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};

use crate::error::{Error, Result};
use crate::workers::{Job, Workers, worker_count};

const SWITCH: &str = "CANDLE_GRAD_DO_NOT_DETACH";

/// Which kind of backward pass to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GradMode {
    /// Gradients carry their own graph and can be differentiated again (second order).
    KeepGraph,
    /// Gradients are plain values (first order; half the memory).
    Detach,
}

/// Serialises the set-variable / first-backward / restore dance across workers.
static LATCH: Mutex<()> = Mutex::new(());

/// The lock this crate holds while a worker thread latches its gradient mode (it sets
/// `CANDLE_GRAD_DO_NOT_DETACH`, runs one backward pass, restores the variable). Code in the
/// same process that changes environment variables (tests, mostly) should hold it too, so
/// that neither sees the other's value.
pub fn environment_lock() -> MutexGuard<'static, ()> {
    LATCH.lock().unwrap_or_else(|p| p.into_inner())
}

thread_local! {
    /// The mode this thread is latched into, on our worker threads.
    static LATCHED: std::cell::Cell<Option<GradMode>> = const { std::cell::Cell::new(None) };
}

/// The workers of `mode`. Both sets start together, from the first caller, so that no worker
/// is ever started from inside another (a rayon pool waiting in `install` may run queued jobs).
fn workers(mode: GradMode) -> Result<&'static Workers> {
    static KEEP_GRAPH: OnceLock<std::result::Result<Workers, String>> = OnceLock::new();
    static DETACH: OnceLock<std::result::Result<Workers, String>> = OnceLock::new();
    let start = |mode, name| Workers::start(name, worker_count(), move || latch_this_thread(mode));
    let keep = KEEP_GRAPH.get_or_init(|| start(GradMode::KeepGraph, "candle-keep-graph"));
    let detach = DETACH.get_or_init(|| start(GradMode::Detach, "candle-detach"));
    match mode {
        GradMode::KeepGraph => keep,
        GradMode::Detach => detach,
    }
    .as_ref()
    .map_err(|e| Error::Workers(e.clone()))
}

/// Run `loss.backward()` in the given mode and return the gradients of every `Var` it reaches.
///
/// On a worker already latched into `mode` it runs in place; elsewhere it is handed to one.
pub fn backward(loss: &Tensor, mode: GradMode) -> Result<GradStore> {
    if LATCHED.with(|l| l.get()) == Some(mode) {
        return Ok(loss.backward()?);
    }
    let loss = loss.clone();
    let mut out = run_in_mode(mode, vec![Box::new(move || loss.backward())])?;
    Ok(out.pop().expect("one job, one result")?)
}

/// Run `jobs` in parallel on the workers latched into `mode` (see [`Workers::run`]); backward
/// passes inside a job in the same mode run in place.
pub(crate) fn run_in_mode<R: Send + 'static>(mode: GradMode, jobs: Vec<Job<R>>) -> Result<Vec<R>> {
    workers(mode)?.run(jobs)
}

/// A worker's start-up: latch its thread into `mode` and check that it took.
fn latch_this_thread(mode: GradMode) -> std::result::Result<(), String> {
    latch(mode)?;
    self_check(mode)?;
    LATCHED.with(|l| l.set(Some(mode)));
    Ok(())
}

/// Latch this thread into `mode`: candle caches the variable at the first backward.
fn latch(mode: GradMode) -> std::result::Result<(), String> {
    let _guard = environment_lock();
    let saved = std::env::var_os(SWITCH);
    // SAFETY: `set_var`/`remove_var` race with concurrent reads of the environment from other
    // threads. This runs once per latched worker thread (the first time the process needs
    // candle's gradients), under a lock, and restores the previous value at once; candle reads
    // the variable only at a thread's first backward. A program that reads the environment on
    // other threads at that moment could see the variable set: the workspace's code does not.
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
