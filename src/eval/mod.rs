//! Judging students: ODE-solving error against the teacher's solve and the
//! sample-quality metrics.

pub mod bench;
pub mod bootstrap;
pub mod evaluate;
pub mod metrics;
pub mod ode_error;
pub mod sd_eval;
pub mod sd_reference;
pub mod spearman;
