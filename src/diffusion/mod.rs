//! The teacher's side: the forward process, the denoiser interface and its
//! conditioning, classifier-free guidance, the discretized probability-flow ODE and its
//! solvers, and analytic teachers whose exact solution is known.

pub mod analytic;
pub mod condition;
pub mod denoiser;
pub mod discretization;
pub mod guidance;
pub mod schedule;
pub mod solver;
