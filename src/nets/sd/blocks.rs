//! The UNet's down, mid and up blocks (`DownBlock2D` / `CrossAttnDownBlock2D`,
//! `UNetMidBlock2DCrossAttn`, `UpBlock2D` / `CrossAttnUpBlock2D`).

use crate::nets::sd::resnet::{Downsample, ResnetBlock, ResnetSpec, Upsample};
use crate::nets::sd::segments::Segments;
use crate::nets::sd::transformer::{Transformer2D, TransformerSpec};
use crate::nets::sd::unet_config::{BlockSpec, MidSpec};
use crate::nets::sd::weights::Weights;
use anyhow::{anyhow, Result};
use candle_core::Tensor;
use std::sync::Arc;

/// What every block of one UNet shares.
#[derive(Clone, Copy, Debug)]
pub struct Shared {
    pub temb_dim: usize,
    pub groups: usize,
    pub eps: f64,
    pub context_dim: usize,
    pub linear_projection: bool,
    pub upcast_attention: bool,
    pub downsample_padding: usize,
}

impl Shared {
    fn resnet(&self, inp: usize, out: usize, output_scale: f64) -> ResnetSpec {
        ResnetSpec {
            inp,
            out,
            temb: Some(self.temb_dim),
            groups: self.groups,
            eps: self.eps,
            output_scale,
        }
    }

    fn transformer(&self, channels: usize, heads: usize, layers: usize) -> TransformerSpec {
        TransformerSpec {
            channels,
            heads,
            layers,
            context_dim: self.context_dim,
            groups: self.groups,
            linear_projection: self.linear_projection,
            upcast_attention: self.upcast_attention,
        }
    }
}

/// `resnets.{j}` (each followed by `attentions.{j}` in a cross-attention block).
fn load_layers(
    w: &mut Weights,
    path: &str,
    spec: &BlockSpec,
    sh: &Shared,
) -> Result<(Vec<Arc<ResnetBlock>>, Vec<Transformer2D>)> {
    let mut resnets = Vec::with_capacity(spec.resnet_in.len());
    let mut attentions = Vec::new();
    for (j, &inp) in spec.resnet_in.iter().enumerate() {
        resnets.push(Arc::new(ResnetBlock::load(
            w,
            &format!("{path}.resnets.{j}"),
            sh.resnet(inp, spec.out, 1.0),
        )?));
        if spec.cross_attention {
            let t = sh.transformer(spec.out, spec.heads, spec.transformer_layers);
            attentions.push(Transformer2D::load(w, &format!("{path}.attentions.{j}"), &t)?);
        }
    }
    Ok((resnets, attentions))
}

/// The inputs every block's forward takes: `silu(temb)` and the cross-attention context, and
/// how its segments run (plain or checkpointed).
pub struct BlockInput<'a> {
    pub temb_act: &'a Tensor,
    pub context: &'a Tensor,
    pub segments: &'a Segments,
}

impl BlockInput<'_> {
    /// `resnet(x, silu(temb))` as one segment.
    fn resnet(&self, resnet: &Arc<ResnetBlock>, x: &Tensor) -> Result<Tensor> {
        let side = [self.temb_act.clone()];
        self.segments
            .run(resnet, x, &side, |r, x, side| r.forward(x, side.first()))
    }

    fn transformer(&self, t: &Transformer2D, x: &Tensor) -> Result<Tensor> {
        t.forward(x, self.context, self.segments)
    }
}

/// resnet (→ transformer) per layer, then a stride-2 convolution (all but the last block).
pub struct DownBlock {
    resnets: Vec<Arc<ResnetBlock>>,
    attentions: Vec<Transformer2D>,
    downsampler: Option<Downsample>,
}

impl DownBlock {
    pub fn load(w: &mut Weights, path: &str, spec: &BlockSpec, sh: &Shared) -> Result<Self> {
        let (resnets, attentions) = load_layers(w, path, spec, sh)?;
        let downsampler = spec
            .resample
            .then(|| Downsample::load(w, &format!("{path}.downsamplers.0"), spec.out, sh.downsample_padding))
            .transpose()?;
        Ok(Self {
            resnets,
            attentions,
            downsampler,
        })
    }

    /// Pushes every layer's output and the downsampled output onto `skips`.
    pub fn forward(&self, x: &Tensor, inp: &BlockInput, skips: &mut Vec<Tensor>) -> Result<Tensor> {
        let mut x = x.clone();
        for (j, resnet) in self.resnets.iter().enumerate() {
            x = inp.resnet(resnet, &x)?;
            if let Some(attn) = self.attentions.get(j) {
                x = inp.transformer(attn, &x)?;
            }
            skips.push(x.clone());
        }
        if let Some(down) = &self.downsampler {
            x = down.forward(&x)?;
            skips.push(x.clone());
        }
        Ok(x)
    }
}

/// resnet → transformer → resnet (`resnets.0`, `attentions.0`, `resnets.1`).
pub struct MidBlock {
    first: Arc<ResnetBlock>,
    attention: Transformer2D,
    second: Arc<ResnetBlock>,
}

impl MidBlock {
    pub fn load(w: &mut Weights, path: &str, spec: &MidSpec, sh: &Shared) -> Result<Self> {
        let c = spec.channels;
        let t = sh.transformer(c, spec.heads, spec.transformer_layers);
        Ok(Self {
            first: Arc::new(ResnetBlock::load(
                w,
                &format!("{path}.resnets.0"),
                sh.resnet(c, c, spec.output_scale),
            )?),
            attention: Transformer2D::load(w, &format!("{path}.attentions.0"), &t)?,
            second: Arc::new(ResnetBlock::load(
                w,
                &format!("{path}.resnets.1"),
                sh.resnet(c, c, spec.output_scale),
            )?),
        })
    }

    pub fn forward(&self, x: &Tensor, inp: &BlockInput) -> Result<Tensor> {
        let x = inp.resnet(&self.first, x)?;
        let x = inp.transformer(&self.attention, &x)?;
        inp.resnet(&self.second, &x)
    }
}

/// Per layer: concatenate the last skip connection, resnet (→ transformer); then nearest 2×
/// and a convolution (all but the last block).
pub struct UpBlock {
    resnets: Vec<Arc<ResnetBlock>>,
    attentions: Vec<Transformer2D>,
    upsampler: Option<Arc<Upsample>>,
}

impl UpBlock {
    pub fn load(w: &mut Weights, path: &str, spec: &BlockSpec, sh: &Shared) -> Result<Self> {
        let (resnets, attentions) = load_layers(w, path, spec, sh)?;
        let upsampler = spec
            .resample
            .then(|| Upsample::load(w, &format!("{path}.upsamplers.0"), spec.out).map(Arc::new))
            .transpose()?;
        Ok(Self {
            resnets,
            attentions,
            upsampler,
        })
    }

    /// Pops one skip connection per layer from `skips`.
    pub fn forward(&self, x: &Tensor, inp: &BlockInput, skips: &mut Vec<Tensor>) -> Result<Tensor> {
        let mut x = x.clone();
        for (j, resnet) in self.resnets.iter().enumerate() {
            let skip = skips.pop().ok_or_else(|| anyhow!("UNet: no skip connection left"))?;
            x = inp.resnet(resnet, &Tensor::cat(&[&x, &skip], 1)?)?;
            if let Some(attn) = self.attentions.get(j) {
                x = inp.transformer(attn, &x)?;
            }
        }
        match &self.upsampler {
            Some(up) => inp.segments.run(up, &x, &[], |up, x, _| up.forward(x)),
            None => Ok(x),
        }
    }
}
