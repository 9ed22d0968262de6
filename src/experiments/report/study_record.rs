//! The study's record — what `study.json` holds and the report is a function of — and the
//! CM − Direct differences computed from it.

use super::sweep_report::sweep_differences;
use crate::eval::difference::{analytic_differences, differences, Difference};
use crate::eval::study::config::StudyConfig;
use crate::eval::study::outcome::StudyOutcome;
use anyhow::{Context, Result};
use serde::Deserialize;
use std::path::Path;

/// Everything the report is a function of: what `study.json` holds besides the
/// differences computed from it.
pub struct StudyRecord<'a> {
    pub config: &'a StudyConfig,
    pub outcome: &'a StudyOutcome,
    pub seconds: f64,
    pub machine: String,
}

/// A study's record as `study.json` stores it.
#[derive(Deserialize)]
pub struct StoredStudy {
    pub config: StudyConfig,
    pub outcome: StudyOutcome,
    pub seconds: f64,
    pub machine: String,
}

impl StoredStudy {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{}: not a study report", path.display()))
    }

    pub fn record(&self) -> StudyRecord<'_> {
        StudyRecord {
            config: &self.config,
            outcome: &self.outcome,
            seconds: self.seconds,
            machine: self.machine.clone(),
        }
    }
}

/// Every difference the study reports.
pub struct Differences {
    pub main: Vec<Difference>,
    pub other: Vec<Difference>,
    pub analytic: Vec<Difference>,
    /// (training length, difference), when the sweep has seeds to pair.
    pub lengths: Vec<(f64, Difference)>,
    /// (w, difference), likewise.
    pub guidance: Vec<(f64, Difference)>,
}

impl Differences {
    pub fn of(cfg: &StudyConfig, out: &StudyOutcome) -> Result<Self> {
        let (steps, level) = (&cfg.main.steps, cfg.level);
        Ok(Self {
            main: differences(&out.main.rows, steps, level)?,
            other: differences(&out.other.rows, steps, level)?,
            analytic: if out.analytic.is_empty() {
                Vec::new()
            } else {
                analytic_differences(&out.analytic, steps, level)?
            },
            lengths: sweep_differences(&out.lengths, steps, level)?,
            guidance: sweep_differences(&out.guidance, steps, level)?,
        })
    }
}
