//! dcm: distill diffusion models into few-step consistency models — ordinary
//! consistency distillation (CM) and Direct CMs — and measure ODE-solving error
//! against sample quality (Vouitsis et al. 2024, arXiv 2411.08954).
//!
//! Data flows one way: data → teacher → solver → distill → sampler → metrics.

pub mod analytic;
pub mod assets;
pub mod autoencoder;
pub mod bench;
pub mod checkpoint;
pub mod data;
pub mod denoiser;
pub mod device;
pub mod discretization;
pub mod distill;
pub mod ema;
pub mod evaluate;
pub mod featnet;
pub mod guidance;
pub mod kernels;
pub mod layers;
pub mod loss;
pub mod metrics;
pub mod mlp;
pub mod model_dir;
pub mod noise;
pub mod ode_error;
pub mod optim;
pub mod parameterization;
pub mod report;
pub mod reproduce;
pub mod sampler;
pub mod schedule;
pub mod signals;
pub mod solver;
pub mod student;
pub mod teacher;
pub mod train;
pub mod train_autoencoder;
pub mod train_featnet;
pub mod train_teacher;
