//! Networks: named-parameter layers (with LoRA adapters), the fused CPU kernels, and
//! the ε-prediction MLP, autoencoder and feature network built from them, and the networks of
//! the sample-quality metrics (pytorch-fid's Inception-v3, DINOv2, the aesthetic predictor).

pub mod aesthetic;
pub mod autoencoder;
pub mod checkpoint;
pub mod dinov2;
pub mod featnet;
pub mod feature_net;
#[cfg(test)]
pub mod gradcheck;
pub mod inception;
pub mod inception_blocks;
pub mod inception_conv;
pub mod inception_ops;
#[cfg(test)]
mod inception_tests;
pub mod input_gradient;
pub mod kernels;
pub mod layers;
pub mod lora;
pub mod mlp;
pub mod network;
pub mod pth;
pub mod sd;
