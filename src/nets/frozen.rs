//! Products with frozen weights whose backward pass reaches the input only. candle's backward
//! of `matmul` and `conv2d` also computes — and keeps until the step ends — the gradient of
//! the weight operand, tracked or not; under LoRA every base weight is frozen, so that is a
//! second copy of the network and about a third of the backward pass spent on nothing.
//! Here the layer runs on `x.detach()` (no graph, so the fused inference kernels serve it)
//! and a pass-through op hands its output to `x`'s graph with the input gradient alone.

use anyhow::Result;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CudaStorage, CustomOp2, Layout, Shape, Tensor};
use std::sync::Arc;

type InputGradient = dyn Fn(&Tensor) -> candle_core::Result<Tensor> + Send + Sync;

/// Forward: a copy of its second operand (the layer's output). Backward: `∂L/∂x` from the
/// closure, nothing for the output operand, which has no graph.
struct PassThrough(Box<InputGradient>);

impl CustomOp2 for PassThrough {
    fn name(&self) -> &'static str {
        "frozen-weights"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        y: &CpuStorage,
        ly: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        Ok((y.try_clone(ly)?, ly.shape().clone()))
    }

    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        y: &CudaStorage,
        ly: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        Ok((y.try_clone(ly)?, ly.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _y: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some((self.0)(grad)?), None))
    }
}

/// `y` (the layer applied to `x.detach()`), joined to `x`'s graph: the backward pass sends
/// `input_gradient(∂L/∂y)` to `x`.
pub fn with_input_gradient(
    x: &Tensor,
    y: Tensor,
    input_gradient: impl Fn(&Tensor) -> candle_core::Result<Tensor> + Send + Sync + 'static,
) -> Result<Tensor> {
    // The forward copies the whole storage: it must hold exactly y, from its start.
    let y = match y.is_contiguous() && y.layout().start_offset() == 0 {
        true => y,
        false => y.copy()?,
    };
    Ok(x.apply_op2_arc(&y, Arc::new(Box::new(PassThrough(Box::new(input_gradient)))))?)
}
