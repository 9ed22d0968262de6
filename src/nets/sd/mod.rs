//! Stable Diffusion's networks as diffusers and transformers define them (SD 1.x / 2.x / SDXL,
//! diffusers folder layout and module paths): CLIP's BPE tokenizer and text encoders, the
//! `UNet2DConditionModel`, trainable through LoRA adapters on any linear or conv layer, and
//! the frozen `AutoencoderKL`. Parity is tested against the goldens in `tests/fixtures/sd/`.

pub mod attention;
pub mod blocks;
pub mod clip_text;
pub mod embeddings;
pub mod group_norm;
pub mod resnet;
pub mod tokenizer;
pub mod transformer;
pub mod unet;
pub mod unet_config;
pub mod unet_init;
pub mod unet_presets;
pub mod vae;
pub mod weights;

#[cfg(test)]
mod test_util;
#[cfg(test)]
mod unet_tests;
#[cfg(test)]
mod vae_tests;
#[cfg(test)]
mod grad_tests;
