//! Everything the study measured, stage by stage: the record its report is written from
//! (and rewritten from, as `study.json`).

use crate::eval::records::{Comparison, SweepRow};
use crate::eval::study::analytic_control::AnalyticRow;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
pub struct StudyOutcome {
    /// Classes of the MNIST teacher (evaluation samples are `per_class` of each).
    pub classes: usize,
    pub main: Comparison,
    pub other: Comparison,
    pub lengths: Vec<SweepRow>,
    pub horizons: Vec<SweepRow>,
    pub guidance: Vec<SweepRow>,
    pub analytic: Vec<AnalyticRow>,
    /// Evaluation samples per seed of the analytic control.
    pub analytic_samples: usize,
    /// Wall time of each stage.
    pub stages: Vec<(String, f64)>,
}
