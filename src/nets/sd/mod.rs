//! Stable Diffusion's networks as diffusers and transformers define them (SD 1.x / 2.x / SDXL,
//! diffusers folder layout and module paths): CLIP's BPE tokenizer and text encoders, the
//! whole `CLIPModel` (vision tower, image processor, CLIP score) for evaluation, the
//! `UNet2DConditionModel`, trainable through LoRA adapters on any linear or conv layer, and
//! the frozen `AutoencoderKL`. Parity is tested against the goldens in `tests/fixtures/sd/`.

pub mod attention;
pub mod blocks;
pub mod clip_model;
pub mod clip_preprocess;
pub mod clip_text;
pub mod clip_vocabulary;
pub mod clip_vision;
pub mod config_keys;
pub mod embeddings;
pub mod group_norm;
pub mod ldm_names;
pub mod lora_files;
pub mod lora_metadata;
pub mod lora_ranks;
pub mod resnet;
pub mod segments;
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
mod clip_model_tests;
#[cfg(test)]
mod unet_tests;
#[cfg(test)]
mod segments_tests;
#[cfg(test)]
mod vae_tests;
#[cfg(test)]
mod grad_tests;
#[cfg(test)]
mod lora_files_tests;
#[cfg(test)]
mod ldm_names_tests;
#[cfg(test)]
mod lora_interop_tests;
