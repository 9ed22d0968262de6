//! The study's record — what `study.json` holds and the report is a function of — and the
//! CM − Direct differences computed from it.

use super::horizon_steps::{horizon_steps, HorizonStep};
use super::length_criterion::steps_text;
use super::sweep_report::sweep_differences;
use crate::eval::difference::{analytic_differences, differences, Difference};
use crate::eval::study::config::StudyConfig;
use crate::eval::study::outcome::StudyOutcome;
use crate::eval::study::run::STAGE_TOPICS;
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

/// For a record of a study stopped part-way (`stages` its finished stages), the paragraph
/// that says which stages it lacks; nothing for a finished study. Sections of the missing
/// stages are empty, and a reader must not take their absence for a result. A study ends
/// with its guidance sweep (records made before the training length had a stage of its own
/// hold six stages, the last of them that sweep).
pub fn part_way(stages: &[(String, f64)]) -> String {
    let last = STAGE_TOPICS[STAGE_TOPICS.len() - 1];
    if stages.last().is_some_and(|(name, _)| name == last) {
        return String::new();
    }
    let missing = &STAGE_TOPICS[stages.len().min(STAGE_TOPICS.len() - 1)..];
    format!(
        "**Part-way.** This record holds the first {} of the study's {} stages; {} {}. \
         `dcm reproduce --preset study --resume DIR` continues the study from its folder.\n\n",
        stages.len(),
        STAGE_TOPICS.len(),
        steps_text(missing),
        match missing.len() {
            1 => "has not run yet, so its section is missing and no sentence here rests on it",
            _ => "have not run yet, so their sections are missing and no sentence here rests on them",
        }
    )
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
    /// Each target horizon against the next, likewise.
    pub horizons: Vec<HorizonStep>,
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
            horizons: horizon_steps(&out.horizons, steps, level)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished(n: usize) -> Vec<(String, f64)> {
        STAGE_TOPICS[..n].iter().map(|s| (s.to_string(), 1.0)).collect()
    }

    /// A finished study says nothing; a stopped one names exactly the stages it lacks.
    #[test]
    fn a_part_way_record_names_the_stages_it_lacks() {
        assert_eq!(part_way(&finished(STAGE_TOPICS.len())), "");
        let four = part_way(&finished(4));
        assert!(
            four.contains(
                "the first 4 of the study's 7 stages; analytic control, target horizon and guidance have not run yet"
            ),
            "{four}"
        );
        assert!(part_way(&finished(6)).contains("; guidance has not run yet, so its section"));
        assert!(!part_way(&finished(6)).contains("target horizon"));
        let mut six_stage_layout = finished(7);
        six_stage_layout.remove(1);
        assert_eq!(
            part_way(&six_stage_layout),
            "",
            "an older record's six stages end with guidance"
        );
    }
}
