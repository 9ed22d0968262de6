//! From a teacher spec or a student's run folder to its model family: the one place that
//! maps spec forms to families.

use super::family::ModelFamily;
use super::sd::family::SdFamily;
use super::small::family::SmallFamily;
use crate::models::model_dir;
use crate::models::sd::student::SD_STUDENT;
use crate::models::spec::TeacherSpec;
use crate::runtime::device::Runtime;
use anyhow::{ensure, Context, Result};
use std::path::Path;

/// The family of the teacher `spec`, its teacher checked (a small teacher loaded, a Stable
/// Diffusion pipeline's configs read).
pub fn open(spec: &str, rt: &Runtime) -> Result<Box<dyn ModelFamily>> {
    Ok(match TeacherSpec::parse(spec)? {
        TeacherSpec::Sd(dir) => Box::new(SdFamily::open(&dir, rt).with_context(|| format!("--teacher '{spec}'"))?),
        parsed => Box::new(SmallFamily::open(spec, parsed, rt)?),
    })
}

/// The teacher spec a student's run folder records (a small student's `config.json`, a
/// Stable Diffusion student's `student.json`).
pub fn recorded_teacher(dir: &Path) -> Result<String> {
    ensure!(dir.is_dir(), "--student {}: not a folder", dir.display());
    if dir.join(SD_STUDENT).is_file() {
        return Ok(crate::models::sd::student::SdStudentConfig::load(dir)?.teacher);
    }
    #[derive(serde::Deserialize)]
    struct Teacher {
        teacher: String,
    }
    let record: Teacher = model_dir::load_config(dir, model_dir::Kind::Student)?;
    Ok(record.teacher)
}

/// The family of a student's run folder, from the teacher it records; a small teacher loads
/// only when needed (a student samples without it).
pub fn open_recorded(dir: &Path, rt: &Runtime) -> Result<Box<dyn ModelFamily>> {
    let spec = recorded_teacher(dir)?;
    Ok(match TeacherSpec::parse(&spec)? {
        TeacherSpec::Sd(teacher) => Box::new(SdFamily::open(&teacher, rt)?),
        _ => Box::new(SmallFamily::lazy(&spec, rt)),
    })
}
