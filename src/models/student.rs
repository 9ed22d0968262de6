//! A distilled student folder: its network, the teacher it was distilled from and
//! every hyper-parameter (config.json), weights (model.safetensors), loss log.

use crate::diffusion::schedule::T;
use crate::models::model_dir;
use crate::models::teacher::Teacher;
use crate::nets::network::{NetConfig, Network};
use crate::runtime::device::Runtime;
use crate::train::distill::DistillConfig;
use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudentConfig {
    /// Teacher SPEC (network paths stored absolute).
    pub teacher: String,
    /// Where the training data came from.
    pub data: String,
    /// Trained with class labels (sampled and evaluated per class) or with the null label only.
    pub conditional: bool,
    pub net: NetConfig,
    pub distill: DistillConfig,
    pub teacher_evaluations: u64,
    pub train_seconds: f64,
}

pub struct Student {
    pub config: StudentConfig,
    pub net: Box<dyn Network>,
}

impl Student {
    /// The student, frozen on `rt` (for sampling and evaluation).
    pub fn load(dir: &Path, rt: &Runtime) -> Result<Self> {
        ensure!(dir.is_dir(), "--student {}: not a folder", dir.display());
        ensure!(
            !dir.join(crate::models::sd::student::SD_STUDENT).is_file(),
            "--student {}: a LoRA student of a Stable Diffusion teacher; give --teacher sd:DIR with --lora {}/lora.safetensors (dcm sample) or --student alone with --teacher sd:DIR (dcm eval)",
            dir.display(),
            dir.display()
        );
        let config: StudentConfig = model_dir::load_config(dir, model_dir::Kind::Student)?;
        check_stored(&config, dir)?;
        let params = rt.frozen(&model_dir::load_params(dir)?)?;
        let net = config
            .net
            .build(&params, None)
            .with_context(|| format!("{}: weights do not match config.json", dir.display()))?;
        Ok(Self { config, net })
    }

    /// The teacher spec a student folder's `config.json` records.
    pub fn recorded_teacher(dir: &Path) -> Result<String> {
        ensure!(dir.is_dir(), "--student {}: not a folder", dir.display());
        Ok(model_dir::load_config::<StudentConfig>(dir, model_dir::Kind::Student)?.teacher)
    }

    /// Refuses a teacher that no longer matches the student's sample shape.
    pub fn check_teacher(&self, teacher: &Teacher) -> Result<()> {
        ensure!(
            teacher
                .sample_shape()
                .is_none_or(|s| s == self.config.net.sample_shape()),
            "teacher '{}' no longer matches the student's sample shape {:?}",
            self.config.teacher,
            self.config.net.sample_shape()
        );
        Ok(())
    }
}

/// The stored settings a student samples and is evaluated with, checked where they come
/// from (its `config.json`), so an error names the key, not a flag the user never typed.
fn check_stored(config: &StudentConfig, dir: &Path) -> Result<()> {
    let path = dir.join(model_dir::CONFIG);
    let n = config.distill.intervals;
    ensure!(
        n > 0 && T.is_multiple_of(n),
        "{}: distill.intervals = {n} must divide T = {T}",
        path.display()
    );
    config
        .net
        .validate()
        .with_context(|| format!("{}: net", path.display()))
}
