//! `dcm reproduce --preset study --resume DIR`: the record a study continues from, refused
//! unless it is the same study — the same settings, models and data — so that two runs are
//! never mixed in one folder; and a new study's `--out`, refused where a study already is.

use super::report::study_record::StoredStudy;
use crate::eval::study::config::StudyConfig;
use crate::eval::study::run::Resumed;
use crate::runtime::files::{read_regular_text, write_atomic};
use crate::runtime::fingerprint::{changes, content_hash, describe, Fingerprints};
use crate::train::trainer::differences;
use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The study's record in its folder.
pub const RECORD: &str = "study.json";
/// What the study was made from, in its folder.
pub const INPUTS: &str = "inputs.json";

/// What a study is made from besides its settings: `--data` and the models' files.
#[derive(Serialize, Deserialize)]
pub struct StudyInputs {
    pub data: String,
    pub models: Fingerprints,
}

impl StudyInputs {
    /// `--data` and the content hashes of the models' files in `models`.
    pub fn of(models: &Path, data: &str) -> Result<Self> {
        let mut prints = Fingerprints::new();
        for part in ["autoencoder", "teacher", "featnet"] {
            for file in ["config.json", "model.safetensors"] {
                let name = format!("{part}/{file}");
                prints.insert(name.clone(), content_hash(&models.join(&name))?);
            }
        }
        Ok(Self {
            data: data.to_string(),
            models: prints,
        })
    }

    /// Records them in the study's folder `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        write_atomic(&dir.join(INPUTS), &serde_json::to_vec_pretty(self)?)
    }

    /// What differs from `recorded`, one phrase each.
    fn changes_from(&self, recorded: &Self) -> Vec<String> {
        let mut out = changes(&recorded.models, &self.models);
        if recorded.data != self.data {
            out.insert(0, format!("--data: {} → {}", recorded.data, self.data));
        }
        out
    }
}

/// Refuses a new study's `--out` folder where a study is already recorded.
pub fn check_new(dir: &Path) -> Result<()> {
    ensure!(
        !dir.join(RECORD).exists(),
        "--out {0}: holds a study already ({RECORD}); continue it with --resume {0}, or give another folder",
        dir.display()
    );
    Ok(())
}

/// The record to continue in `dir`: refused unless the study there was made with the
/// settings `cfg` from `inputs`, naming what differs.
pub fn resumed(dir: &Path, cfg: &StudyConfig, inputs: &StudyInputs) -> Result<Resumed> {
    let (record, recorded) = (dir.join(RECORD), dir.join(INPUTS));
    ensure!(
        record.is_file(),
        "--resume {}: no {RECORD} there (a study writes it when its first stage ends; start one with --out)",
        dir.display()
    );
    let stored = StoredStudy::load(&record).context("--resume")?;
    let mut changed = Vec::new();
    differences(
        &serde_json::to_value(&stored.config)?,
        &serde_json::to_value(cfg)?,
        "",
        &mut changed,
    );
    ensure!(
        changed.is_empty(),
        "--resume {}: the study there was made with different settings: {}",
        dir.display(),
        describe(&changed)
    );
    let text = read_regular_text(&recorded).with_context(|| format!("--resume: cannot read {}", recorded.display()))?;
    let old: StudyInputs = serde_json::from_str(&text)
        .with_context(|| format!("--resume: {}: not a study's inputs", recorded.display()))?;
    let changed = inputs.changes_from(&old);
    ensure!(
        changed.is_empty(),
        "--resume {}: the study there was made from other models or data: {}",
        dir.display(),
        describe(&changed)
    );
    Ok(Resumed {
        outcome: stored.outcome,
        seconds: stored.seconds,
    })
}
