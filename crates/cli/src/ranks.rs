//! Running as one of several processes: `mpirun -n 4 fewshot train ...` (or `srun` under
//! Slurm) with the `mpi` feature. [`start`] joins the MPI job, installs the group in
//! fewshot-meta's native engine ([`fewshot_meta::distributed`]), which then splits every
//! batch's tasks (training and evaluation) over the ranks and combines them in one process's
//! order, so that results do not depend on the number of ranks. Rank 0 alone writes: the run
//! folder's lock, checkpoints, metrics, standard output and progress ([`is_writer`]); the
//! others compute and keep quiet. Without the feature, a process that finds itself started by
//! `mpirun` or `srun` says how to build the one that can take part, rather than training alone
//! beside its copies.

use std::sync::OnceLock;

/// This process's place in the job: rank and number of ranks.
static PLACE: OnceLock<(usize, usize)> = OnceLock::new();

/// This process's rank (0 when alone).
pub fn rank() -> usize {
    PLACE.get().map_or(0, |p| p.0)
}

/// Number of ranks (1 when alone).
pub fn size() -> usize {
    PLACE.get().map_or(1, |p| p.1)
}

/// Whether this process writes files and output: rank 0.
pub fn is_writer() -> bool {
    rank() == 0
}

/// `"rank N: "` in a job of several ranks, else nothing: the prefix of this process's errors.
pub fn prefix() -> String {
    if size() > 1 { format!("rank {}: ", rank()) } else { String::new() }
}

/// Membership of the MPI job, for as long as the process runs: dropping it leaves the job
/// (`MPI_Finalize`).
pub struct Membership {
    #[cfg(feature = "mpi")]
    universe: Option<mpi::environment::Universe>,
    /// Ranks on this machine (this one included).
    local: usize,
}

impl Membership {
    /// Ranks running on this machine, this one included (1 when alone): they share its cores.
    pub fn local_ranks(&self) -> usize {
        self.local
    }

    /// The cores this process may use by default: those it is bound to when a launcher bound
    /// it to part of the machine (mpirun's `--bind-to core`, Slurm's `--cpus-per-task` with
    /// binding), else its share of the machine's cores among the ranks running there.
    pub fn cores(&self) -> usize {
        let allowed = std::thread::available_parallelism().map_or(1, |n| n.get()); // the affinity mask
        let online = std::fs::read_to_string("/proc/cpuinfo")
            .map(|t| t.lines().filter(|l| l.starts_with("processor")).count())
            .unwrap_or(0);
        if self.local > 1 && allowed >= online { (allowed / self.local).max(1) } else { allowed }
    }

    /// Stop every rank of the job at once with `code` (after an error on this one, so that the
    /// others do not wait for it forever). Alone: exit with `code`.
    pub fn abort(&self, code: i32) -> ! {
        #[cfg(feature = "mpi")]
        if let Some(universe) = &self.universe {
            use mpi::traits::Communicator;
            universe.world().abort(code)
        }
        std::process::exit(code)
    }
}

/// Environment variables that MPI launchers (OpenMPI's mpirun, MPICH's Hydra and PMI-2,
/// Slurm's srun) set in the processes they start, with the number of ranks. (Not
/// `SLURM_NTASKS`: a batch script that runs one process also has it.)
const LAUNCHER_SIZE_VARS: [&str; 3] = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS"];

/// The number of ranks a launcher says this process is one of, if more than one.
fn launched_as() -> Option<(&'static str, usize)> {
    LAUNCHER_SIZE_VARS
        .iter()
        .find_map(|v| std::env::var(v).ok().and_then(|s| s.trim().parse().ok()).map(|n| (*v, n)))
        .filter(|&(_, n)| n > 1)
}

/// Join the MPI job this process was started in (or run alone), before any other thread
/// starts.
pub fn start() -> anyhow::Result<Membership> {
    #[cfg(feature = "mpi")]
    {
        use mpi::traits::Communicator;
        let (universe, threading) = mpi::initialize_with_threading(mpi::Threading::Funneled)
            .ok_or_else(|| anyhow::anyhow!("MPI was already initialised in this process"))?;
        if threading < mpi::Threading::Funneled {
            anyhow::bail!(
                "the MPI library offers threading level {threading:?}; fewshot needs Funneled (worker \
                 threads compute, the main thread alone calls MPI)"
            );
        }
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        let local = world.split_shared(world.rank()).size() as usize;
        if let Some((var, n)) = launched_as()
            && size != n
        {
            anyhow::bail!(
                "started as one of {n} ranks ({var}={n}), but MPI sees {size}: the launcher and the MPI \
                 library fewshot was built against do not talk to each other. Use that library's own \
                 mpirun, or srun with the MPI plugin it supports (e.g. srun --mpi=pmix)"
            );
        }
        PLACE.set((rank, size)).map_err(|_| anyhow::anyhow!("ranks::start called twice"))?;
        if size > 1 {
            fewshot_meta::distributed::install(std::rc::Rc::new(mpi_group::MpiGroup { world }));
        }
        Ok(Membership { universe: Some(universe), local })
    }
    #[cfg(not(feature = "mpi"))]
    {
        if let Some((var, n)) = launched_as() {
            anyhow::bail!(
                "started as one of {n} ranks ({var}={n}), but this fewshot was built without MPI: \
                 every rank would train alone into the same run folder. Build it with the `mpi` \
                 feature (`cargo build --release -p fewshot-cli --features mpi`, which needs \
                 libopenmpi-dev and libclang-dev), or run one process"
            );
        }
        let _ = PLACE.set((0, 1));
        Ok(Membership { local: 1 })
    }
}

#[cfg(feature = "mpi")]
mod mpi_group {
    use fewshot_meta::Result;
    use fewshot_meta::distributed::Collective;
    use mpi::datatype::PartitionMut;
    use mpi::topology::SimpleCommunicator;
    use mpi::traits::{Communicator, CommunicatorCollectives, Destination, Root, Source};

    /// The job's world communicator as fewshot-meta's [`Collective`]. MPI's default error
    /// handler stops the whole job on a failed call, so the calls here do not return errors.
    pub struct MpiGroup {
        pub world: SimpleCommunicator,
    }

    impl Collective for MpiGroup {
        fn rank(&self) -> usize {
            self.world.rank() as usize
        }
        fn size(&self) -> usize {
            self.world.size() as usize
        }
        fn send(&self, to: usize, data: &[f64]) -> Result<()> {
            self.world.process_at_rank(to as i32).send(data);
            Ok(())
        }
        fn receive(&self, from: usize, data: &mut [f64]) -> Result<()> {
            let status = self.world.process_at_rank(from as i32).receive_into(data);
            let got = status.count(<f64 as mpi::datatype::Equivalence>::equivalent_datatype()) as usize;
            if got != data.len() {
                return Err(fewshot_meta::Error::Group {
                    rank: self.rank(),
                    message: format!("rank {from} sent {got} numbers, {} expected", data.len()),
                });
            }
            Ok(())
        }
        fn broadcast(&self, root: usize, data: &mut [f64]) -> Result<()> {
            self.world.process_at_rank(root as i32).broadcast_into(data);
            Ok(())
        }
        fn all_gather(&self, mine: &[f64], counts: &[usize]) -> Result<Vec<f64>> {
            let counts: Vec<i32> = counts.iter().map(|&c| c as i32).collect();
            let displs: Vec<i32> = counts.iter().scan(0, |at, &c| Some(std::mem::replace(at, *at + c))).collect();
            let mut out = vec![0f64; counts.iter().map(|&c| c as usize).sum()];
            let mut partition = PartitionMut::new(&mut out[..], counts, displs);
            self.world.all_gather_varcount_into(mine, &mut partition);
            Ok(out)
        }
    }
}
