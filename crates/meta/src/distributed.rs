//! Data-parallel meta-training over several processes (MPI ranks, or anything that can send
//! numbers between them): [`Collective`], the few operations needed, and [`install`], which
//! makes the native engine split every batch's tasks over the group.
//!
//! A batch's tasks are independent, so rank `r` of `n` computes the contiguous share
//! [`share`]`(t, r, n)` of them. The combined meta-gradient is the same sum, in the same task
//! order, as one process computes (an *ordered chain*): rank 0 adds its tasks' gradients to
//! zeros, sends the running sum to rank 1, which adds its own in order and passes it on; the
//! last rank broadcasts the total. Floating-point addition is done in exactly the order of one
//! process, so every rank gets the bits one process would, whatever the number of ranks: the
//! checkpoints of a run do not depend on how it was spread. Per step and rank this moves one
//! running sum in and one out (8 bytes per parameter) plus the broadcast, independent of the
//! number of tasks; the chain runs in segments, as a pipeline ([`ordered_sum`]). Evaluation gathers each rank's logits ([`Collective::all_gather`]).
//!
//! This crate depends on no MPI library: the `fewshot` binary's `mpi` feature implements
//! [`Collective`] over rsmpi; tests implement it over channels between threads. The group is
//! per thread ([`install`] on the thread that calls the engine), as MPI's single-threaded mode
//! wants: the engine talks to the group only from that thread, never from its workers.

use std::cell::RefCell;
use std::ops::Range;
use std::rc::Rc;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// What the engine needs from a group of processes that train together. Every operation is
/// collective in the MPI sense where it says so: all ranks call it, in the same order.
pub trait Collective {
    /// This process's index, `0..size()`.
    fn rank(&self) -> usize;
    /// Number of processes.
    fn size(&self) -> usize;
    /// Send `data` to rank `to` (blocking until it may be reused).
    fn send(&self, to: usize, data: &[f64]) -> Result<()>;
    /// Receive exactly `data.len()` numbers from rank `from`.
    fn receive(&self, from: usize, data: &mut [f64]) -> Result<()>;
    /// Collective: `root`'s `data` replaces every other rank's.
    fn broadcast(&self, root: usize, data: &mut [f64]) -> Result<()>;
    /// Collective: every rank's `mine`, concatenated in rank order; `counts[r]` is rank `r`'s
    /// length (the same `counts` on every rank).
    fn all_gather(&self, mine: &[f64], counts: &[usize]) -> Result<Vec<f64>>;
}

thread_local! {
    static GROUP: RefCell<Option<Rc<dyn Collective>>> = const { RefCell::new(None) };
    /// Time this thread spent in collective calls, waiting for other ranks included.
    static IN_EXCHANGES: std::cell::Cell<Duration> = const { std::cell::Cell::new(Duration::ZERO) };
}

/// Time this thread has spent in the group's collective calls (the meta-gradient chain, the
/// gathering of logits and of small values), waiting for slower ranks included: the
/// communication side of a step, against the rest, its compute.
pub fn time_in_exchanges() -> Duration {
    IN_EXCHANGES.with(|t| t.get())
}

/// Run `f`, adding its time to [`time_in_exchanges`].
fn timed<R>(f: impl FnOnce() -> R) -> R {
    let start = Instant::now();
    let r = f();
    IN_EXCHANGES.with(|t| t.set(t.get() + start.elapsed()));
    r
}

/// Collective: [`Collective::all_gather`] on `group`, timed (see [`time_in_exchanges`]).
pub fn all_gather(group: &dyn Collective, mine: &[f64], counts: &[usize]) -> Result<Vec<f64>> {
    timed(|| group.all_gather(mine, counts))
}

/// Split the native engine's work over `group` for calls made on this thread from now on (a
/// group of one changes nothing). Returns the group installed before, if any.
pub fn install(group: Rc<dyn Collective>) -> Option<Rc<dyn Collective>> {
    GROUP.with(|g| g.borrow_mut().replace(group))
}

/// Stop splitting work on this thread; returns the group that was installed.
pub fn uninstall() -> Option<Rc<dyn Collective>> {
    GROUP.with(|g| g.borrow_mut().take())
}

/// The group installed on this thread, if it has more than one rank.
pub fn current() -> Option<Rc<dyn Collective>> {
    GROUP.with(|g| g.borrow().clone()).filter(|g| g.size() > 1)
}

/// This thread's rank and group size: `(0, 1)` without a group.
pub fn rank_and_size() -> (usize, usize) {
    current().map_or((0, 1), |g| (g.rank(), g.size()))
}

/// Rank `rank`'s tasks of `tasks` over `size` ranks: contiguous, in task order, the first
/// `tasks % size` ranks one more than the rest (ranks past the tasks get none).
pub fn share(tasks: usize, rank: usize, size: usize) -> Range<usize> {
    let (base, extra) = (tasks / size, tasks % size);
    let start = rank * base + rank.min(extra);
    start..start + base + usize::from(rank < extra)
}

/// Numbers per message of the ordered chain ([`ordered_sum`]): 128 KiB, long enough that a
/// message's latency is small beside its transfer, short enough that the chain is a pipeline
/// (rank `r + 1` adds to the first segment while rank `r` still works on the second).
pub const SEGMENT: usize = 1 << 14;

/// The ordered chain (see the module's notes). `sum` arrives holding zeros; on return it
/// holds, on every rank, what one process computes by applying rank 0's terms, then rank 1's,
/// and so on, to one running buffer, bit for bit. `add(segment, offset)` adds this rank's
/// terms, in its own order, to `segment`, which is `sum[offset..offset + segment.len()]`. The
/// chain runs segment by segment ([`SEGMENT`] numbers), so that the ranks work as a pipeline:
/// for `n` ranks and `b` bytes it takes about `(n - 1)` segment hops plus `b` over the link's
/// bandwidth, instead of `(n - 1)` times `b`.
pub fn ordered_sum(group: &dyn Collective, sum: &mut [f64], add: impl FnMut(&mut [f64], usize)) -> Result<()> {
    timed(|| chain(group, sum, add))
}

fn chain(group: &dyn Collective, sum: &mut [f64], mut add: impl FnMut(&mut [f64], usize)) -> Result<()> {
    let (rank, size) = (group.rank(), group.size());
    for (i, segment) in sum.chunks_mut(SEGMENT).enumerate() {
        if rank > 0 {
            group.receive(rank - 1, segment)?;
        }
        add(segment, i * SEGMENT);
        if rank + 1 < size {
            group.send(rank + 1, segment)?;
        }
    }
    group.broadcast(size - 1, sum)
}

/// Add `values[j]` (as f64) to `segment`'s element for buffer index `start + j`, where
/// `segment` is the buffer's indices `offset..offset + segment.len()`: the part of a
/// contiguous block of the buffer that falls in a segment of [`ordered_sum`].
pub fn add_block<V: Copy>(segment: &mut [f64], offset: usize, start: usize, values: &[V], to_f64: impl Fn(V) -> f64) {
    let lo = offset.max(start);
    let hi = (offset + segment.len()).min(start + values.len());
    for i in lo..hi {
        segment[i - offset] += to_f64(values[i - start]);
    }
}

/// Collective: whether any rank says `mine` (the ranks agree, e.g. on stopping).
pub fn any(mine: bool) -> Result<bool> {
    Ok(max(mine as u64)? > 0)
}

/// Collective: the largest of the ranks' `mine` (up to 2^53), or `mine` without a group.
pub fn max(mine: u64) -> Result<u64> {
    Ok(gather_u64(mine)?.into_iter().max().unwrap_or(mine))
}

/// Collective: every rank's `mine` in rank order (values up to 2^53 travel exactly), or
/// `[mine]` without a group.
pub fn gather_u64(mine: u64) -> Result<Vec<u64>> {
    let Some(group) = current() else { return Ok(vec![mine]) };
    if mine > 1 << 53 {
        return Err(Error::InvalidSetting {
            name: "gathered value",
            value: mine.to_string(),
            expected: "at most 2^53 (exact in an f64)".into(),
        });
    }
    let all = all_gather(&*group, &[mine as f64], &vec![1; group.size()])?;
    Ok(all.into_iter().map(|v| v as u64).collect())
}

/// A group of threads of one process joined by channels: [`LocalGroup::new`]`(n)` gives the
/// `n` ranks, one for each thread to [`install`]. For tests and for trying a split without MPI;
/// it computes what `n` MPI ranks compute.
#[derive(Debug)]
pub struct LocalGroup {
    rank: usize,
    size: usize,
    /// `to[r]`: into rank `r`'s inbox from this rank.
    to: Vec<Sender<Vec<f64>>>,
    /// `from[r]`: messages from rank `r`.
    from: Vec<Receiver<Vec<f64>>>,
}

impl LocalGroup {
    /// `n` connected ranks, in rank order.
    pub fn new(n: usize) -> Vec<LocalGroup> {
        type Link = (Sender<Vec<f64>>, Receiver<Vec<f64>>);
        let mut links: Vec<Vec<Link>> = (0..n).map(|_| (0..n).map(|_| channel()).collect()).collect();
        // links[a][b] carries a -> b: rank a keeps the senders of row a, rank b the receivers of
        // column b.
        let mut to: Vec<Vec<Sender<Vec<f64>>>> = vec![Vec::new(); n];
        let mut from: Vec<Vec<Option<Receiver<Vec<f64>>>>> = (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
        for (a, row) in links.drain(..).enumerate() {
            for (b, (tx, rx)) in row.into_iter().enumerate() {
                to[a].push(tx);
                from[b][a] = Some(rx);
            }
        }
        to.into_iter()
            .zip(from)
            .enumerate()
            .map(|(rank, (to, from))| LocalGroup {
                rank,
                size: n,
                to,
                from: from.into_iter().map(|r| r.expect("every link made")).collect(),
            })
            .collect()
    }

    fn fail(&self, message: String) -> Error {
        Error::Group { rank: self.rank, message }
    }

    fn recv(&self, from: usize, len: usize) -> Result<Vec<f64>> {
        let got = self.from[from].recv().map_err(|_| self.fail(format!("rank {from} has gone")))?;
        if got.len() != len {
            return Err(self.fail(format!("rank {from} sent {} numbers, {len} expected", got.len())));
        }
        Ok(got)
    }
}

impl Collective for LocalGroup {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn send(&self, to: usize, data: &[f64]) -> Result<()> {
        self.to[to].send(data.to_vec()).map_err(|_| self.fail(format!("rank {to} has gone")))
    }
    fn receive(&self, from: usize, data: &mut [f64]) -> Result<()> {
        data.copy_from_slice(&self.recv(from, data.len())?);
        Ok(())
    }
    fn broadcast(&self, root: usize, data: &mut [f64]) -> Result<()> {
        if self.rank == root {
            (0..self.size).filter(|&r| r != root).try_for_each(|r| self.send(r, data))
        } else {
            self.receive(root, data)
        }
    }
    fn all_gather(&self, mine: &[f64], counts: &[usize]) -> Result<Vec<f64>> {
        (0..self.size).filter(|&r| r != self.rank).try_for_each(|r| self.send(r, mine))?;
        let mut out = Vec::with_capacity(counts.iter().sum());
        for (r, &count) in counts.iter().enumerate() {
            if r == self.rank {
                out.extend_from_slice(mine);
            } else {
                out.extend(self.recv(r, count)?);
            }
        }
        Ok(out)
    }
}

/// Run `f` on each rank of a [`LocalGroup`] of `n` threads, the group installed on its thread;
/// the results in rank order. A panic on a rank is resumed here.
pub fn on_local_ranks<R: Send + 'static>(n: usize, f: impl Fn() -> R + Send + Sync + 'static) -> Vec<R> {
    let f = std::sync::Arc::new(f);
    let handles: Vec<_> = LocalGroup::new(n)
        .into_iter()
        .map(|g| {
            let f = f.clone();
            std::thread::spawn(move || {
                install(Rc::new(g));
                f()
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_the_tasks_in_order_once() {
        for tasks in 0..40 {
            for size in 1..10 {
                let shares: Vec<_> = (0..size).map(|r| share(tasks, r, size)).collect();
                assert_eq!(shares[0].start, 0);
                assert_eq!(shares[size - 1].end, tasks);
                for w in shares.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                    assert!(w[0].len() >= w[1].len() && w[0].len() - w[1].len() <= 1);
                }
            }
        }
        assert_eq!(share(32, 3, 5), 20..26);
        assert_eq!(share(2, 3, 4), 2..2);
    }

    #[test]
    fn the_ordered_chain_adds_in_one_process_order_bit_for_bit() {
        // Terms whose sum depends on the order of addition in f64.
        let terms: Vec<f64> =
            (0..23).map(|i| (1.0 + i as f64 * 0.37).powi(7) * if i % 3 == 0 { -1.0 } else { 1e-9 }).collect();
        let serial = terms.iter().fold(0.0, |s, t| s + t);
        let reversed = terms.iter().rev().fold(0.0, |s, t| s + t);
        assert_ne!(
            serial.to_bits(),
            reversed.to_bits(),
            "the terms must be order-sensitive for this test to mean anything"
        );
        for n in [1, 2, 3, 5, 30] {
            let terms = terms.clone();
            let sums = on_local_ranks(n, move || {
                let (rank, size) = rank_and_size();
                let mine = terms[share(terms.len(), rank, size)].to_vec();
                let mut sum = [0.0];
                match current() {
                    Some(g) => ordered_sum(&*g, &mut sum, |s, _| mine.iter().for_each(|t| s[0] += t)).unwrap(),
                    None => mine.iter().for_each(|t| sum[0] += t),
                }
                sum[0]
            });
            for s in sums {
                assert_eq!(s.to_bits(), serial.to_bits(), "{n} ranks");
            }
        }
    }

    #[test]
    fn the_chain_runs_segment_by_segment_over_long_buffers() {
        // Three segments and a bit: each rank adds `rank + index / 1000` to every element.
        let len = 3 * SEGMENT + 5;
        let got = on_local_ranks(3, move || {
            let g = current().unwrap();
            let mut sum = vec![0f64; len];
            let mine: Vec<f64> = (0..len).map(|i| g.rank() as f64 + i as f64 / 1000.0).collect();
            ordered_sum(&*g, &mut sum, |segment, offset| add_block(segment, offset, 0, &mine, |v| v)).unwrap();
            sum
        });
        let want: Vec<f64> = (0..len).map(|i| (0..3).fold(0.0, |s, r| s + (r as f64 + i as f64 / 1000.0))).collect();
        for sum in got {
            assert!(sum == want);
        }
        // A block that starts inside a segment and ends in the next.
        let mut segment = vec![0.0; 4];
        add_block(&mut segment, 8, 10, &[1.0, 2.0, 3.0, 4.0], |v| v);
        assert_eq!(segment, [0.0, 0.0, 1.0, 2.0]);
    }

    #[test]
    fn ranks_agree_on_any_and_max() {
        let got = on_local_ranks(3, || {
            let (rank, _) = rank_and_size();
            (
                any(rank == 1).unwrap(),
                any(false).unwrap(),
                max(10 + rank as u64).unwrap(),
                gather_u64(rank as u64).unwrap(),
            )
        });
        for g in got {
            assert_eq!(g, (true, false, 12, vec![0, 1, 2]));
        }
        assert_eq!(rank_and_size(), (0, 1), "no group on this thread");
        assert!(any(true).unwrap());
    }
}
