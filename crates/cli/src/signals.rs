//! SIGINT (Ctrl-C) and SIGTERM (`timeout`, systemd, Slurm, `docker stop`): the first asks a
//! run to stop after its current step and write its last checkpoint; a second one of the same
//! kind leaves at once. An interrupted command exits with 128 + the signal's number.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// A signal that stops a run early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM.
    Terminate,
}

impl Signal {
    /// The conventional exit status of a process stopped by this signal (128 + its number).
    pub fn exit_code(self) -> u8 {
        match self {
            Signal::Interrupt => 130,
            Signal::Terminate => 143,
        }
    }

    /// The signal's name.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Interrupt => "SIGINT",
            Signal::Terminate => "SIGTERM",
        }
    }
}

/// Flags set by the signal handlers, read by the training loop between steps.
#[derive(Debug, Clone, Default)]
pub struct StopSignal {
    interrupt: Arc<AtomicBool>,
    terminate: Arc<AtomicBool>,
    /// Whether the notice of the first signal was printed (by whoever saw it first).
    noticed: Arc<AtomicBool>,
}

impl StopSignal {
    /// Flags that no handler sets (library use, tests).
    pub fn none() -> StopSignal {
        StopSignal::default()
    }

    /// Install the handlers for SIGINT and SIGTERM.
    pub fn install() -> anyhow::Result<StopSignal> {
        let stop = StopSignal::default();
        for (signal, flag, code) in [
            (signal_hook::consts::SIGINT, &stop.interrupt, Signal::Interrupt.exit_code()),
            (signal_hook::consts::SIGTERM, &stop.terminate, Signal::Terminate.exit_code()),
        ] {
            // Registered first, so it sees the flag as it was before this delivery: a second
            // signal of the same kind exits at once.
            signal_hook::flag::register_conditional_shutdown(signal, code as i32, flag.clone())?;
            signal_hook::flag::register(signal, flag.clone())?;
        }
        // Say at once what the first signal does: the loop sees it only between steps, and a
        // step with its validation can take half a minute. (The handlers themselves cannot
        // print; a second signal exits from inside its handler, so the message says so first.)
        let watched = stop.clone();
        std::thread::Builder::new().name("signal-notice".into()).spawn(move || {
            while watched.received().is_none() {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        })?;
        Ok(stop)
    }

    /// The signal received so far, if any (SIGTERM first when both came). The first call that
    /// sees one prints what happens next.
    pub fn received(&self) -> Option<Signal> {
        let signal = if self.terminate.load(Ordering::SeqCst) {
            Some(Signal::Terminate)
        } else if self.interrupt.load(Ordering::SeqCst) {
            Some(Signal::Interrupt)
        } else {
            None
        }?;
        if !self.noticed.swap(true, Ordering::SeqCst) && crate::ranks::is_writer() {
            eprintln!(
                "{}: stopping after the current step (and its validation, if it has one), then writing the \
                 last checkpoint; send {} again to leave at once, without it",
                signal.name(),
                signal.name()
            );
        }
        Some(signal)
    }

    /// Raise `signal`'s flag as its handler would (for tests and embedding).
    pub fn raise(&self, signal: Signal) {
        match signal {
            Signal::Interrupt => self.interrupt.store(true, Ordering::SeqCst),
            Signal::Terminate => self.terminate.store(true, Ordering::SeqCst),
        }
    }
}
