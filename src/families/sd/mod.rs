//! The Stable Diffusion family (`family::SdFamily`).

pub mod distill;
pub mod evaluate;
pub mod family;
pub mod init_lora;
