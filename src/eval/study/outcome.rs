//! Everything the study measured, stage by stage: the record its report is written from
//! (and rewritten from, as `study.json`).

use crate::eval::records::{Comparison, SweepRow};
use crate::eval::study::analytic_control::AnalyticRow;
use crate::eval::study::config::{LengthRule, StudyConfig};
use crate::eval::study::length_choice::{choose_length, LengthChoice};
use anyhow::Result;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
pub struct StudyOutcome {
    /// Classes of the MNIST teacher (evaluation samples are `per_class` of each).
    pub classes: usize,
    /// The main baseline's rows, with the teacher's own (`teacher`, `teacher DDIM`) at every seed.
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

impl StudyOutcome {
    /// The criterion's reading of the training-length sweep at `steps` sampler step
    /// counts (None before the sweep has run).
    pub fn length_choice(&self, steps: &[usize]) -> Result<Option<LengthChoice>> {
        if self.lengths.is_empty() {
            return Ok(None);
        }
        choose_length(&self.lengths, &self.main.rows, steps).map(Some)
    }

    /// The baselines' training length: the budget, or the criterion's choice.
    pub fn baseline_steps(&self, cfg: &StudyConfig) -> Result<usize> {
        Ok(match &cfg.length_rule {
            LengthRule::Fixed => cfg.main.distill_steps,
            LengthRule::Criterion(steps) => match self.length_choice(steps)? {
                Some(c) => c.chosen,
                None => cfg.main.distill_steps,
            },
        })
    }
}
