//! The communication cost of data-parallel training, alone: the time of one meta-gradient
//! exchange (the ordered chain of `fewshot_meta::distributed` plus its broadcast) when every
//! rank is ready at once, for the 5-way and 20-way Omniglot nets (plain MAML: no learned rates
//! or per-step batch norm, which add a few thousand numbers).
//!
//! `cargo build --release -p fewshot-cli --features mpi --example mpi_exchange`, then
//! `mpirun -n 2 target/release/examples/mpi_exchange [repetitions]`.

use std::time::Instant;

use anyhow::Context;
use fewshot_meta::distributed;
use fewshot_model::ConvNetConfig;
use fewshot_model::engine::Layout;

fn main() -> anyhow::Result<()> {
    let _membership = fewshot_cli::ranks::start()?;
    let group = distributed::current().context("run under mpirun with 2 or more ranks")?;
    let reps: usize = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(200);
    for n_way in [5, 20] {
        // The engine's buffer: loss, correct count, then one number per parameter.
        let numbers = 2 + Layout::new(&ConvNetConfig::omniglot(n_way))?.len();
        let mine = vec![1f64; numbers]; // this rank's terms: one per number
        let mut times = Vec::with_capacity(reps);
        for rep in 0..reps + 10 {
            distributed::gather_u64(0)?; // every rank ready
            let start = Instant::now();
            let mut sum = vec![0f64; numbers];
            distributed::ordered_sum(&*group, &mut sum, |segment, offset| {
                distributed::add_block(segment, offset, 0, &mine, |v| v)
            })?;
            let t = start.elapsed().as_secs_f64();
            let want = group.size() as f64;
            anyhow::ensure!(sum.iter().all(|&s| s == want), "the chain lost a rank's term");
            if rep >= 10 {
                times.push(t);
            }
        }
        times.sort_by(f64::total_cmp);
        if group.rank() == 0 {
            let median = times[times.len() / 2];
            let mb = numbers as f64 * 8.0 / 1e6;
            println!(
                "{n_way}-way net: {numbers} numbers ({mb:.2} MB) per exchange; {} ranks: median {:.3} ms, \
                 p90 {:.3} ms over {reps} exchanges",
                group.size(),
                median * 1e3,
                times[times.len() * 9 / 10] * 1e3
            );
        }
    }
    Ok(())
}
