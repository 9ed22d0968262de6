//! One distillation run of any family: prepare the plan's data and student, train, save.

use super::family::{DistillPlan, RunRecord};
use crate::runtime::files::check_output_file;
use crate::runtime::fingerprint::{HashCache, HASH_CACHE};
use crate::train::checkpoint::CHECKPOINT;
use crate::train::distill::{distill, DistillConfig, Distilled};
use crate::train::trainer::Checkpointing;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
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
    mut checkpointing: Checkpointing,
) -> Result<Finished> {
    // A file that cannot be written (a folder, a pipe) is refused before hours of training,
    // and so is one the run reads back (a pipe there would block the read).
    let own = [HASH_CACHE, CHECKPOINT].map(PathBuf::from);
    for name in plan.outputs().into_iter().chain(own) {
        let path = out.join(name);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("--out: cannot create {}", dir.display()))?;
        }
        check_output_file(&path, "--out")?;
    }
    // The inputs' fingerprints, hashed once per run folder; a resume on changed inputs is
    // refused before the data is prepared.
    let inputs = plan.inputs()?;
    let hashes = HashCache::open(Some(out.join(HASH_CACHE)));
    let teacher_files = hashes.fingerprints(&absolute(&inputs.teacher))?;
    checkpointing.inputs = hashes.fingerprints(&absolute(&inputs.data))?;
    checkpointing.inputs.extend(teacher_files.clone());
    hashes.save()?;
    checkpointing.check_resume_inputs()?;
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
    let record = RunRecord {
        train_seconds: started.elapsed().as_secs_f64(),
        teacher_files,
    };
    let written = plan.save(out, &distilled, &record)?;
    Ok(Finished {
        distilled,
        train_seconds: record.train_seconds,
        written,
    })
}

/// The paths as absolute paths (a checkpoint's fingerprints name files independently of the
/// working folder).
fn absolute(paths: &[PathBuf]) -> Vec<PathBuf> {
    paths
        .iter()
        .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()))
        .collect()
}
