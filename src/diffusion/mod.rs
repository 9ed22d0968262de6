//! The teacher's side: the forward process and its time axis, the denoiser interface and its
//! conditioning, how a pretrained network's output is read (prediction type, timestep
//! convention), classifier-free guidance, the discretized probability-flow ODE, its solvers
//! and the guided teacher solve built from them, and analytic teachers whose exact solution
//! is known.

pub mod analytic;
pub mod condition;
pub mod denoiser;
pub mod discretization;
pub mod guidance;
pub mod prediction;
pub mod schedule;
pub mod solver;
pub mod teacher_ode;
