//! An output computed without a graph, joined to its input's graph with a gradient we give:
//! the layer runs on `x.detach()` and one op on `x` hands its output over, so the graph keeps
//! only that op's input and result, and the backward pass computes only what we ask.
//!
//! - Products with frozen weights (`LoraLinear`, `LoraConv2d`): candle's backward of `matmul`
//!   and `conv2d` also computes — and keeps until the step ends — the gradient of the weight
//!   operand, tracked or not; under LoRA every base weight is frozen, so that would be a second
//!   copy of the network and about a third of the backward pass spent on nothing (and the
//!   detached forward takes the fused inference kernels).
//! - Attention's softmax (`nets::sd::attention`): composed of differentiable ops it keeps four
//!   `[B·heads, L, S]` maps (more with f32 upcasting), the largest activations of a UNet at high
//!   resolution; its own backward `p ⊙ (g − Σ g p)` needs only the probabilities.
//! - Normalizations and activations with frozen parameters (GroupNorm + SiLU, LayerNorm,
//!   GEGLU): composed of candle's ops they keep several maps of their input's size, and every
//!   op of the composition costs the backward pass a fresh gradient buffer and an addition;
//!   their fused kernels' backward reads only the input.

use anyhow::Result;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CudaStorage, CustomOp1, Layout, Shape, Storage, Tensor};
use std::sync::{Arc, Mutex};

/// `∂L/∂x` from `∂L/∂y`, the input x (its values: it records a graph, which the gradient must
/// not extend) and the output y.
type InputGradient = dyn Fn(&Tensor, &Tensor, &Tensor) -> candle_core::Result<Tensor> + Send + Sync;

/// Forward: the layer's output, computed beforehand and handed over once (taken, so the graph
/// keeps only the op's result, not a second copy). Backward: `∂L/∂x` from the closure.
struct PassThrough {
    output: Mutex<Option<Tensor>>,
    input_gradient: Box<InputGradient>,
}

impl PassThrough {
    fn take(&self) -> candle_core::Result<Tensor> {
        let taken = self.output.lock().map(|mut o| o.take());
        taken
            .ok()
            .flatten()
            .ok_or_else(|| candle_core::Error::Msg("given-gradient op evaluated twice".into()))
    }
}

impl CustomOp1 for PassThrough {
    fn name(&self) -> &'static str {
        "given-gradient"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let y = self.take()?;
        let (storage, layout) = y.storage_and_layout();
        match &*storage {
            Storage::Cpu(s) => Ok((s.try_clone(layout)?, layout.shape().clone())),
            _ => Err(candle_core::Error::Msg(
                "given-gradient: output on another device".into(),
            )),
        }
    }

    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let y = self.take()?;
        let (storage, layout) = y.storage_and_layout();
        match &*storage {
            Storage::Cuda(s) => Ok((s.try_clone(layout)?, layout.shape().clone())),
            _ => Err(candle_core::Error::Msg(
                "given-gradient: output on another device".into(),
            )),
        }
    }

    fn bwd(&self, x: &Tensor, res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some((self.input_gradient)(grad, &x.detach(), res)?))
    }
}

/// `y` (computed from `x.detach()`), joined to `x`'s graph: the backward pass sends
/// `input_gradient(∂L/∂y, x, y)` to `x`.
pub fn with_input_gradient(
    x: &Tensor,
    y: Tensor,
    input_gradient: impl Fn(&Tensor, &Tensor, &Tensor) -> candle_core::Result<Tensor> + Send + Sync + 'static,
) -> Result<Tensor> {
    // The forward copies y's whole storage: it must hold exactly y, from its start.
    let y = match y.is_contiguous() && y.layout().start_offset() == 0 {
        true => y,
        false => y.copy()?,
    };
    let op = PassThrough {
        output: Mutex::new(Some(y)),
        input_gradient: Box::new(input_gradient),
    };
    Ok(x.apply_op1_arc(Arc::new(Box::new(op)))?)
}
