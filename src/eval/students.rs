//! The students a comparison trains, kept so that they can be sampled and evaluated
//! again, and saved as student folders.

use crate::consistency::objective::Method;
use crate::eval::records::TrainingRecord;
use crate::models::model_dir;
use crate::models::spec::TeacherSpec;
use crate::models::student::StudentConfig;
use crate::nets::layers::Params;
use crate::nets::network::NetConfig;
use crate::train::distill::DistillConfig;
use anyhow::Result;
use std::path::{Path, PathBuf};

/// A trained student, kept so that it can be sampled and evaluated again.
pub struct TrainedStudent {
    pub method: Method,
    pub seed: u64,
    pub distill: DistillConfig,
    pub params: Params,
    pub teacher_evaluations: u64,
    pub seconds: f64,
}

impl TrainedStudent {
    /// Its training as a report records it, with the loss of every step.
    pub fn record(&self, losses: Vec<f32>) -> TrainingRecord {
        TrainingRecord {
            method: self.method.title().into(),
            seed: self.seed,
            losses,
            teacher_evaluations: self.teacher_evaluations,
            seconds: self.seconds,
        }
    }
}

/// Where a run's students come from, as their configs record it.
pub struct StudentSource {
    pub teacher: PathBuf,
    pub data: String,
    pub net: NetConfig,
}

/// Every trained student as a student folder, `DIR/<method>[-seed<K>]`, which
/// `dcm sample` and `dcm eval` take (`dcm eval --seed K` repeats this run's evaluation).
pub fn save_students(dir: &Path, source: &StudentSource, students: &[TrainedStudent]) -> Result<()> {
    for s in students {
        let name = match s.seed {
            0 => s.method.name().to_string(),
            k => format!("{}-seed{k}", s.method.name()),
        };
        let config = StudentConfig {
            teacher: TeacherSpec::portable(&source.teacher.to_string_lossy()),
            data: source.data.clone(),
            conditional: true,
            net: source.net.clone(),
            distill: s.distill.clone(),
            teacher_evaluations: s.teacher_evaluations,
            train_seconds: s.seconds,
        };
        model_dir::save(&dir.join(name), &config, &s.params)?;
    }
    Ok(())
}
