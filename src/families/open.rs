//! From a teacher spec or a student's run folder to its model family: the one place that
//! maps spec forms to families.

use super::family::ModelFamily;
use super::sd::family::SdFamily;
use super::small::family::SmallFamily;
use crate::models::sd::single_file::SingleFileOptions;
use crate::models::sd::student::{SdStudentConfig, SD_STUDENT};
use crate::models::spec::TeacherSpec;
use crate::runtime::device::Runtime;
use anyhow::{bail, ensure, Context, Result};
use std::path::Path;

/// The family of the teacher `spec`, its teacher checked (a small teacher loaded, a Stable
/// Diffusion pipeline's configs read); `options` read a single-file checkpoint.
pub fn open(spec: &str, options: &SingleFileOptions, rt: &Runtime) -> Result<Box<dyn ModelFamily>> {
    Ok(match TeacherSpec::parse(spec)? {
        TeacherSpec::Sd(path) => {
            Box::new(SdFamily::open(&path, options, rt).with_context(|| format!("--teacher '{spec}'"))?)
        }
        parsed => {
            ensure!(
                options.is_empty(),
                "--config and --prediction read single-file Stable Diffusion checkpoints (sd:FILE), not '{spec}'"
            );
            Box::new(SmallFamily::open(spec, parsed, rt)?)
        }
    })
}

/// The family of a student's run folder: a Stable Diffusion run's `student.json` names its
/// pipeline; a small student's teacher is read from its record and loaded only when needed (a
/// student samples without it).
pub fn open_recorded(dir: &Path, rt: &Runtime) -> Result<Box<dyn ModelFamily>> {
    if !dir.join(SD_STUDENT).is_file() {
        return Ok(Box::new(SmallFamily::recorded(dir, rt)));
    }
    let record = SdStudentConfig::load(dir)?;
    let spec = record.teacher;
    match TeacherSpec::parse(&spec)? {
        TeacherSpec::Sd(teacher) => Ok(Box::new(SdFamily::open(&teacher, &record.teacher_options, rt)?)),
        _ => bail!("{}: teacher '{spec}' is not sd:DIR", dir.join(SD_STUDENT).display()),
    }
}
