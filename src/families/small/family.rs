//! The small-model family: analytic Gaussian and mixture teachers, and network teachers
//! written by `dcm train-teacher` (MLPs, on points or in the MNIST autoencoder's latents).
//! Students are MLPs (fresh, or the network teacher fine-tuned or with LoRA adapters),
//! conditioned on class labels, decoded through the teacher's autoencoder.

use super::distill;
use crate::consistency::sampler::Picking;
use crate::diffusion::condition::Condition;
use crate::diffusion::denoiser::Denoiser;
use crate::diffusion::discretization::Discretization;
use crate::families::family::{
    ConditionFlags, DistillDefaults, DistillPlan, DistillRequest, EvalRequest, ModelFamily, StudentSampler,
    StudentSource,
};
use crate::models::spec::TeacherSpec;
use crate::models::student::Student;
use crate::models::teacher::Teacher;
use crate::runtime::device::Runtime;
use anyhow::{bail, ensure, Context, Result};
use candle_core::Tensor;
use std::cell::OnceCell;
use std::path::{Path, PathBuf};

/// The family-only flags small-model teachers take.
const FLAGS: [&str; 3] = ["--hidden", "--depth", "--unconditional"];

pub struct SmallFamily {
    /// The spec as given (a resumed run compares it as written), or read from a student's
    /// folder when first needed.
    spec: OnceCell<String>,
    /// The student folder whose record names the teacher, when no spec was given.
    recorded_in: Option<PathBuf>,
    rt: Runtime,
    teacher: OnceCell<Teacher>,
}

impl SmallFamily {
    /// The teacher of `spec`, loaded on `rt` (its errors come first).
    pub fn open(spec: &str, parsed: TeacherSpec, rt: &Runtime) -> Result<Self> {
        let teacher = Teacher::load(parsed, rt).map_err(|e| e.context(format!("--teacher '{spec}'")))?;
        Ok(Self {
            spec: OnceCell::from(spec.to_string()),
            recorded_in: None,
            rt: rt.clone(),
            teacher: OnceCell::from(teacher),
        })
    }

    /// The family of the teacher a student's folder records, read and loaded when first needed
    /// (a student samples without it).
    pub fn recorded(dir: &Path, rt: &Runtime) -> Self {
        Self {
            spec: OnceCell::new(),
            recorded_in: Some(dir.to_path_buf()),
            rt: rt.clone(),
            teacher: OnceCell::new(),
        }
    }

    /// The teacher's spec as given or recorded.
    fn given_spec(&self) -> Result<&str> {
        if let Some(s) = self.spec.get() {
            return Ok(s);
        }
        let dir = self.recorded_in.as_deref().context("a family without a teacher spec")?;
        let spec = Student::recorded_teacher(dir)?;
        Ok(self.spec.get_or_init(|| spec))
    }

    /// The teacher, loaded on first use.
    pub fn small_teacher(&self) -> Result<&Teacher> {
        if let Some(t) = self.teacher.get() {
            return Ok(t);
        }
        let teacher = Teacher::parse(self.given_spec()?, &self.rt)?;
        Ok(self.teacher.get_or_init(|| teacher))
    }
}

impl ModelFamily for SmallFamily {
    fn name(&self) -> &'static str {
        "small-model teachers (gaussian:, mixture: or a dcm train-teacher folder)"
    }

    fn takes(&self, flag: &str) -> bool {
        FLAGS.contains(&flag)
    }

    fn teacher(&self) -> Result<&dyn Denoiser> {
        Ok(self.small_teacher()?)
    }

    fn spec(&self) -> Result<String> {
        Ok(TeacherSpec::portable(self.given_spec()?))
    }

    fn distill_defaults(&self) -> DistillDefaults {
        let network = matches!(self.teacher.get(), Some(Teacher::Network { .. }));
        DistillDefaults {
            intervals: 50,
            guidance: 1.0,
            steps: 3000,
            batch: 256,
            lr: if network {
                distill::FINE_TUNE_LR
            } else {
                distill::FRESH_LR
            },
            cosine_decay: true,
            lora_rank: None,
        }
    }

    fn plan_distillation<'a>(&'a self, req: &DistillRequest<'a>) -> Result<Box<dyn DistillPlan + 'a>> {
        let spec = self.given_spec()?.to_string();
        Ok(Box::new(distill::plan(self.small_teacher()?, spec, req)?))
    }

    fn student(&self, source: StudentSource, rt: &Runtime) -> Result<StudentSampler> {
        let dir = match source {
            StudentSource::Folder(dir) => dir,
            StudentSource::Adapters { file, .. } => bail!(
                "--lora {}: a LoRA student needs an sd:DIR teacher, not '{}'",
                file.display(),
                self.given_spec()?
            ),
        };
        let student = Student::load(dir, rt)?;
        Ok(StudentSampler {
            grid: Discretization::new(student.config.distill.intervals)?,
            picking: Picking::Round,
            net: student.net,
        })
    }

    fn condition(&self, flags: &ConditionFlags, noise: &Tensor, _rt: &Runtime) -> Result<Condition> {
        ensure!(
            flags.prompt.is_none()
                && flags.prompts.is_none()
                && flags.negative_prompt.is_none()
                && flags.uncond.is_none(),
            "--prompt, --prompts, --negative-prompt and --uncond need a text-conditioned teacher (sd:DIR)"
        );
        Ok(Condition::repeat(flags.class, noise.dim(0)?))
    }

    fn decode(&self, latents: &Tensor, rt: &Runtime) -> Result<Tensor> {
        self.small_teacher()?.decode(rt, latents)
    }

    /// Against the teacher the student records; `--teacher` is for Stable Diffusion students.
    fn evaluate(&self, req: &EvalRequest, rt: &Runtime) -> Result<()> {
        if let Some(spec) = &req.teacher {
            bail!("--teacher '{spec}': dcm eval takes sd:DIR teachers (a student of another teacher: --student DIR alone)");
        }
        super::evaluate::refuse_text_flags(req)?;
        super::evaluate::evaluate(self.small_teacher()?, req, rt)
    }
}
