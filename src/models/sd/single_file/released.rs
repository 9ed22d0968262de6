//! The configurations of the released model families a single-file checkpoint can hold without
//! a `--config`: SD 1.x (`runwayml/stable-diffusion-v1-5`), SD 2.x (`stabilityai/stable-diffusion-2-1`
//! and `-2-1-base`) and SDXL base (`stabilityai/stable-diffusion-xl-base-1.0`), as their
//! diffusers folders give them (docs/SD_FORMATS.md, "Single-file checkpoints").

use crate::diffusion::prediction::Prediction;
use crate::diffusion::schedule::{Schedule, ScheduleKind};
use crate::models::sd::scheduler::SchedulerConfig;
use crate::nets::sd::clip_text::{Activation, ClipTextConfig};
use crate::nets::sd::clip_vocabulary::CLIP_VOCAB_SIZE;
use crate::nets::sd::unet_config::{PerBlock, UNetConfig};
use crate::nets::sd::vae::VaeConfig;

/// The layout of a single file's text side, which names its family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReleasedFamily {
    /// OpenAI CLIP ViT-L/14 under `cond_stage_model.transformer.`.
    Sd1,
    /// OpenCLIP ViT-H/14 under `cond_stage_model.model.` (its penultimate layer's output).
    Sd2,
    /// CLIP ViT-L/14 under `conditioner.embedders.0.transformer.` and OpenCLIP ViT-bigG/14 under
    /// `conditioner.embedders.1.model.`.
    Sdxl,
}

/// The pad token of OpenAI's CLIP tokenizer folders.
pub const PAD_END_OF_TEXT: &str = "<|endoftext|>";
/// The pad token of the OpenCLIP encoders' tokenizer folders (id 0).
pub const PAD_EXCLAMATION: &str = "!";

impl ReleasedFamily {
    pub fn name(self) -> &'static str {
        match self {
            Self::Sd1 => "SD 1.x",
            Self::Sd2 => "SD 2.x",
            Self::Sdxl => "SDXL base",
        }
    }

    /// The released UNet; SD 2.x's sample size follows the prediction (768-v: 96, 512-base ε: 64).
    pub fn unet(self, prediction: Prediction) -> UNetConfig {
        match self {
            Self::Sd1 => UNetConfig::sd15(),
            Self::Sd2 => UNetConfig {
                sample_size: Some(if prediction == Prediction::V { 96 } else { 64 }.into()),
                attention_head_dim: PerBlock::Each(vec![5, 10, 20, 20]),
                cross_attention_dim: PerBlock::One(1024),
                use_linear_projection: true,
                upcast_attention: prediction == Prediction::V,
                ..UNetConfig::default()
            },
            Self::Sdxl => UNetConfig::sdxl(),
        }
    }

    /// The released VAE (SDXL's has its own scaling factor and stays in f32 under f16).
    pub fn vae(self) -> VaeConfig {
        let four = |s: &str| vec![s.to_string(); 4];
        VaeConfig {
            down_block_types: four("DownEncoderBlock2D"),
            up_block_types: four("UpDecoderBlock2D"),
            block_out_channels: vec![128, 256, 512, 512],
            layers_per_block: 2,
            scaling_factor: if self == Self::Sdxl { 0.13025 } else { 0.18215 },
            ..VaeConfig::default()
        }
    }

    /// The text encoders in pipeline order (SD 2.x's without its last layer, which it never runs).
    pub fn text_encoders(self) -> Vec<ClipTextConfig> {
        match self {
            Self::Sd1 => vec![clip_l()],
            Self::Sd2 => vec![open_clip(1024, 23, 16, None)],
            Self::Sdxl => vec![clip_l(), open_clip(1280, 32, 20, Some(1280))],
        }
    }

    /// Each encoder's tokenizer pad token, in the same order.
    pub fn pads(self) -> Vec<&'static str> {
        match self {
            Self::Sd1 => vec![PAD_END_OF_TEXT],
            Self::Sd2 => vec![PAD_EXCLAMATION],
            Self::Sdxl => vec![PAD_END_OF_TEXT, PAD_EXCLAMATION],
        }
    }

    /// SD's scaled-linear β from 0.00085 to 0.012 over 1,000 steps (every released family).
    pub fn scheduler(self, prediction: Prediction) -> SchedulerConfig {
        SchedulerConfig {
            schedule: Schedule::new(ScheduleKind::ScaledLinear),
            prediction,
        }
    }

    /// What the family's checkpoints predict when the file cannot tell: SD 2.x has both kinds.
    pub fn default_prediction(self) -> Option<Prediction> {
        match self {
            Self::Sd2 => None,
            Self::Sd1 | Self::Sdxl => Some(Prediction::Epsilon),
        }
    }
}

/// OpenAI CLIP ViT-L/14's text tower.
fn clip_l() -> ClipTextConfig {
    ClipTextConfig {
        hidden_size: 768,
        intermediate_size: 3072,
        num_hidden_layers: 12,
        num_attention_heads: 12,
        max_position_embeddings: 77,
        vocab_size: CLIP_VOCAB_SIZE,
        hidden_act: Activation::QuickGelu,
        layer_norm_eps: 1e-5,
        eos_token_id: 49407,
        projection_dim: None,
    }
}

/// An OpenCLIP text tower (exact GELU, MLP 4× wide).
fn open_clip(width: usize, layers: usize, heads: usize, projection_dim: Option<usize>) -> ClipTextConfig {
    ClipTextConfig {
        hidden_size: width,
        intermediate_size: 4 * width,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        projection_dim,
        hidden_act: Activation::Gelu,
        ..clip_l()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The released parameter counts (diffusers' `numel` sums of the published folders).
    #[test]
    fn released_configs_have_the_published_sizes() {
        let count = |cfg: UNetConfig| -> usize {
            let shapes = cfg.tensor_shapes().unwrap();
            shapes.iter().map(|(_, s)| s.iter().product::<usize>()).sum()
        };
        assert_eq!(count(ReleasedFamily::Sd2.unet(Prediction::V)), 865_910_724);
        for family in [ReleasedFamily::Sd1, ReleasedFamily::Sd2, ReleasedFamily::Sdxl] {
            family.vae().validate().unwrap();
            for text in family.text_encoders() {
                text.validate().unwrap();
            }
        }
    }
}
