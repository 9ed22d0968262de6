//! Consistency models: the boundary-condition parameterization, the multistep
//! sampler, and the distillation objectives (CM and Direct CM) with their distances.

pub mod batch;
pub mod cm;
pub mod direct;
pub mod distance;
pub mod horizon;
pub mod objective;
pub mod parameterization;
pub mod renoise_streams;
pub mod sampler;
