//! The f32 view of a contiguous CPU tensor that the fused kernels read.

use candle_core::{CpuStorage, Layout, Result};

/// The elements of a contiguous f32 tensor; `op` names the kernel in the error.
pub fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&s.as_slice::<f32>()?[start..end]),
        None => candle_core::bail!("{op}: expected a contiguous tensor"),
    }
}
