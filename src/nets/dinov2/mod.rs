//! DINOv2 (Oquab et al. 2023) image features for FD-DINOv2, computed as dgm-eval
//! (Stein et al. 2023, github.com/layer6ai-labs/dgm-eval) computes them, from the weights of
//! a transformers `Dinov2Model` folder (`config.json` + `model.safetensors`, e.g. Hugging
//! Face's `facebook/dinov2-large` for ViT-L/14; the S, B and g sizes come from the config).
//!
//! The reference chain, as read in the sources:
//! - dgm-eval opens each image file with PIL as 8-bit RGB and applies its DINOv2 encoder's
//!   transform (default, no `--clean_resize`): PIL bicubic resize to exactly 224×224, `/255`,
//!   ImageNet mean/std (`preprocess.rs`);
//! - the encoder is Meta's torch-hub `dinov2_vitl14` network (`facebookresearch/dinov2`);
//!   its forward returns the class token after the final LayerNorm (the head is an identity),
//!   and dgm-eval keeps it as is (no L2 normalisation) — `pooler_output` in transformers terms;
//! - that network resizes its 37×37 pretraining position embeddings to the 16×16 patch grid
//!   with a bicubic resize driven by the scale factor `(16 + 0.1)/37` (`pos_embed.rs`);
//! - transformers' `Dinov2Model` files hold the same tensors under other names; the layers
//!   are in `block.rs`. transformers 5 itself resizes the grid by output size, so its own
//!   features at 224 pixels are *not* dgm-eval's (the fixture records the gap).
//!
//! Everything runs in f32 (weights stored as f16/bf16 are widened on load), as dgm-eval does.

mod block;
pub mod config;
pub mod pos_embed;
pub mod preprocess;
#[cfg(test)]
mod tests;

use crate::nets::feature_net::FeatureNet;
use crate::nets::layers::{build_strict, map_chunks, param, Params};
use anyhow::{anyhow, ensure, Result};
use block::{layer_norm, Block, LayerDims};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::LayerNorm;
use config::Dinov2Config;
use std::path::Path;

/// Images per forward pass in [`FeatureNet::features`] (bounds the attention's memory).
const CHUNK: usize = 32;

/// A DINOv2 ViT: patch embedding, class token, position embeddings, layers, final LayerNorm.
pub struct Dinov2 {
    cfg: Dinov2Config,
    /// `[D, 3·p·p]`: the stride-p patch convolution as a matrix.
    patch_weight: Tensor,
    patch_bias: Tensor,
    cls_token: Tensor,
    /// `[1, 1 + M², D]` as stored (class position first, then the M×M grid row-major).
    position: Tensor,
    /// `position` resized to the 224-pixel grid, computed once.
    position_224: Tensor,
    blocks: Vec<Block>,
    norm: LayerNorm,
}

impl Dinov2 {
    /// Loads `dir/config.json` and `dir/model.safetensors` onto `device`; errors name the file.
    pub fn from_dir(dir: &Path, device: &Device) -> Result<Self> {
        let cfg = Dinov2Config::from_file(&dir.join("config.json"))?;
        let file = dir.join("model.safetensors");
        ensure!(
            file.is_file(),
            "{}: no such file (a transformers Dinov2Model folder has one)",
            file.display()
        );
        let tensors = candle_core::safetensors::load(&file, device).map_err(|e| anyhow!("{}: {e}", file.display()))?;
        let mut params = Params::new();
        for (name, t) in tensors {
            let t = if t.dtype().is_float() {
                t.to_dtype(DType::F32)?
            } else {
                t
            };
            params.insert(name, t);
        }
        Self::new(&cfg, &params).map_err(|e| anyhow!("{}: {e}", file.display()))
    }

    /// Builds the network from `params` (f32); every tensor must belong to it.
    pub fn new(cfg: &Dinov2Config, params: &Params) -> Result<Self> {
        cfg.validate()?;
        build_strict(params, || Self::build(cfg, params))
    }

    fn build(cfg: &Dinov2Config, params: &Params) -> Result<Self> {
        let (d, p, m) = (cfg.hidden_size, cfg.patch_size, cfg.grid());
        let patch = "embeddings.patch_embeddings.projection";
        let patch_weight = param(params, &format!("{patch}.weight"), &[d, 3, p, p])?.reshape((d, 3 * p * p))?;
        let patch_bias = param(params, &format!("{patch}.bias"), &[d])?;
        let cls_token = param(params, "embeddings.cls_token", &[1, 1, d])?;
        let position = param(params, "embeddings.position_embeddings", &[1, 1 + m * m, d])?;
        if params.contains_key("embeddings.mask_token") {
            // Only used for masked pretraining; shape-checked so a wrong file still fails.
            param(params, "embeddings.mask_token", &[1, d])?;
        }
        let dims = LayerDims {
            hidden: d,
            heads: cfg.num_attention_heads,
            ffn: cfg.ffn_width(),
            swiglu: cfg.use_swiglu_ffn,
            eps: cfg.layer_norm_eps,
        };
        let blocks = (0..cfg.num_hidden_layers)
            .map(|i| Block::load(params, &format!("encoder.layer.{i}"), &dims))
            .collect::<Result<Vec<_>>>()?;
        let norm = layer_norm(params, "layernorm", d, cfg.layer_norm_eps)?;
        let g = preprocess::SIZE / p;
        let position_224 = resized_position(&position, m, g, g)?;
        Ok(Self {
            cfg: cfg.clone(),
            patch_weight,
            patch_bias,
            cls_token,
            position,
            position_224,
            blocks,
            norm,
        })
    }

    pub fn config(&self) -> &Dinov2Config {
        &self.cfg
    }

    /// The class token after the final LayerNorm, `[B, D]`, of normalised `pixel_values`
    /// `[B, 3, H, W]` with H and W multiples of the patch size.
    pub fn forward_pixels(&self, pixels: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = pixels
            .dims4()
            .map_err(|_| anyhow!("pixel_values must be [B, 3, H, W], got {:?}", pixels.dims()))?;
        let p = self.cfg.patch_size;
        ensure!(
            c == 3 && h >= p && w >= p && h % p == 0 && w % p == 0,
            "pixel_values must be [B, 3, H, W] with H and W multiples of the patch size {p}, got {:?}",
            pixels.dims()
        );
        let position = self.position_for(h / p, w / p)?;
        let cls = self.cls_token.repeat((b, 1, 1))?;
        let tokens = Tensor::cat(&[&cls, &self.patch_embed(pixels)?], 1)?;
        let mut x = tokens.broadcast_add(&position)?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        Ok(self.norm.forward(&x.narrow(1, 0, 1)?.squeeze(1)?)?)
    }

    /// Position embeddings for a `rows × cols` patch grid: as stored for the square
    /// pretraining grid, resized otherwise (the torch-hub network's rule).
    fn position_for(&self, rows: usize, cols: usize) -> Result<Tensor> {
        let m = self.cfg.grid();
        let g = preprocess::SIZE / self.cfg.patch_size;
        if rows == m && cols == m {
            Ok(self.position.clone())
        } else if rows == g && cols == g {
            Ok(self.position_224.clone())
        } else {
            resized_position(&self.position, m, rows, cols)
        }
    }

    /// Non-overlapping p×p patches (row-major, as `conv.flatten(2).T`) times the kernel.
    fn patch_embed(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let p = self.cfg.patch_size;
        let (gh, gw) = (h / p, w / p);
        let patches = x
            .reshape((b, c, gh, p, gw, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .reshape((b, gh * gw, c * p * p))?;
        Ok(patches
            .broadcast_matmul(&self.patch_weight.t()?)?
            .broadcast_add(&self.patch_bias)?)
    }
}

/// `[1, 1 + M², D]` → `[1, 1 + rows·cols, D]`: the class position kept, the grid resized.
fn resized_position(position: &Tensor, m: usize, rows: usize, cols: usize) -> Result<Tensor> {
    let d = position.dim(2)?;
    let class = position.narrow(1, 0, 1)?;
    let grid = position.narrow(1, 1, m * m)?.reshape((m, m, d))?;
    let resized = pos_embed::resize_grid(&grid, rows, cols)?.reshape((1, rows * cols, d))?;
    Ok(Tensor::cat(&[&class, &resized], 1)?)
}

impl FeatureNet for Dinov2 {
    fn name(&self) -> &'static str {
        "dinov2"
    }

    fn dim(&self) -> usize {
        self.cfg.hidden_size
    }

    /// dgm-eval's transform, then the normed class token; returned on the CPU.
    fn features(&self, images: &Tensor) -> Result<Tensor> {
        let n = images.dims().first().copied().unwrap_or(0);
        ensure!(n >= 1, "images must not be empty, got {:?}", images.dims());
        let device = self.cls_token.device().clone();
        let out = map_chunks(images, CHUNK, |chunk| {
            self.forward_pixels(&preprocess::pixel_values(chunk, &device)?)
        })?;
        Ok(out.to_device(&Device::Cpu)?)
    }
}
