//! Whole experiments: the paper's comparison (`reproduce`), benchmarks, and the
//! reports they write.

pub mod bench;
pub mod report;
pub mod reproduce;
