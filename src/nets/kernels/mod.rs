//! Hand-written CPU kernels for the hot spots candle runs as many separate passes.

pub mod conv;
pub mod dense;
pub mod gemm;
pub mod silu;
