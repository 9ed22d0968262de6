//! The header metadata by which LoRA clients tell which base model a kohya-layout LoRA file is
//! for (docs/SD_FORMATS.md, "LoRA metadata"): kohya sd-scripts' `ss_*` keys, which A1111/Forge
//! read to sort a LoRA under SD 1, SD 2 or SDXL, and Stability's ModelSpec `modelspec.*` keys.
//!
//! The family comes from the UNet's configuration: SDXL's added `text_time` embedding, SD 2.x's
//! 1024-wide context or linear transformer projections, else SD 1.x; SD 2.x is further split by
//! the teacher's prediction type (v-prediction: the 768 `v` model).

use crate::diffusion::prediction::Prediction;
use crate::nets::lora::LoraConfig;
use crate::nets::sd::unet_config::UNetConfig;
use std::collections::BTreeMap;

/// The Stable Diffusion generation a UNet belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SdFamily {
    Sd1,
    Sd2,
    Sdxl,
}

impl SdFamily {
    /// The family of `cfg`'s UNet (see the module documentation).
    pub fn of(cfg: &UNetConfig) -> Self {
        let context_1024 = matches!(
            &cfg.cross_attention_dim,
            crate::nets::sd::unet_config::PerBlock::One(1024)
        );
        match cfg.addition_embed_type.as_deref() {
            Some("text_time") => Self::Sdxl,
            _ if context_1024 || cfg.use_linear_projection => Self::Sd2,
            _ => Self::Sd1,
        }
    }
}

/// What the metadata says about the LoRA beyond its tensors.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraInfo {
    /// The teacher's prediction type (it selects SD 2.x's 512 or 768-v architecture).
    pub prediction: Prediction,
    /// Short human-readable name (`modelspec.title`).
    pub title: String,
    /// What the LoRA is and how it was made (`modelspec.description`).
    pub description: String,
    /// Training image side in pixels (`modelspec.resolution`); `None`: the family's native size.
    pub resolution: Option<usize>,
}

/// kohya's `ss_base_model_version`, ModelSpec's base architecture and native side.
fn base_model(family: SdFamily, prediction: Prediction) -> (&'static str, &'static str, usize) {
    match (family, prediction) {
        (SdFamily::Sd1, _) => ("sd_v1", "stable-diffusion-v1", 512),
        (SdFamily::Sd2, Prediction::Epsilon) => ("sd_v2", "stable-diffusion-v2-512", 512),
        (SdFamily::Sd2, Prediction::V) => ("sd_v2_v", "stable-diffusion-v2-768-v", 768),
        (SdFamily::Sdxl, _) => ("sdxl_base_v1-0", "stable-diffusion-xl-v1-base", 1024),
    }
}

/// kohya's spelling of an alpha (a Python float's `str`: `64.0`, `0.1`).
fn python_float(v: f64) -> String {
    match v.fract() == 0.0 && v.abs() < 1e16 {
        true => format!("{v:.1}"),
        false => format!("{v}"),
    }
}

/// The `ss_*` and `modelspec.*` keys (plus `format: pt`) of a kohya-layout file of `unet`'s
/// adapters, rank and alpha `lora`.
pub fn kohya_metadata(unet: &UNetConfig, lora: LoraConfig, info: &LoraInfo) -> BTreeMap<&'static str, String> {
    let family = SdFamily::of(unet);
    let (version, arch, side) = base_model(family, info.prediction);
    let side = info.resolution.unwrap_or(side);
    let implementation = match family {
        SdFamily::Sdxl => "https://github.com/Stability-AI/generative-models",
        _ => "diffusers",
    };
    let prediction = match info.prediction {
        Prediction::Epsilon => "epsilon",
        Prediction::V => "v",
    };
    BTreeMap::from([
        ("format", "pt".to_string()),
        ("modelspec.architecture", format!("{arch}/lora")),
        ("modelspec.description", info.description.clone()),
        ("modelspec.implementation", implementation.to_string()),
        ("modelspec.prediction_type", prediction.to_string()),
        ("modelspec.resolution", format!("{side}x{side}")),
        ("modelspec.sai_model_spec", "1.0.0".to_string()),
        ("modelspec.title", info.title.clone()),
        ("ss_base_model_version", version.to_string()),
        ("ss_network_alpha", python_float(lora.alpha)),
        ("ss_network_dim", lora.rank.to_string()),
        ("ss_network_module", "networks.lora".to_string()),
        (
            "ss_v2",
            if family == SdFamily::Sd2 { "True" } else { "False" }.to_string(),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The released configurations' families, and kohya's spelling of alphas.
    #[test]
    fn families_of_the_presets_and_alpha_spelling() {
        assert_eq!(SdFamily::of(&UNetConfig::sd15()), SdFamily::Sd1);
        assert_eq!(SdFamily::of(&UNetConfig::sdxl()), SdFamily::Sdxl);
        let sd21 = UNetConfig {
            cross_attention_dim: crate::nets::sd::unet_config::PerBlock::One(1024),
            ..UNetConfig::sd15()
        };
        assert_eq!(SdFamily::of(&sd21), SdFamily::Sd2);
        assert_eq!(
            (python_float(64.0), python_float(0.1), python_float(8.5)),
            ("64.0".into(), "0.1".into(), "8.5".into())
        );
    }
}
