//! Sums of CUDA tensors over the ranks through NCCL (feature `nccl`): one communicator per
//! process, made at the first sum on the GPU this rank trains on, and an in-place all-reduce on
//! that device's stream, so the sum is ordered with candle's kernels and never leaves the GPU.
//!
//! Rank 0 makes NCCL's unique id and the caller's `from_root` (MPI, in runtime::ranks) sends it
//! to the others; each rank then joins the communicator on its own device. NCCL computes each element's sum once
//! (its ring and tree all-reduce end by copying the reduced values to every rank), so every
//! rank holds the same bits afterwards, as ranks::sum guarantees on the host.

use anyhow::{anyhow, ensure, Result};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::CudaStream;
use candle_core::cuda_backend::cudarc::nccl::result::NcclError;
use candle_core::cuda_backend::cudarc::nccl::{Comm, Id, ReduceOp};
use candle_core::{CpuStorage, CudaStorage, DType, InplaceOp1, Layout, Tensor};
use std::sync::{Arc, Mutex, OnceLock};

/// The communicator, used by one thread at a time.
struct Shared(Mutex<Comm>);
// SAFETY: the NCCL communicator is a handle that NCCL allows to be used from any thread, one
// call at a time, which the mutex ensures.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

static COMM: OnceLock<Shared> = OnceLock::new();

/// Where this process is among the ranks, and how rank 0's bytes reach every rank.
pub struct Ranks {
    pub rank: usize,
    pub size: usize,
    pub from_root: fn(&[u8]) -> Result<Vec<u8>>,
}

/// Sums `t` (a contiguous f32 or f64 CUDA tensor) over all ranks, in place. Every rank must
/// call it at the same point with a tensor of the same size.
pub fn all_reduce(t: &Tensor, ranks: &Ranks) -> Result<()> {
    let stream = t.device().as_cuda_device()?.cuda_stream();
    let shared = match COMM.get() {
        Some(shared) => shared,
        None => {
            let comm = join(stream.clone(), ranks)?;
            COMM.get_or_init(|| Shared(Mutex::new(comm)))
        }
    };
    let comm = shared.0.lock().map_err(|_| anyhow!("NCCL communicator poisoned"))?;
    ensure!(
        comm.ordinal() == stream.context().ordinal(),
        "NCCL communicator is on GPU {}, but the gradients are on GPU {}",
        comm.ordinal(),
        stream.context().ordinal()
    );
    t.inplace_op1(&SumOverRanks(&comm))?;
    t.device().synchronize()?;
    Ok(())
}

/// This rank's part of the communicator, on the device of `stream`.
fn join(stream: Arc<CudaStream>, ranks: &Ranks) -> Result<Comm> {
    let id = match ranks.rank == 0 {
        true => Id::new().map_err(|e| anyhow!("NCCL could not make its unique id: {:?}", e.0))?,
        false => Id::uninit([0; 128]),
    };
    let bytes: Vec<u8> = id.internal().iter().map(|&c| c as u8).collect();
    let shared = (ranks.from_root)(&bytes)?;
    let internal: [std::ffi::c_char; 128] = std::array::from_fn(|i| shared[i] as std::ffi::c_char);
    // NCCL picks the device of the calling thread's current context.
    stream.context().bind_to_thread()?;
    Comm::from_rank(stream, ranks.rank, ranks.size, Id::uninit(internal)).map_err(|e| {
        anyhow!(
            "rank {}: NCCL could not join the communicator of {} ranks: {:?} (NCCL_DEBUG=WARN tells more)",
            ranks.rank,
            ranks.size,
            e.0
        )
    })
}

/// The in-place sum over the communicator's ranks, as a candle operation on a CUDA tensor.
struct SumOverRanks<'a>(&'a Comm);

impl InplaceOp1 for SumOverRanks<'_> {
    fn name(&self) -> &'static str {
        "nccl-all-reduce"
    }

    fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout) -> candle_core::Result<()> {
        candle_core::bail!("NCCL sums CUDA tensors only")
    }

    fn cuda_fwd(&self, storage: &mut CudaStorage, layout: &Layout) -> candle_core::Result<()> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("NCCL sums contiguous tensors only");
        };
        let failed = |e: NcclError| candle_core::Error::Msg(format!("NCCL all-reduce failed: {:?}", e.0));
        match storage.dtype() {
            DType::F32 => {
                let mut view = storage.as_cuda_slice_mut::<f32>()?.slice_mut(start..end);
                self.0.all_reduce_in_place(&mut view, &ReduceOp::Sum).map_err(failed)?;
            }
            DType::F64 => {
                let mut view = storage.as_cuda_slice_mut::<f64>()?.slice_mut(start..end);
                self.0.all_reduce_in_place(&mut view, &ReduceOp::Sum).map_err(failed)?;
            }
            other => candle_core::bail!("NCCL sums f32 or f64 buckets, not {other:?}"),
        }
        Ok(())
    }
}
