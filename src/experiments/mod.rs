//! What the `dcm` commands do, one file per command (the binary only parses their
//! flags): sampling, distillation, evaluation, training, the paper's comparison
//! (`reproduce`), benchmarks, and the reports they write.

pub mod args;
pub mod bench;
pub mod distill;
pub mod eval;
pub mod features;
pub mod report;
pub mod reproduce;
pub mod reproduce_args;
pub mod reproduce_sd;
pub mod sample;
pub mod study_resume;
pub mod train;
