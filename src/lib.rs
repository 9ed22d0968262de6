//! dcm: distill diffusion models into few-step consistency models — ordinary
//! consistency distillation (CM) and Direct CMs — and measure ODE-solving error
//! against sample quality (Vouitsis et al. 2024, arXiv 2411.08954).
//!
//! Data flows one way, and each module imports only from those listed before it
//! (`tests/layout.rs` checks this; `rustfmt.toml` keeps the order):
//! runtime → data → diffusion → nets → consistency → train → models → eval → families → experiments.

pub mod runtime;
pub mod data;
pub mod diffusion;
pub mod nets;
pub mod consistency;
pub mod train;
pub mod models;
pub mod eval;
pub mod families;
pub mod experiments;
