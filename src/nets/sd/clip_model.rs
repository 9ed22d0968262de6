//! A transformers `CLIPModel` folder (both towers, projections, tokenizer, image processor)
//! and the CLIP score of Hessel et al. 2021 as torchmetrics computes it:
//! per pair `100·cos(E_img(x), E_txt(prompt))`, averaged, then clamped at 0
//! (torchmetrics' `CLIPScore`/`clip_score` clamp the mean, not each pair).
//!
//! Folder: `config.json` (with `text_config` and `vision_config`), `model.safetensors`,
//! `vocab.json` + `merges.txt`, `preprocessor_config.json`. Tensors: `text_model.*`,
//! `vision_model.*`, `text_projection.weight`, `visual_projection.weight`, `logit_scale`
//! (shape-checked, unused by the score); any other tensor is an error naming it.

use super::clip_preprocess::ClipImageProcessor;
use super::clip_text::{ClipTextConfig, ClipTextModel};
use super::clip_vision::{ClipVisionConfig, ClipVisionModel};
use super::tokenizer::ClipTokenizer;
use crate::nets::feature_net::FeatureNet;
use crate::nets::layers::Params;
use anyhow::{anyhow, bail, ensure, Result};
use candle_core::{DType, Device, Tensor, D};
use std::path::Path;

/// The parts of a `CLIPConfig`.
#[derive(Clone, Debug)]
pub struct ClipModelConfig {
    pub text: ClipTextConfig,
    pub vision: ClipVisionConfig,
    pub projection_dim: usize,
}

impl ClipModelConfig {
    /// Reads `config.json`; a config that is not a `CLIPModel`'s is a one-line error saying what it is.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text =
            crate::runtime::files::read_regular_text(path).map_err(|e| anyhow!("reading {}: {e}", path.display()))?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        Self::from_json(&json).map_err(|e| anyhow!("{}: {e}", path.display()))
    }

    fn from_json(json: &serde_json::Value) -> Result<Self> {
        let kind = json["model_type"].as_str().unwrap_or("unknown");
        let arch = json["architectures"][0].as_str().unwrap_or("unknown");
        let (Some(text), Some(vision)) = (json.get("text_config"), json.get("vision_config")) else {
            bail!("not a CLIPModel config (model_type '{kind}', architecture '{arch}': needs text_config and vision_config)");
        };
        let projection_dim = json["projection_dim"]
            .as_u64()
            .ok_or_else(|| anyhow!("CLIPModel config has no projection_dim"))? as usize;
        let mut text: ClipTextConfig = serde_json::from_value(text.clone()).map_err(|e| anyhow!("text_config: {e}"))?;
        text.projection_dim = Some(projection_dim);
        text.validate().map_err(|e| anyhow!("text_config: {e}"))?;
        let vision: ClipVisionConfig =
            serde_json::from_value(vision.clone()).map_err(|e| anyhow!("vision_config: {e}"))?;
        vision.validate()?;
        Ok(Self {
            text,
            vision,
            projection_dim,
        })
    }
}

/// CLIP's two towers with their projections, tokenizer and image processor.
pub struct ClipModel {
    text: ClipTextModel,
    vision: ClipVisionModel,
    tokenizer: ClipTokenizer,
    processor: ClipImageProcessor,
}

/// Splits a `CLIPModel` state dict into the text and vision towers' tensors; `logit_scale`
/// must be a scalar; anything else is an error naming it.
fn split_params(params: Params) -> Result<(Params, Params)> {
    let (mut text, mut vision) = (Params::new(), Params::new());
    for (key, t) in params {
        if key.starts_with("text_model.") || key == "text_projection.weight" {
            text.insert(key, t);
        } else if key.starts_with("vision_model.") || key == "visual_projection.weight" {
            vision.insert(key, t);
        } else if key == "logit_scale" {
            ensure!(
                t.dims().is_empty(),
                "tensor 'logit_scale' has shape {:?}, expected []",
                t.dims()
            );
        } else {
            bail!("unexpected tensor '{key}' (not part of a CLIPModel)");
        }
    }
    Ok((text, vision))
}

impl ClipModel {
    /// Builds the towers from a `CLIPModel` state dict.
    pub fn new(
        cfg: &ClipModelConfig,
        params: Params,
        tokenizer: ClipTokenizer,
        processor: ClipImageProcessor,
    ) -> Result<Self> {
        ensure!(
            params.contains_key("logit_scale"),
            "missing tensor 'logit_scale' (not a CLIPModel state dict)"
        );
        let (text_params, vision_params) = split_params(params)?;
        ensure!(
            text_params.contains_key("text_projection.weight"),
            "missing tensor 'text_projection.weight'"
        );
        let text = ClipTextModel::new(&cfg.text, &text_params)?;
        let vision = ClipVisionModel::new(&cfg.vision, cfg.projection_dim, &vision_params)?;
        ensure!(
            text.dtype() == vision.dtype(),
            "the text and vision towers differ in dtype ({:?}, {:?})",
            text.dtype(),
            vision.dtype()
        );
        Ok(Self {
            text,
            vision,
            tokenizer,
            processor,
        })
    }

    /// Loads a `CLIPModel` folder, float tensors cast to `dtype` when given; errors name the file.
    pub fn from_dir(dir: &Path, device: &Device, dtype: Option<DType>) -> Result<Self> {
        let cfg = ClipModelConfig::from_file(&dir.join("config.json"))?;
        let processor = ClipImageProcessor::from_file(&dir.join("preprocessor_config.json"))?;
        let tokenizer = ClipTokenizer::from_dir(dir)?;
        let file = dir.join("model.safetensors");
        let tensors = candle_core::safetensors::load(&file, device).map_err(|e| anyhow!("{}: {e}", file.display()))?;
        let mut params = Params::new();
        for (name, t) in tensors {
            let t = match dtype {
                Some(dt) if t.dtype().is_float() => t.to_dtype(dt)?,
                _ => t,
            };
            params.insert(name, t);
        }
        Self::new(&cfg, params, tokenizer, processor).map_err(|e| anyhow!("{}: {e}", file.display()))
    }

    pub fn text_model(&self) -> &ClipTextModel {
        &self.text
    }

    pub fn vision_model(&self) -> &ClipVisionModel {
        &self.vision
    }

    pub fn tokenizer(&self) -> &ClipTokenizer {
        &self.tokenizer
    }

    pub fn processor(&self) -> &ClipImageProcessor {
        &self.processor
    }

    pub fn device(&self) -> &Device {
        self.text.device()
    }

    /// `[B, P]` image features (`get_image_features`) of `pixel_values` `[B, 3, S, S]`.
    pub fn image_embeds(&self, pixels: &Tensor) -> Result<Tensor> {
        self.vision.image_embeds(pixels)
    }

    /// `[B, P]` text features (`get_text_features`) of token ids `[B, L]`.
    pub fn text_embeds(&self, ids: &Tensor) -> Result<Tensor> {
        self.text
            .forward(ids)?
            .text_embeds
            .ok_or_else(|| anyhow!("the CLIP text tower has no text_projection"))
    }

    /// `pixel_values` `[3, S, S]` of one `[3, H, W]` image (u8, or floats in [0, 1]).
    pub fn preprocess(&self, image: &Tensor) -> Result<Tensor> {
        self.processor.preprocess_tensor(image)
    }

    /// `[B, P]` image features of images `[B, 3, H, W]` (u8, or floats in [0, 1]), each
    /// preprocessed as `CLIPImageProcessor` does.
    pub fn image_features(&self, images: &Tensor) -> Result<Tensor> {
        let b = images
            .dims4()
            .map_err(|_| anyhow!("images must be [B, 3, H, W], got {:?}", images.dims()))?
            .0;
        ensure!(b >= 1, "no images to embed");
        let pixels = (0..b)
            .map(|i| self.preprocess(&images.get(i)?))
            .collect::<Result<Vec<_>>>()?;
        let pixels = Tensor::stack(&pixels, 0)?.to_device(self.device())?;
        self.image_embeds(&pixels)
    }

    /// `[B, P]` text features of B prompts.
    pub fn text_features(&self, prompts: &[String]) -> Result<Tensor> {
        ensure!(!prompts.is_empty(), "no prompts to embed");
        let ids = self.tokenizer.encode_batch(prompts)?.to_device(self.device())?;
        self.text_embeds(&ids)
    }

    /// Per pair `100·cos(E_img(imageᵢ), E_txt(promptᵢ))`, unclamped, for images `[B, 3, H, W]`
    /// (u8, or floats in [0, 1]) and B prompts.
    pub fn clip_scores_raw(&self, images: &Tensor, prompts: &[String]) -> Result<Vec<f64>> {
        let b = images.dims().first().copied().unwrap_or(0);
        ensure!(b == prompts.len(), "{b} images but {} prompts", prompts.len());
        cosine_scores(&self.image_features(images)?, &self.text_features(prompts)?)
    }

    /// The CLIP score: `max(mean_i 100·cos_i, 0)` (torchmetrics' `CLIPScore`).
    pub fn clip_score(&self, images: &Tensor, prompts: &[String]) -> Result<f64> {
        Ok(clip_score_of(&self.clip_scores_raw(images, prompts)?))
    }
}

/// CLIP's image embedding as a metric network (FD-CLIP, the aesthetic predictor's input).
impl FeatureNet for ClipModel {
    fn name(&self) -> &'static str {
        "clip"
    }

    fn dim(&self) -> usize {
        self.vision.projection_dim()
    }

    fn features(&self, images: &Tensor) -> Result<Tensor> {
        Ok(self
            .image_features(images)?
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?)
    }
}

/// `100·cos` of each row pair of image and text features `[B, P]`.
pub fn cosine_scores(image_features: &Tensor, text_features: &Tensor) -> Result<Vec<f64>> {
    ensure!(
        image_features.dims() == text_features.dims(),
        "image features {:?} and text features {:?} differ in shape",
        image_features.dims(),
        text_features.dims()
    );
    let cos: Vec<f32> = (unit(image_features)? * unit(text_features)?)?
        .sum(D::Minus1)?
        .to_vec1()?;
    Ok(cos.into_iter().map(|c| 100.0 * c as f64).collect())
}

/// The mean of per-pair scores, clamped at 0 (torchmetrics clamps the mean, not each pair).
pub fn clip_score_of(raw: &[f64]) -> f64 {
    (raw.iter().sum::<f64>() / raw.len().max(1) as f64).max(0.0)
}

/// Rows scaled to unit L2 norm, in f32.
fn unit(x: &Tensor) -> Result<Tensor> {
    let x = x.to_dtype(DType::F32)?;
    Ok(x.broadcast_div(&x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?)?)
}
