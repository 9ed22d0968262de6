//! CLIP's vision tower (Radford et al. 2021) as transformers' `CLIPVisionModelWithProjection`
//! inside a `CLIPModel`: the image side of the CLIP score.
//!
//! ViT: `h₀ = [cls; conv_p(x) patches] + pos`, `h ← pre_LN(h₀)`, then the text tower's pre-LN
//! encoder layers without a mask, `pooled = post_LN(h[:, 0])`, `image_embeds = pooled Wᵥᵀ`.
//! Computes in its weights' dtype (LayerNorm, softmax and the activation in f32).
//!
//! Tensors: `vision_model.`-prefixed names plus `visual_projection.weight`; every one must
//! be used and have the expected shape (`embeddings.position_ids` is optional, values ignored).

use super::clip_text::{Activation, EncoderLayer, LayerDims, Norm, Weights};
use crate::nets::layers::Params;
use crate::nets::sd::config_keys::in_range;
use anyhow::{anyhow, ensure, Result};
use candle_core::{DType, Tensor};
use serde::Deserialize;

fn three() -> usize {
    3
}

/// The fields of a `CLIPVisionConfig` the tower uses.
#[derive(Clone, Debug, Deserialize)]
pub struct ClipVisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub image_size: usize,
    pub patch_size: usize,
    #[serde(default = "three")]
    pub num_channels: usize,
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
}

impl ClipVisionConfig {
    pub fn validate(&self) -> Result<()> {
        let sizes = [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("patch_size", self.patch_size),
            ("num_channels", self.num_channels),
        ];
        for (name, v) in sizes {
            ensure!(v >= 1, "vision_config.{name} must be at least 1");
        }
        ensure!(
            self.hidden_size.is_multiple_of(self.num_attention_heads),
            "vision_config.hidden_size {} is not a multiple of num_attention_heads {}",
            self.hidden_size,
            self.num_attention_heads
        );
        ensure!(
            self.image_size >= self.patch_size && self.image_size.is_multiple_of(self.patch_size),
            "vision_config.image_size {} is not a positive multiple of patch_size {}",
            self.image_size,
            self.patch_size
        );
        in_range("vision_config.layer_norm_eps", self.layer_norm_eps, 1e-12, 1.0)
    }

    /// Class token + patches.
    pub fn num_positions(&self) -> usize {
        (self.image_size / self.patch_size).pow(2) + 1
    }

    fn layer_dims(&self) -> LayerDims {
        LayerDims {
            hidden: self.hidden_size,
            intermediate: self.intermediate_size,
            heads: self.num_attention_heads,
            eps: self.layer_norm_eps,
            act: self.hidden_act,
        }
    }
}

/// CLIP vision tower with its projection.
pub struct ClipVisionModel {
    cfg: ClipVisionConfig,
    patch_embedding: Tensor,
    class_embedding: Tensor,
    position_embedding: Tensor,
    pre_norm: Norm,
    layers: Vec<EncoderLayer>,
    post_norm: Norm,
    projection: Tensor,
}

impl ClipVisionModel {
    /// Builds the tower from `vision_model.*` and `visual_projection.weight` `[projection_dim, D]`.
    pub fn new(cfg: &ClipVisionConfig, projection_dim: usize, params: &Params) -> Result<Self> {
        cfg.validate()?;
        let mut w = Weights::with_prefix(params, "vision_model.", "a CLIP vision tower");
        let (d, p, eps) = (cfg.hidden_size, cfg.patch_size, cfg.layer_norm_eps);
        let patch_shape = [d, cfg.num_channels, p, p];
        let patch_embedding = w.take("embeddings.patch_embedding.weight", &patch_shape)?;
        let class_embedding = w.take("embeddings.class_embedding", &[d])?;
        let n = cfg.num_positions();
        let position_embedding = w.take("embeddings.position_embedding.weight", &[n, d])?;
        w.skip_position_ids(n)?;
        let pre_norm = Norm::load(&mut w, "pre_layrnorm", d, eps)?;
        let dims = cfg.layer_dims();
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| EncoderLayer::load(&mut w, &format!("encoder.layers.{i}"), &dims))
            .collect::<Result<Vec<_>>>()?;
        let post_norm = Norm::load(&mut w, "post_layernorm", d, eps)?;
        let projection = w.take_key("visual_projection.weight", &[projection_dim, d])?;
        w.finish()?;
        Ok(Self {
            cfg: cfg.clone(),
            patch_embedding,
            class_embedding,
            position_embedding,
            pre_norm,
            layers,
            post_norm,
            projection,
        })
    }

    pub fn config(&self) -> &ClipVisionConfig {
        &self.cfg
    }

    pub fn dtype(&self) -> DType {
        self.projection.dtype()
    }

    /// `pooler_output` `[B, D]`: post-LayerNorm of the class token, for `pixel_values`
    /// `[B, C, image_size, image_size]` (any float dtype; cast to the weights').
    pub fn pooled(&self, pixels: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = pixels
            .dims4()
            .map_err(|_| anyhow!("pixel_values must be [B, C, H, W], got {:?}", pixels.dims()))?;
        let s = self.cfg.image_size;
        ensure!(
            c == self.cfg.num_channels && h == s && w == s,
            "pixel_values must be [B, {}, {s}, {s}], got {:?}",
            self.cfg.num_channels,
            pixels.dims()
        );
        let d = self.cfg.hidden_size;
        let x = pixels.to_dtype(self.dtype())?;
        let patches = self.patch_embed(&x)?;
        let cls = self.class_embedding.reshape((1, 1, d))?.repeat((b, 1, 1))?;
        let h0 = Tensor::cat(&[&cls, &patches], 1)?.broadcast_add(&self.position_embedding)?;
        let mut h = self.pre_norm.forward(&h0)?;
        let n = h.dim(1)?;
        let no_mask = Tensor::zeros((n, n), DType::F32, x.device())?;
        for layer in &self.layers {
            h = layer.forward(&h, &no_mask)?;
        }
        self.post_norm.forward(&h.narrow(1, 0, 1)?.squeeze(1)?)
    }

    /// The stride-p, kernel-p patch convolution as one matmul over non-overlapping patches
    /// (`[B, C, S, S]` → `[B, N, D]`, patches in row-major order as `conv.flatten(2).T`);
    /// works for every float dtype, where candle's CPU conv2d lacks bf16.
    fn patch_embed(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, s, _) = x.dims4()?;
        let (p, d) = (self.cfg.patch_size, self.cfg.hidden_size);
        let g = s / p;
        let patches = x
            .reshape((b, c, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .reshape((b, g * g, c * p * p))?;
        let kernel = self.patch_embedding.reshape((d, c * p * p))?;
        Ok(patches.broadcast_matmul(&kernel.t()?)?)
    }

    /// The width of `image_embeds`.
    pub fn projection_dim(&self) -> usize {
        self.projection.dims()[0]
    }

    /// `image_embeds` `[B, projection_dim]` (`get_image_features`).
    pub fn image_embeds(&self, pixels: &Tensor) -> Result<Tensor> {
        Ok(self.pooled(pixels)?.matmul(&self.projection.t()?)?)
    }
}
