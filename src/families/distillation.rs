//! One distillation run of any family: prepare the plan's data and student, train, save.

use super::family::DistillPlan;
use crate::runtime::files::check_output_file;
use crate::train::distill::{distill, DistillConfig, Distilled};
use crate::train::trainer::Checkpointing;
use anyhow::Result;
use std::path::Path;
use std::time::Instant;

/// What a finished run reports.
pub struct Finished {
    pub distilled: Distilled,
    pub train_seconds: f64,
    /// What was written, for the summary line.
    pub written: String,
}

/// Prepares `plan` into `out`, distils with `config` under `checkpointing`, and writes the student.
pub fn run(
    plan: &dyn DistillPlan,
    config: &DistillConfig,
    out: &Path,
    checkpointing: Checkpointing,
) -> Result<Finished> {
    // A file that cannot be written (a folder, a pipe) is refused before hours of training.
    for name in plan.outputs() {
        check_output_file(&out.join(name), "--out")?;
    }
    let job = plan.prepare(out)?;
    let started = Instant::now();
    let distilled = distill(
        job.target_source,
        &*job.architecture,
        &job.start,
        &*job.data,
        config,
        checkpointing,
    )?;
    let train_seconds = started.elapsed().as_secs_f64();
    let written = plan.save(out, &distilled, train_seconds)?;
    Ok(Finished {
        distilled,
        train_seconds,
        written,
    })
}
