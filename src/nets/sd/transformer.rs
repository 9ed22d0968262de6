//! diffusers' `Transformer2DModel` on continuous input with `BasicTransformerBlock`s
//! (`norm_type="layer_norm"`): the attention part of the UNet's cross-attention blocks.

use crate::nets::lora::{LoraConv2d, LoraLinear};
use crate::nets::sd::attention::{Attention, AttentionSpec, FeedForward};
use crate::nets::sd::group_norm::GroupNorm;
use crate::nets::sd::resnet::same_conv;
use crate::nets::sd::segments::Segments;
use crate::nets::sd::weights::{LayerNorm, Weights};
use anyhow::Result;
use candle_core::Tensor;
use std::sync::Arc;

/// LayerNorm ε of the transformer blocks (`Transformer2DModel`'s default, not the UNet's `norm_eps`).
const LAYER_NORM_EPS: f64 = 1e-5;
/// GroupNorm ε of `Transformer2DModel.norm` (fixed in diffusers).
const GROUP_NORM_EPS: f64 = 1e-6;

/// Shape of one `Transformer2DModel`.
#[derive(Clone, Copy, Debug)]
pub struct TransformerSpec {
    /// Channels in and out (= heads · head width).
    pub channels: usize,
    pub heads: usize,
    pub layers: usize,
    pub context_dim: usize,
    pub groups: usize,
    /// `use_linear_projection`: linear `proj_in`/`proj_out` (SD 2.x, SDXL) instead of 1×1
    /// convolutions (SD 1.x).
    pub linear_projection: bool,
    pub upcast_attention: bool,
}

/// `x + ff(norm3(x))` after `x + attn2(norm2(x), ctx)` after `x + attn1(norm1(x))`.
pub struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff: FeedForward,
}

impl BasicTransformerBlock {
    pub fn load(w: &mut Weights, path: &str, s: &TransformerSpec) -> Result<Self> {
        let dim = s.channels;
        let attn = |context_dim| AttentionSpec {
            query_dim: dim,
            context_dim,
            heads: s.heads,
            head_dim: dim / s.heads,
            qkv_bias: false,
            upcast: s.upcast_attention,
        };
        let p = |name: &str| format!("{path}.{name}");
        Ok(Self {
            norm1: w.layer_norm(&p("norm1"), dim, LAYER_NORM_EPS)?,
            attn1: Attention::load(w, &p("attn1"), attn(None))?,
            norm2: w.layer_norm(&p("norm2"), dim, LAYER_NORM_EPS)?,
            attn2: Attention::load(w, &p("attn2"), attn(Some(s.context_dim)))?,
            norm3: w.layer_norm(&p("norm3"), dim, LAYER_NORM_EPS)?,
            ff: FeedForward::load(w, &p("ff"), dim, 4 * dim)?,
        })
    }

    /// `x` `[B, L, C]`, `context` `[B, S, context_dim]`.
    pub fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let x = (self.attn1.forward(&self.norm1.forward(x)?, None)? + x)?;
        let x = (self.attn2.forward(&self.norm2.forward(&x)?, Some(context))? + x)?;
        Ok((self.ff.forward(&self.norm3.forward(&x)?)? + x)?)
    }
}

/// `proj_in` / `proj_out`: a 1×1 convolution on `[B, C, H, W]` or a linear layer on tokens.
enum Projection {
    Conv(LoraConv2d),
    Linear(LoraLinear),
}

impl Projection {
    fn load(w: &mut Weights, path: &str, channels: usize, linear: bool) -> Result<Self> {
        Ok(match linear {
            true => Self::Linear(w.linear(path, channels, channels, true)?),
            false => Self::Conv(w.conv(path, same_conv(channels, channels, 1))?),
        })
    }
}

/// `[B, C, H, W]` → tokens `[B, H·W, C]`.
fn to_tokens(t: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = t.dims4()?;
    Ok(t.permute((0, 2, 3, 1))?.reshape((b, h * w, c))?)
}

/// Tokens `[B, H·W, C]` → `[B, C, H, W]`.
fn to_image(t: &Tensor, (h, w): (usize, usize)) -> Result<Tensor> {
    let (b, _, c) = t.dims3()?;
    Ok(t.reshape((b, h, w, c))?.permute((0, 3, 1, 2))?.contiguous()?)
}

/// The way into the tokens: `proj_in(norm(x))` with the spatial positions as tokens.
struct TokensIn {
    norm: GroupNorm,
    proj_in: Projection,
}

impl TokensIn {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let normed = self.norm.forward(x)?;
        match &self.proj_in {
            Projection::Conv(conv) => to_tokens(&conv.forward(&normed)?),
            Projection::Linear(lin) => lin.forward(&to_tokens(&normed)?),
        }
    }
}

/// The way out: `proj_out(tokens)` as an image, plus the transformer's input `x`.
struct TokensOut {
    proj_out: Projection,
}

impl TokensOut {
    fn forward(&self, tokens: &Tensor, x: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let out = match &self.proj_out {
            Projection::Conv(conv) => conv.forward(&to_image(tokens, (h, w))?)?,
            Projection::Linear(lin) => to_image(&lin.forward(tokens)?, (h, w))?,
        };
        Ok((out + x)?)
    }
}

/// `x + proj_out(blocks(proj_in(norm(x))))` with the spatial positions as tokens; the way in,
/// each layer and the way out are segments (`nets::sd::segments`).
pub struct Transformer2D {
    tokens_in: Arc<TokensIn>,
    blocks: Vec<Arc<BasicTransformerBlock>>,
    tokens_out: Arc<TokensOut>,
}

impl Transformer2D {
    pub fn load(w: &mut Weights, path: &str, s: &TransformerSpec) -> Result<Self> {
        let p = |name: &str| format!("{path}.{name}");
        let tokens_in = TokensIn {
            norm: w.group_norm(&p("norm"), s.groups, s.channels, GROUP_NORM_EPS)?,
            proj_in: Projection::load(w, &p("proj_in"), s.channels, s.linear_projection)?,
        };
        let blocks = (0..s.layers)
            .map(|i| BasicTransformerBlock::load(w, &p(&format!("transformer_blocks.{i}")), s).map(Arc::new))
            .collect::<Result<_>>()?;
        let tokens_out = TokensOut {
            proj_out: Projection::load(w, &p("proj_out"), s.channels, s.linear_projection)?,
        };
        Ok(Self {
            tokens_in: Arc::new(tokens_in),
            blocks,
            tokens_out: Arc::new(tokens_out),
        })
    }

    /// `x` `[B, C, H, W]`, `context` `[B, S, context_dim]`.
    pub fn forward(&self, x: &Tensor, context: &Tensor, segments: &Segments) -> Result<Tensor> {
        let mut tokens = segments.run(&self.tokens_in, x, &[], |t, x, _| t.forward(x))?;
        let context = [context.clone()];
        for block in &self.blocks {
            tokens = segments.run(block, &tokens, &context, |b, t, c| b.forward(t, &c[0]))?;
        }
        segments.run(&self.tokens_out, &tokens, std::slice::from_ref(x), |t, tokens, x| {
            t.forward(tokens, &x[0])
        })
    }
}
