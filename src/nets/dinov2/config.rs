//! The fields of a transformers `Dinov2Config` (`config.json` of a `Dinov2Model` folder) that
//! fix the network's shape; sizes S/B/L/g all come from here.

use crate::nets::sd::config_keys::in_range;
use anyhow::{anyhow, ensure, Result};
use serde::Deserialize;
use std::path::Path;

fn three() -> usize {
    3
}

fn yes() -> bool {
    true
}

/// transformers' defaults where the field is optional in a saved config.
#[derive(Clone, Debug, Deserialize)]
pub struct Dinov2Config {
    #[serde(default)]
    pub model_type: Option<String>,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub mlp_ratio: f64,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
    pub image_size: usize,
    pub patch_size: usize,
    #[serde(default = "three")]
    pub num_channels: usize,
    #[serde(default = "yes")]
    pub qkv_bias: bool,
    #[serde(default)]
    pub use_swiglu_ffn: bool,
}

impl Dinov2Config {
    /// Reads and validates `config.json`; errors name the file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text =
            crate::runtime::files::read_regular_text(path).map_err(|e| anyhow!("reading {}: {e}", path.display()))?;
        let cfg: Self = serde_json::from_str(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        cfg.validate().map_err(|e| anyhow!("{}: {e}", path.display()))?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        if let Some(t) = &self.model_type {
            ensure!(
                t == "dinov2",
                "model_type is '{t}', expected 'dinov2' (a transformers Dinov2Model; registers are not supported)"
            );
        }
        for (name, v) in [
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("patch_size", self.patch_size),
        ] {
            ensure!(v >= 1, "{name} must be at least 1");
        }
        ensure!(
            self.num_channels == 3,
            "num_channels is {}, expected 3 (RGB)",
            self.num_channels
        );
        ensure!(
            self.hidden_size.is_multiple_of(self.num_attention_heads),
            "hidden_size {} is not a multiple of num_attention_heads {}",
            self.hidden_size,
            self.num_attention_heads
        );
        ensure!(
            self.image_size >= self.patch_size && self.image_size.is_multiple_of(self.patch_size),
            "image_size {} is not a positive multiple of patch_size {}",
            self.image_size,
            self.patch_size
        );
        ensure!(
            self.mlp_ratio.is_finite() && self.mlp_ratio > 0.0,
            "mlp_ratio must be finite and positive"
        );
        in_range("layer_norm_eps", self.layer_norm_eps, 1e-12, 1.0)?;
        ensure!(
            self.hidden_act == "gelu",
            "hidden_act is '{}', only 'gelu' (DINOv2's exact GELU) is implemented",
            self.hidden_act
        );
        ensure!(
            self.qkv_bias,
            "qkv_bias is false; every DINOv2 checkpoint has query/key/value biases"
        );
        Ok(())
    }

    /// Patches per side of the pretraining grid, whose position embeddings the file holds.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// The feed-forward width: `⌊D·mlp_ratio⌋` for the GELU MLP; SwiGLU (ViT-g) keeps two
    /// thirds of it, rounded up to a multiple of 8 (both DINOv2 codes size it so).
    pub fn ffn_width(&self) -> usize {
        let mlp = (self.hidden_size as f64 * self.mlp_ratio) as usize;
        if self.use_swiglu_ffn {
            ((mlp as f64 * 2.0 / 3.0) as usize).div_ceil(8) * 8
        } else {
            mlp
        }
    }
}
