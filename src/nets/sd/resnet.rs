//! diffusers' `ResnetBlock2D` (pre-norm, `time_embedding_norm="default"`) and the stride-2
//! `Downsample2D` / nearest-2× `Upsample2D` convolutions, shared by the UNet and the VAE.

use crate::nets::layers::upsample2x;
use crate::nets::lora::{ConvSpec, LoraConv2d, LoraLinear};
use crate::nets::sd::group_norm::GroupNorm;
use crate::nets::sd::weights::Weights;
use anyhow::{bail, Result};
use candle_core::Tensor;

/// A k×k convolution at stride 1 with "same" padding.
pub fn same_conv(out: usize, inp: usize, k: usize) -> ConvSpec {
    ConvSpec {
        out,
        inp,
        k,
        stride: 1,
        padding: k / 2,
    }
}

/// Shape and normalization of one residual block.
#[derive(Clone, Copy, Debug)]
pub struct ResnetSpec {
    pub inp: usize,
    pub out: usize,
    /// Width of the time embedding (`None`: no `time_emb_proj`, as in the VAE).
    pub temb: Option<usize>,
    pub groups: usize,
    pub eps: f64,
    /// `output_scale_factor`: the block returns `(shortcut + h) / scale`.
    pub output_scale: f64,
}

/// `(s(x) + conv2(silu(norm2(conv1(silu(norm1(x))) + time_emb_proj(silu(temb))))))/scale`,
/// `s` = `conv_shortcut` (1×1) when the channel count changes, else identity.
pub struct ResnetBlock {
    norm1: GroupNorm,
    conv1: LoraConv2d,
    time_emb_proj: Option<LoraLinear>,
    norm2: GroupNorm,
    conv2: LoraConv2d,
    conv_shortcut: Option<LoraConv2d>,
    output_scale: f64,
}

impl ResnetBlock {
    pub fn load(w: &mut Weights, path: &str, s: ResnetSpec) -> Result<Self> {
        let p = |name: &str| format!("{path}.{name}");
        Ok(Self {
            norm1: w.group_norm(&p("norm1"), s.groups, s.inp, s.eps)?,
            conv1: w.conv(&p("conv1"), same_conv(s.out, s.inp, 3))?,
            time_emb_proj: s
                .temb
                .map(|t| w.linear(&p("time_emb_proj"), s.out, t, true))
                .transpose()?,
            norm2: w.group_norm(&p("norm2"), s.groups, s.out, s.eps)?,
            conv2: w.conv(&p("conv2"), same_conv(s.out, s.out, 3))?,
            conv_shortcut: (s.inp != s.out)
                .then(|| w.conv(&p("conv_shortcut"), same_conv(s.out, s.inp, 1)))
                .transpose()?,
            output_scale: s.output_scale,
        })
    }

    /// `x` `[B, inp, H, W]`; `temb_act` = `silu(temb)` `[B, T]` (the activation every block
    /// applies first, computed once by the caller), required iff the block has `time_emb_proj`.
    pub fn forward(&self, x: &Tensor, temb_act: Option<&Tensor>) -> Result<Tensor> {
        let h = self.conv1.forward(&self.norm1.forward_silu(x)?)?;
        let h = match (&self.time_emb_proj, temb_act) {
            (Some(proj), Some(t)) => h.broadcast_add(&proj.forward(t)?.unsqueeze(2)?.unsqueeze(3)?)?,
            (None, None) => h,
            (Some(_), None) => bail!("resnet block needs a time embedding"),
            (None, Some(_)) => bail!("resnet block takes no time embedding"),
        };
        let h = self.conv2.forward(&self.norm2.forward_silu(&h)?)?;
        let skip = match &self.conv_shortcut {
            Some(c) => c.forward(x)?,
            None => x.clone(),
        };
        let y = (skip + h)?;
        Ok(if self.output_scale == 1.0 {
            y
        } else {
            (y / self.output_scale)?
        })
    }
}

/// diffusers' `Downsample2D` with a convolution (`PATH.conv`): 3×3 at stride 2 with
/// `padding` on each side; padding 0 (the VAE encoder) pads one zero row and column at the
/// bottom and right first, as diffusers does.
pub struct Downsample {
    conv: LoraConv2d,
    pad_after: bool,
}

impl Downsample {
    pub fn load(w: &mut Weights, path: &str, channels: usize, padding: usize) -> Result<Self> {
        if padding > 1 {
            bail!("'{path}': downsample padding {padding} is not supported (0 or 1)");
        }
        let spec = ConvSpec {
            out: channels,
            inp: channels,
            k: 3,
            stride: 2,
            padding,
        };
        Ok(Self {
            conv: w.conv(&format!("{path}.conv"), spec)?,
            pad_after: padding == 0,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self.pad_after {
            true => self.conv.forward(&x.pad_with_zeros(2, 0, 1)?.pad_with_zeros(3, 0, 1)?),
            false => self.conv.forward(x),
        }
    }
}

/// diffusers' `Upsample2D` with a convolution (`PATH.conv`): nearest 2× (by broadcast, whose
/// backward accumulates, unlike candle's `upsample_nearest2d`), then a 3×3 convolution.
pub struct Upsample {
    conv: LoraConv2d,
}

impl Upsample {
    pub fn load(w: &mut Weights, path: &str, channels: usize) -> Result<Self> {
        Ok(Self {
            conv: w.conv(&format!("{path}.conv"), same_conv(channels, channels, 3))?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.conv.forward(&upsample2x(x)?)
    }
}

/// `silu(norm(x))` then a convolution: the output head of the UNet, the encoder and the decoder.
pub struct NormActConv {
    norm: GroupNorm,
    conv: LoraConv2d,
}

impl NormActConv {
    /// `NORM` GroupNorm over `inp` channels, `CONV` k×k `inp → out`.
    pub fn load(w: &mut Weights, norm: &str, conv: &str, (groups, eps): (usize, f64), spec: ConvSpec) -> Result<Self> {
        Ok(Self {
            norm: w.group_norm(norm, groups, spec.inp, eps)?,
            conv: w.conv(conv, spec)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.conv.forward(&self.norm.forward_silu(x)?)
    }
}
