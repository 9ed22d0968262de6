//! The f32 view of a contiguous CPU tensor that the fused kernels read.

use candle_core::{CpuStorage, Layout, Result, Storage, StorageRef, Tensor};

/// The elements of a contiguous f32 tensor; `op` names the kernel in the error.
pub fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&s.as_slice::<f32>()?[start..end]),
        None => candle_core::bail!("{op}: expected a contiguous tensor"),
    }
}

/// The elements of a contiguous f32 CPU tensor read outside an op's storage arguments (a
/// layer's frozen weights, a backward pass's inputs), borrowed for as long as this lives.
pub struct Values<'a>(StorageRef<'a>, &'a Layout);

impl Values<'_> {
    pub fn of(t: &Tensor) -> Values<'_> {
        let (storage, layout) = t.storage_and_layout();
        Values(storage, layout)
    }

    pub fn get(&self) -> Result<&[f32]> {
        match &*self.0 {
            Storage::Cpu(s) => contiguous_f32(s, self.1, "kernel"),
            _ => candle_core::bail!("the fused kernels run on the CPU only"),
        }
    }

    pub fn dims(&self) -> &[usize] {
        self.1.dims()
    }
}
