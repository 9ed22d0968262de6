//! One DINOv2 transformer layer (pre-LayerNorm, with LayerScale):
//! `h ← h + λ₁ ⊙ attn(LN₁ h)`, `h ← h + λ₂ ⊙ ffn(LN₂ h)`, where `ffn` is the GELU MLP
//! `fc₂ gelu(fc₁ x)` (ViT-S/B/L) or SwiGLU `w₃ (silu(x W₁) ⊙ x W₂)` (ViT-g, `W₁; W₂` stored
//! stacked as `weights_in`). Tensor names are those of transformers' `Dinov2Model` files.

use crate::nets::layers::{linear, param, Params};
use anyhow::Result;
use candle_core::{Module, Tensor, D};
use candle_nn::{LayerNorm, Linear};

/// The sizes a layer is built with.
pub struct LayerDims {
    pub hidden: usize,
    pub heads: usize,
    /// The feed-forward's inner width (per branch for SwiGLU).
    pub ffn: usize,
    pub swiglu: bool,
    pub eps: f64,
}

pub fn layer_norm(params: &Params, name: &str, dim: usize, eps: f64) -> Result<LayerNorm> {
    Ok(LayerNorm::new(
        param(params, &format!("{name}.weight"), &[dim])?,
        param(params, &format!("{name}.bias"), &[dim])?,
        eps,
    ))
}

enum FeedForward {
    Mlp {
        fc1: Linear,
        fc2: Linear,
    },
    SwiGlu {
        gate_up: Linear,
        down: Linear,
        width: usize,
    },
}

impl FeedForward {
    fn load(params: &Params, name: &str, dims: &LayerDims) -> Result<Self> {
        let (d, m) = (dims.hidden, dims.ffn);
        Ok(if dims.swiglu {
            FeedForward::SwiGlu {
                gate_up: linear(params, &format!("{name}.weights_in"), 2 * m, d)?,
                down: linear(params, &format!("{name}.weights_out"), d, m)?,
                width: m,
            }
        } else {
            FeedForward::Mlp {
                fc1: linear(params, &format!("{name}.fc1"), m, d)?,
                fc2: linear(params, &format!("{name}.fc2"), d, m)?,
            }
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            FeedForward::Mlp { fc1, fc2 } => fc2.forward(&fc1.forward(x)?.gelu_erf()?)?,
            FeedForward::SwiGlu { gate_up, down, width } => {
                let both = gate_up.forward(x)?;
                let gate = both.narrow(D::Minus1, 0, *width)?;
                let up = both.narrow(D::Minus1, *width, *width)?;
                down.forward(&(candle_nn::ops::silu(&gate)? * up)?)?
            }
        })
    }
}

/// Multi-head self-attention over all tokens, no mask: `softmax(q kᵀ/√d_h) v`.
struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
}

impl Attention {
    fn load(params: &Params, name: &str, dims: &LayerDims) -> Result<Self> {
        let d = dims.hidden;
        let proj = |p: &str| linear(params, &format!("{name}.{p}"), d, d);
        Ok(Self {
            q: proj("attention.query")?,
            k: proj("attention.key")?,
            v: proj("attention.value")?,
            out: proj("output.dense")?,
            heads: dims.heads,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, l, d) = x.dims3()?;
        let head_dim = d / self.heads;
        let split = |t: Tensor| -> Result<Tensor> {
            Ok(t.reshape((b, l, self.heads, head_dim))?.transpose(1, 2)?.contiguous()?)
        };
        let q = (split(self.q.forward(x)?)? * (head_dim as f64).powf(-0.5))?;
        let (k, v) = (split(self.k.forward(x)?)?, split(self.v.forward(x)?)?);
        let probs = candle_nn::ops::softmax_last_dim(&q.matmul(&k.t()?)?)?;
        let heads = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, l, d))?;
        Ok(self.out.forward(&heads)?)
    }
}

pub struct Block {
    norm1: LayerNorm,
    attn: Attention,
    scale1: Tensor,
    norm2: LayerNorm,
    ffn: FeedForward,
    scale2: Tensor,
}

impl Block {
    /// Layer `name` (`encoder.layer.3`).
    pub fn load(params: &Params, name: &str, dims: &LayerDims) -> Result<Self> {
        let d = dims.hidden;
        Ok(Self {
            norm1: layer_norm(params, &format!("{name}.norm1"), d, dims.eps)?,
            attn: Attention::load(params, &format!("{name}.attention"), dims)?,
            scale1: param(params, &format!("{name}.layer_scale1.lambda1"), &[d])?,
            norm2: layer_norm(params, &format!("{name}.norm2"), d, dims.eps)?,
            ffn: FeedForward::load(params, &format!("{name}.mlp"), dims)?,
            scale2: param(params, &format!("{name}.layer_scale2.lambda1"), &[d])?,
        })
    }

    /// `x` `[B, L, D]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let attended = self.attn.forward(&self.norm1.forward(x)?)?;
        let x = (x + attended.broadcast_mul(&self.scale1)?)?;
        let fed = self.ffn.forward(&self.norm2.forward(&x)?)?;
        Ok((&x + fed.broadcast_mul(&self.scale2)?)?)
    }
}
