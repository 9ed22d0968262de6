//! Judging students: ODE-solving error against the teacher's solve and the
//! sample-quality metrics; the paper's comparison on the MNIST latent setting and the
//! study built on it, whose records the reports read; and the timed workloads of `dcm bench`.

pub mod bench;
pub mod bootstrap;
pub mod comparison;
pub mod difference;
pub mod evaluate;
pub mod features;
pub mod image_files;
pub mod judge;
pub mod metric_nets;
pub mod metrics;
pub mod model_set;
pub mod ode_error;
pub mod records;
pub mod reproduce_config;
pub mod sd_eval;
pub mod sd_eval_blocks;
pub mod sd_metrics;
pub mod sd_reference;
pub mod setup;
pub mod sign_count;
pub mod spearman;
pub mod student_t;
pub mod students;
pub mod study;
