//! Networks: named-parameter layers (with LoRA adapters), the fused CPU kernels, and
//! the ε-prediction MLP, autoencoder and feature network built from them, and the
//! feature networks of the sample-quality metrics (DINOv2).

pub mod aesthetic;
pub mod autoencoder;
pub mod dinov2;
pub mod featnet;
pub mod feature_net;
#[cfg(test)]
pub mod gradcheck;
pub mod input_gradient;
pub mod kernels;
pub mod layers;
pub mod lora;
pub mod mlp;
pub mod network;
pub mod sd;
