//! Standard output for results: a reader that went away (a closed pipe, as after `| head`)
//! ends the command quietly, as Unix tools do; any other failed write (a full disk) is an
//! error that says so, never a panic. A standard output that was closed when the process
//! started ([`closed_at_start`]) is refused where the output is the command's whole result
//! (`predict --out -`).

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
/// error naming standard output when the write fails. Under MPI, rank 0 alone writes (the
/// others computed the same result).
pub fn write(bytes: &[u8]) -> anyhow::Result<()> {
    if !crate::ranks::is_writer() {
        return Ok(());
    }
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

/// Whether standard output was closed when the process started (`fewshot ... >&-`). Rust's
/// runtime reopens a closed standard descriptor on `/dev/null` for reading and writing, which
/// a shell's `> /dev/null` (write only) never does: on Linux the two are told apart by
/// `/proc/self/fd/1` and the access mode in `/proc/self/fdinfo/1`. Elsewhere: `false`.
pub fn closed_at_start() -> bool {
    let Ok(target) = std::fs::read_link("/proc/self/fd/1") else { return false };
    if target != std::path::Path::new("/dev/null") {
        return false;
    }
    let Ok(info) = std::fs::read_to_string("/proc/self/fdinfo/1") else { return false };
    let flags = info.lines().find_map(|l| l.strip_prefix("flags:")).and_then(|f| u32::from_str_radix(f.trim(), 8).ok());
    flags.is_some_and(|f| f & 0o3 == 0o2) // O_RDWR
}
