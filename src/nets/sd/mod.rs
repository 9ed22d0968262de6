//! Stable Diffusion teachers (SD 1.x/2.x/SDXL in the diffusers folder layout): the text side,
//! CLIP's BPE tokenizer and CLIP text encoders, matched against transformers' outputs.

pub mod clip_text;
pub mod tokenizer;
