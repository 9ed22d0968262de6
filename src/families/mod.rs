//! Model families: the small models (analytic teachers, MLPs, MNIST latents) and Stable
//! Diffusion, each one folder implementing `family::ModelFamily`; `open` maps a teacher spec
//! or a student's run folder to its family, and `distillation` runs any family's plan.

pub mod distillation;
pub mod family;
pub mod open;
pub mod sd;
pub mod small;
