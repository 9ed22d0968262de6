//! Hand-written CPU kernels for the hot spots candle runs as many separate passes.
//! `serve` is the one place that decides whether they or candle's generic ops run.

pub mod attention;
pub mod conv;
pub mod conv_backward;
pub mod dense;
pub mod geglu;
pub mod layer_norm;
pub mod gemm;
pub mod group_norm;
pub mod linear;
pub mod lora;
pub mod silu;
pub mod storage;

use candle_core::{DType, Tensor};
use std::cell::Cell;

thread_local! {
    static GENERIC_ONLY: Cell<bool> = const { Cell::new(false) };
}

/// Whether the fused kernels serve an operation on `t`: f32 on the CPU (elsewhere, and in
/// other precisions, candle's generic ops run).
pub fn serve(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32 && !GENERIC_ONLY.get()
}

/// Runs `f` with the fused kernels off on this thread, so a test can compare them with
/// the generic ops a GPU runs.
#[cfg(test)]
pub fn with_generic_ops<R>(f: impl FnOnce() -> R) -> R {
    let before = GENERIC_ONLY.replace(true);
    let out = f();
    GENERIC_ONLY.set(before);
    out
}
