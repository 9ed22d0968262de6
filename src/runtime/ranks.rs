//! Data-parallel ranks: which of K processes this is, and the sums every rank needs.
//!
//! Launched by `mpirun -n K dcm …` (or `srun`) in a build with the `distributed` feature, the
//! process joins MPI's world communicator; otherwise, and in the default build, it is rank 0
//! of 1 and every operation here is the identity. MPI is initialised once (`init`) and shut
//! down when the returned guard drops, at the end of `main`.
//!
//! Sums are reduced to rank 0 and broadcast back, so every rank holds bit-identical values
//! (an all-reduce may associate differently on different ranks), which keeps the optimizer
//! and EMA states of all ranks equal without ever comparing them.

use anyhow::Result;
use candle_core::{Device, Tensor};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

/// This process's place among the ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    pub rank: usize,
    pub size: usize,
}

impl Place {
    pub const SINGLE: Place = Place { rank: 0, size: 1 };

    /// This rank's rows of a batch of `rows`: contiguous, in rank order, the first
    /// `rows mod size` ranks one row more.
    pub fn share(&self, rows: usize) -> Range<usize> {
        let (base, extra) = (rows / self.size, rows % self.size);
        let start = self.rank * base + self.rank.min(extra);
        start..start + base + usize::from(self.rank < extra)
    }

    pub fn is_root(&self) -> bool {
        self.rank == 0
    }
}

/// This process's place (rank 0 of 1 unless launched under MPI with `distributed`).
pub fn place() -> Place {
    backend::place()
}

/// Element-wise sums over all ranks, in place; identical on every rank afterwards.
pub fn sum(values: &mut [f64]) -> Result<()> {
    match place().size {
        1 => Ok(()),
        _ => {
            let started = std::time::Instant::now();
            let done = backend::sum(values);
            SUMMING_NANOS.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
            done
        }
    }
}

/// Whether sums of tensors on `device` run on it (NCCL: feature `nccl`, CUDA devices) rather
/// than through the host's `sum`: under mpirun/srun even for one rank, so that a single GPU
/// runs the communicator (scripts/gpu-check.sh).
pub fn sums_on(device: &Device) -> bool {
    cfg!(feature = "nccl") && device.is_cuda() && launched_by_mpi()
}

/// Element-wise sums of a device tensor over all ranks, in place, where `sums_on` its device;
/// identical on every rank afterwards.
pub fn sum_in_place(t: &Tensor) -> Result<()> {
    let started = std::time::Instant::now();
    let done = on_device::sum(t);
    SUMMING_NANOS.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
    done
}

#[cfg(feature = "nccl")]
mod on_device {
    use super::super::nccl;
    use anyhow::Result;
    use candle_core::Tensor;

    pub fn sum(t: &Tensor) -> Result<()> {
        let place = super::place();
        let _watch = super::watchdog::Waiting::start(place.rank);
        let ranks = nccl::Ranks {
            rank: place.rank,
            size: place.size,
            from_root: super::from_root,
        };
        nccl::all_reduce(t, &ranks)
    }
}

#[cfg(not(feature = "nccl"))]
mod on_device {
    use anyhow::Result;
    use candle_core::Tensor;

    pub fn sum(_: &Tensor) -> Result<()> {
        anyhow::bail!("sums on the device need a dcm built with the `nccl` feature")
    }
}

static SUMMING_NANOS: AtomicU64 = AtomicU64::new(0);

/// Seconds this rank has spent in `sum` so far: the collective itself and the wait for the
/// slowest rank, which is what data parallelism costs a step.
pub fn seconds_summing() -> f64 {
    SUMMING_NANOS.load(Ordering::Relaxed) as f64 * 1e-9
}

/// Every rank's `values` (of any length), in rank order, on rank 0; empty on the others.
pub fn gather(values: &[f64]) -> Result<Vec<Vec<f64>>> {
    match place().size {
        1 => Ok(vec![values.to_vec()]),
        _ => backend::gather(values),
    }
}

/// Rank 0's `bytes` on every rank (summed with the others' zeros: exact).
pub fn from_root(bytes: &[u8]) -> Result<Vec<u8>> {
    let place = place();
    if place.size == 1 {
        return Ok(bytes.to_vec());
    }
    let mut len = [if place.is_root() { bytes.len() as f64 } else { 0.0 }];
    sum(&mut len)?;
    let mut values: Vec<f64> = match place.is_root() {
        true => bytes.iter().map(|&b| f64::from(b)).collect(),
        false => vec![0.0; len[0] as usize],
    };
    sum(&mut values)?;
    Ok(values.iter().map(|&v| v as u8).collect())
}

/// Ends every rank's process with `code`: for an error on one rank, which the others would
/// otherwise wait for in their next sum until the watchdog's limit.
pub fn abort(code: i32) {
    if place().size > 1 {
        backend::abort(code);
    }
}

/// Joins the ranks when launched under MPI; the guard ends MPI when dropped.
pub fn init() -> Result<Guard> {
    backend::init()
}

pub use backend::Guard;

#[cfg(not(feature = "distributed"))]
mod backend {
    use super::Place;
    use anyhow::Result;

    /// Nothing to end without MPI.
    pub struct Guard;

    pub fn init() -> Result<Guard> {
        if super::launched_by_mpi() {
            anyhow::bail!(
                "launched by mpirun/srun, but this dcm was built without the `distributed` feature (cargo build --release --features distributed)"
            );
        }
        Ok(Guard)
    }

    pub fn place() -> Place {
        Place::SINGLE
    }

    pub fn sum(_: &mut [f64]) -> Result<()> {
        Ok(())
    }

    pub fn gather(values: &[f64]) -> Result<Vec<Vec<f64>>> {
        Ok(vec![values.to_vec()])
    }

    pub fn abort(_: i32) {}
}

/// This rank's index among the ranks on its own node (0 when not launched as a rank), as the
/// launcher states it: Open MPI, MPICH/Hydra or Slurm.
pub fn local_rank() -> usize {
    local_rank_from(|v| std::env::var(v).ok())
}

fn local_rank_from(var: impl Fn(&str) -> Option<String>) -> usize {
    ["OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"]
        .iter()
        .find_map(|v| var(v)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Whether a process manager started this process as one of several ranks (Open MPI, MPICH
/// and Slurm's PMI set these).
fn launched_by_mpi() -> bool {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"]
        .iter()
        .any(|v| std::env::var_os(v).is_some())
}

#[cfg(feature = "distributed")]
mod backend {
    use super::Place;
    use anyhow::{anyhow, Result};
    use mpi::collective::SystemOperation;
    use mpi::datatype::PartitionMut;
    use mpi::environment::Universe;
    use mpi::topology::SimpleCommunicator;
    use mpi::traits::*;
    use mpi::Threading;
    use std::sync::{Mutex, OnceLock};

    /// The world communicator, used by one thread at a time (MPI initialised `Serialized`:
    /// commands run on a rayon worker, not the main thread).
    struct World(Mutex<SimpleCommunicator>);
    // SAFETY: every use goes through the mutex, and MPI was initialised with
    // MPI_THREAD_SERIALIZED, which allows calls from any thread one at a time.
    unsafe impl Send for World {}
    unsafe impl Sync for World {}

    static WORLD: OnceLock<(World, Place)> = OnceLock::new();

    /// Ends MPI when dropped (the universe's drop calls MPI_Finalize).
    pub struct Guard(#[allow(dead_code)] Option<Universe>);

    pub fn init() -> Result<Guard> {
        if !super::launched_by_mpi() {
            return Ok(Guard(None));
        }
        let (universe, level) = mpi::initialize_with_threading(Threading::Serialized)
            .ok_or_else(|| anyhow!("MPI was initialised twice"))?;
        if level < Threading::Serialized {
            anyhow::bail!("the MPI library offers thread level {level:?}; dcm needs Serialized");
        }
        let world = universe.world();
        let place = Place {
            rank: world.rank() as usize,
            size: world.size() as usize,
        };
        let _ = WORLD.set((World(Mutex::new(world)), place));
        Ok(Guard(Some(universe)))
    }

    pub fn place() -> Place {
        WORLD.get().map_or(Place::SINGLE, |(_, p)| *p)
    }

    pub fn sum(values: &mut [f64]) -> Result<()> {
        let (world, place) = WORLD.get().ok_or_else(|| anyhow!("MPI is not initialised"))?;
        let _watch = super::watchdog::Waiting::start(place.rank);
        let world = world.0.lock().map_err(|_| anyhow!("MPI communicator poisoned"))?;
        let root = world.process_at_rank(0);
        if world.rank() == 0 {
            let mut total = vec![0f64; values.len()];
            root.reduce_into_root(&values[..], &mut total[..], SystemOperation::sum());
            values.copy_from_slice(&total);
        } else {
            root.reduce_into(&values[..], SystemOperation::sum());
        }
        root.broadcast_into(values);
        Ok(())
    }

    /// `MPI_Abort` on the world; a plain exit if the communicator is held (no call can be
    /// waiting in it on this rank's only MPI thread).
    pub fn abort(code: i32) {
        if let Some(world) = WORLD.get().and_then(|(w, _)| w.0.try_lock().ok()) {
            world.abort(code);
        }
        std::process::exit(code);
    }

    /// Lengths first (one count per rank), then the values by `MPI_Gatherv`.
    pub fn gather(values: &[f64]) -> Result<Vec<Vec<f64>>> {
        let (world, place) = WORLD.get().ok_or_else(|| anyhow!("MPI is not initialised"))?;
        let _watch = super::watchdog::Waiting::start(place.rank);
        let world = world.0.lock().map_err(|_| anyhow!("MPI communicator poisoned"))?;
        let root = world.process_at_rank(0);
        let count = mpi::Count::try_from(values.len())
            .map_err(|_| anyhow!("{} values are too many for one MPI message", values.len()))?;
        if world.rank() != 0 {
            root.gather_into(&count);
            root.gather_varcount_into(values);
            return Ok(Vec::new());
        }
        let mut counts = vec![0 as mpi::Count; place.size];
        root.gather_into_root(&count, &mut counts[..]);
        let displs: Vec<mpi::Count> = counts
            .iter()
            .scan(0, |at, &c| {
                let start = *at;
                *at += c;
                Some(start)
            })
            .collect();
        let total: usize = counts.iter().map(|&c| c as usize).sum();
        let mut all = vec![0f64; total];
        {
            let mut parts = PartitionMut::new(&mut all[..], &counts[..], &displs[..]);
            root.gather_varcount_into_root(values, &mut parts);
        }
        let mut at = 0;
        Ok(counts
            .iter()
            .map(|&c| {
                let part = all[at..at + c as usize].to_vec();
                at += c as usize;
                part
            })
            .collect())
    }
}

/// A rank that hangs without dying (a stuck device, a stopped process) would leave the others
/// waiting in the sum forever, as MPI has no timeouts: a rank waiting longer than the limit
/// ends its process with a message, and the launcher then ends the job. The limit is 20 times
/// the longest interval between two sums so far (a step), at least 30 minutes (the first
/// step waits for the slowest rank to load its data)
/// (`DCM_RANK_TIMEOUT=SECONDS` sets it instead).
#[cfg(feature = "distributed")]
mod watchdog {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    /// Milliseconds since `epoch()` when the current wait began, 0 when not waiting.
    static WAITING_SINCE: AtomicU64 = AtomicU64::new(0);
    /// The longest interval between two waits so far, in milliseconds.
    static LONGEST_STEP: AtomicU64 = AtomicU64::new(0);
    static LAST_END: AtomicU64 = AtomicU64::new(0);

    fn epoch() -> Instant {
        static EPOCH: OnceLock<Instant> = OnceLock::new();
        *EPOCH.get_or_init(Instant::now)
    }

    fn now_ms() -> u64 {
        epoch().elapsed().as_millis() as u64 + 1
    }

    fn limit_ms() -> u64 {
        match std::env::var("DCM_RANK_TIMEOUT")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            Some(s) => s * 1000,
            None => (20 * LONGEST_STEP.load(Ordering::Relaxed)).max(1_800_000),
        }
    }

    /// The wait of one sum; it ends when dropped.
    pub struct Waiting;

    impl Waiting {
        pub fn start(rank: usize) -> Self {
            static THREAD: OnceLock<()> = OnceLock::new();
            THREAD.get_or_init(|| {
                std::thread::spawn(move || watch(rank));
            });
            let now = now_ms();
            let last = LAST_END.load(Ordering::Relaxed);
            if last > 0 {
                LONGEST_STEP.fetch_max(now - last, Ordering::Relaxed);
            }
            WAITING_SINCE.store(now, Ordering::Relaxed);
            Waiting
        }
    }

    impl Drop for Waiting {
        fn drop(&mut self) {
            WAITING_SINCE.store(0, Ordering::Relaxed);
            LAST_END.store(now_ms(), Ordering::Relaxed);
        }
    }

    fn watch(rank: usize) {
        loop {
            std::thread::sleep(Duration::from_millis(500));
            let since = WAITING_SINCE.load(Ordering::Relaxed);
            let limit = limit_ms();
            if since > 0 && now_ms().saturating_sub(since) > limit {
                eprintln!(
                    "error: rank {rank}: no answer from the other ranks for {} s (one of them died or hangs); ending the job, the last checkpoint is kept",
                    limit / 1000
                );
                std::process::exit(70);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first launcher variable that parses wins; none (or garbage) is node rank 0.
    #[test]
    fn local_rank_comes_from_the_launcher() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        assert_eq!(local_rank_from(env(&[])), 0);
        assert_eq!(local_rank_from(env(&[("SLURM_LOCALID", "3")])), 3);
        assert_eq!(
            local_rank_from(env(&[("OMPI_COMM_WORLD_LOCAL_RANK", "1"), ("SLURM_LOCALID", "3")])),
            1
        );
        assert_eq!(
            local_rank_from(env(&[("MPI_LOCALRANKID", "x"), ("SLURM_LOCALID", "2")])),
            2
        );
    }

    /// Shares cover the batch exactly once, in rank order, sizes differing by at most one.
    #[test]
    fn shares_partition_the_rows() {
        for size in 1..6 {
            for rows in 0..20 {
                let shares: Vec<Range<usize>> = (0..size).map(|rank| Place { rank, size }.share(rows)).collect();
                let flat: Vec<usize> = shares.iter().flat_map(|r| r.clone()).collect();
                assert_eq!(flat, (0..rows).collect::<Vec<_>>(), "{size} ranks, {rows} rows");
                let lens: Vec<usize> = shares.iter().map(|r| r.len()).collect();
                assert!(lens.iter().max().unwrap() - lens.iter().min().unwrap() <= 1);
            }
        }
    }
}
