//! Timing the workloads a user runs (`dcm bench`): the network teacher's forward, guided
//! sampling and distillation steps, the image networks, and a Stable Diffusion UNet's forward
//! and LoRA distillation step — the figures `bench/compare.sh` and `bench/compare_unet.sh`
//! set beside PyTorch's.

pub mod conv;
pub mod mlp;
pub mod timing;
pub mod unet;
pub mod unet_lora;
