//! The GroupNorm layer of the SD networks, optionally followed by SiLU (the resnets' and the
//! output heads' `silu(norm(x))`): with frozen scale and shift, f32 CPU inputs take the fused
//! kernel, and under a graph its own backward (`nets::input_gradient`); trained scale and
//! shift, or other devices and precisions, candle's GroupNorm.

use crate::nets::input_gradient::with_input_gradient;
use crate::nets::kernels::{self, group_norm::GroupNormAct};
use anyhow::Result;
use candle_core::{Module, Tensor};

#[derive(Clone, Debug)]
pub struct GroupNorm {
    generic: candle_nn::GroupNorm,
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
}

impl GroupNorm {
    /// `weight`, `bias` `[channels]`; `groups` must divide `channels`.
    pub fn new(weight: Tensor, bias: Tensor, channels: usize, groups: usize, eps: f64) -> Result<Self> {
        let generic = candle_nn::GroupNorm::new(weight.clone(), bias.clone(), channels, groups, eps)?;
        Ok(Self {
            generic,
            weight,
            bias,
            groups,
            eps,
        })
    }

    /// `norm(x)` for `x` `[B, C, …]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.apply(x, false)
    }

    /// `silu(norm(x))`.
    pub fn forward_silu(&self, x: &Tensor) -> Result<Tensor> {
        self.apply(x, true)
    }

    fn apply(&self, x: &Tensor, silu: bool) -> Result<Tensor> {
        let frozen = !self.weight.track_op() && !self.bias.track_op();
        if frozen && kernels::serve(x) && kernels::serve(&self.weight) {
            let op = GroupNormAct {
                groups: self.groups,
                eps: self.eps,
                silu,
            };
            let y = op.forward(&x.detach(), &self.weight, &self.bias)?;
            if !x.track_op() {
                return Ok(y);
            }
            let (w, b) = (self.weight.clone(), self.bias.clone());
            return with_input_gradient(x, y, move |g, x, _| op.backward(x, &w, &b, g));
        }
        let y = self.generic.forward(x)?;
        Ok(if silu { y.silu()? } else { y })
    }
}
