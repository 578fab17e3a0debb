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

struct Worker {
    jobs: Mutex<mpsc::Sender<Job>>,
}

/// Serialises the set-variable / first-backward / restore dance across workers.
static LATCH: Mutex<()> = Mutex::new(());
static KEEP_GRAPH: OnceLock<std::result::Result<Worker, String>> = OnceLock::new();
static DETACH: OnceLock<std::result::Result<Worker, String>> = OnceLock::new();

/// Run `loss.backward()` in the given mode and return the gradients of every `Var` it reaches.
pub fn backward(loss: &Tensor, mode: GradMode) -> Result<GradStore> {
    let cell = match mode {
        GradMode::KeepGraph => &KEEP_GRAPH,
        GradMode::Detach => &DETACH,
    };
    let worker = cell.get_or_init(|| start_worker(mode)).as_ref().map_err(|e| Error::GradMode(e.clone()))?;
    let (reply_tx, reply_rx) = mpsc::sync_channel(1);
    let loss = loss.clone();
    let job: Job = Box::new(move || {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| loss.backward()));
        let _ = reply_tx.send(result);
    });
    worker
        .jobs
        .lock()
        .map_err(|_| Error::GradMode("gradient worker lock poisoned".into()))?
        .send(job)
        .map_err(|_| Error::GradMode("gradient worker thread has stopped".into()))?;
    match reply_rx.recv() {
        Ok(Ok(grads)) => Ok(grads?),
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => Err(Error::GradMode("gradient worker thread has stopped".into())),
    }
}

fn start_worker(mode: GradMode) -> std::result::Result<Worker, String> {
    let (jobs_tx, jobs_rx) = mpsc::channel::<Job>();
    let (ready_tx, ready_rx) = mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name(format!("candle-backward-{mode:?}"))
        .spawn(move || {
            let _ = ready_tx.send(latch(mode).and_then(|()| self_check(mode)));
            for job in jobs_rx {
                job();
            }
        })
        .map_err(|e| format!("cannot start the gradient worker thread: {e}"))?;
    ready_rx.recv().map_err(|_| "gradient worker died while starting".to_owned())??;
    Ok(Worker { jobs: Mutex::new(jobs_tx) })
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
