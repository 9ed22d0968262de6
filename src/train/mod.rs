//! Training: the shared optimisation loop (AdamW, EMA, checkpoints with exact resume)
//! and what runs on it — denoising score matching for teachers, consistency
//! distillation for students, and the autoencoder and feature network.

pub mod autoencoder;
pub mod budget;
pub mod checkpoint;
pub mod distill;
pub mod ema;
pub mod featnet;
pub mod optim;
pub mod score_matching;
pub mod trainer;
