//! Standard output for results: a reader that went away (a closed pipe, as after `| head`)
//! ends the command quietly, as Unix tools do; any other failed write (a full disk) is an
//! error that says so, never a panic. (A standard output closed before start-up cannot be
//! told from `> /dev/null`: Rust's runtime reopens closed standard descriptors on /dev/null.)

use std::io::{ErrorKind, Write};

/// The reader of standard output closed its end of the pipe. `main` ends quietly on it, with
/// success: the reader has what it asked for.
#[derive(Debug)]
pub struct ClosedPipe;

impl std::fmt::Display for ClosedPipe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the reader of standard output closed the pipe")
    }
}

impl std::error::Error for ClosedPipe {}

/// Write `bytes` to standard output and flush: [`ClosedPipe`] when the reader went away, an
/// error naming standard output when the write fails.
pub fn write(bytes: &[u8]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::BrokenPipe => Err(ClosedPipe.into()),
        Err(e) => Err(anyhow::Error::new(e).context("writing to standard output")),
    }
}

/// [`write`] of a line: `text` and a line break.
pub fn line(text: &str) -> anyhow::Result<()> {
    write(format!("{text}\n").as_bytes())
}
