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
use anyhow::{bail, ensure, Result};
use candle_core::Tensor;
use std::cell::OnceCell;

/// The family-only flags small-model teachers take.
const FLAGS: [&str; 3] = ["--hidden", "--depth", "--unconditional"];

pub struct SmallFamily {
    /// The spec as given (a resumed run compares it as written).
    spec: String,
    rt: Runtime,
    teacher: OnceCell<Teacher>,
}

impl SmallFamily {
    /// The teacher of `spec`, loaded on `rt` (its errors come first).
    pub fn open(spec: &str, parsed: TeacherSpec, rt: &Runtime) -> Result<Self> {
        let family = Self::lazy(spec, rt);
        let _ = family
            .teacher
            .set(Teacher::load(parsed, rt).map_err(|e| e.context(format!("--teacher '{spec}'")))?);
        Ok(family)
    }

    /// The family of `spec`, whose teacher loads when first needed (a student samples without it).
    pub fn lazy(spec: &str, rt: &Runtime) -> Self {
        Self {
            spec: spec.to_string(),
            rt: rt.clone(),
            teacher: OnceCell::new(),
        }
    }

    /// The teacher, loaded on first use.
    pub fn small_teacher(&self) -> Result<&Teacher> {
        if let Some(t) = self.teacher.get() {
            return Ok(t);
        }
        let teacher = Teacher::parse(&self.spec, &self.rt)?;
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

    fn spec(&self) -> String {
        TeacherSpec::portable(&self.spec)
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
        Ok(Box::new(distill::plan(self.small_teacher()?, self.spec.clone(), req)?))
    }

    fn student(&self, source: StudentSource, rt: &Runtime) -> Result<StudentSampler> {
        let StudentSource::Folder(dir) = source else {
            bail!("--lora: a LoRA file is a student of a Stable Diffusion teacher (sd:DIR)");
        };
        let student = Student::load(dir, rt)?;
        Ok(StudentSampler {
            grid: Discretization::new(student.config.distill.intervals)?,
            picking: Picking::Round,
            conditional: student.config.conditional,
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
        super::evaluate::evaluate(self.small_teacher()?, req, rt)
    }
}
