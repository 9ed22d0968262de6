//! The Stable Diffusion family: a diffusers pipeline folder (SD 1.x, 2.x, SDXL) as the
//! teacher, conditioned on prompts; LoRA students of its UNet; images through its VAE.

use super::distill::SdRun;
use crate::consistency::objective::Method;
use crate::consistency::sampler::Picking;
use crate::diffusion::condition::Condition;
use crate::diffusion::denoiser::Denoiser;
use crate::diffusion::discretization::Discretization;
use crate::families::family::{
    ConditionFlags, DistillDefaults, DistillPlan, DistillRequest, EvalRequest, ModelFamily, SamplingWork,
    StudentSampler, StudentSource,
};
use crate::models::sd::images;
use crate::models::sd::pipeline::Pipeline;
use crate::models::sd::prompts;
use crate::models::sd::sampling_cost::SamplingCost;
use crate::models::sd::single_file::SingleFileOptions;
use crate::models::sd::student::SdStudentConfig;
use crate::models::sd::teacher::text_condition;
use crate::models::sd::text::NullText;
use crate::models::sd::SdTeacher;
use crate::models::spec::TeacherSpec;
use crate::nets::lora::LoraConfig;
use crate::nets::sd::lora_files::{TextEncoderParts, KOHYA_FILE};
use crate::runtime::device::Runtime;
use crate::train::distill::DistillConfig;
use anyhow::{bail, ensure, Context, Result};
use candle_core::Tensor;
use std::cell::OnceCell;
use std::path::Path;

/// The family-only flags Stable Diffusion teachers take.
const FLAGS: [&str; 9] = [
    "--resolution",
    "--uncond",
    "--lora-targets",
    "--caption-column",
    "--skip-unknown-files",
    "--lora-format",
    "--init-lora",
    "--lora-text-encoder",
    "--gradient-checkpointing",
];

pub struct SdFamily {
    pipeline: Pipeline,
    rt: Runtime,
    /// The UNet, loaded when first needed (distillation loads its own copy as the student's base).
    teacher: OnceCell<SdTeacher>,
}

impl SdFamily {
    /// Opens the pipeline folder or single file `path` (its configs are read now, the networks
    /// when needed).
    pub fn open(path: &Path, options: &SingleFileOptions, rt: &Runtime) -> Result<Self> {
        Ok(Self {
            pipeline: Pipeline::open_with(path, options)?,
            rt: rt.clone(),
            teacher: OnceCell::new(),
        })
    }

    /// The teacher's UNet, text encoders and VAE, loaded on first use.
    pub fn sd_teacher(&self) -> Result<&SdTeacher> {
        if let Some(t) = self.teacher.get() {
            return Ok(t);
        }
        let teacher = SdTeacher::from_pipeline(self.pipeline.clone(), &self.rt, None)
            .with_context(|| format!("--teacher '{}'", TeacherSpec::sd(self.pipeline.path())))?;
        Ok(self.teacher.get_or_init(|| teacher))
    }

    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    /// The UNet with a LoRA file's adapters on (the loader's errors name the file); `te` says
    /// what to do with the file's text-encoder parts.
    pub fn with_adapters(&self, file: &Path, te: TextEncoderParts, rt: &Runtime) -> Result<SdTeacher> {
        SdTeacher::from_pipeline_parts(self.pipeline.clone(), rt, Some(file), te)
            .with_context(|| format!("--teacher '{}'", TeacherSpec::sd(self.pipeline.path())))
    }
}

impl ModelFamily for SdFamily {
    fn name(&self) -> &'static str {
        "Stable Diffusion teachers (sd:DIR)"
    }

    fn takes(&self, flag: &str) -> bool {
        FLAGS.contains(&flag)
    }

    fn teacher(&self) -> Result<&dyn Denoiser> {
        Ok(self.sd_teacher()?)
    }

    fn spec(&self) -> Result<String> {
        Ok(TeacherSpec::portable(&TeacherSpec::sd(self.pipeline.path())))
    }

    /// The paper's settings (DistillConfig::paper_lora): N = 100, w = 9, rank 64, lr 1e-4 at a
    /// constant rate, batch 16, 250 steps.
    fn distill_defaults(&self) -> DistillDefaults {
        let paper = DistillConfig::paper_lora(Method::compared()[0], LoraConfig::PAPER);
        DistillDefaults {
            intervals: paper.intervals,
            guidance: paper.guidance,
            steps: paper.steps,
            batch: paper.batch,
            lr: paper.optim.lr,
            cosine_decay: paper.optim.cosine_decay,
            lora_rank: Some(LoraConfig::PAPER.rank),
        }
    }

    fn plan_distillation<'a>(&'a self, req: &DistillRequest<'a>) -> Result<Box<dyn DistillPlan + 'a>> {
        Ok(Box::new(SdRun::plan(&self.pipeline, req)?))
    }

    /// A LoRA file, or a run folder's (with the N it was distilled on); sampled at diffusers'
    /// LCMScheduler timesteps.
    fn student(&self, source: StudentSource, rt: &Runtime) -> Result<StudentSampler> {
        let (file, intervals, te) = match source {
            StudentSource::Adapters {
                file,
                intervals,
                text_encoder,
            } => (file.to_path_buf(), intervals, text_encoder),
            StudentSource::Folder(dir) => {
                let config = SdStudentConfig::load(dir)?;
                (dir.join(KOHYA_FILE), config.distill.intervals, TextEncoderParts::Refuse)
            }
        };
        ensure!(file.is_file(), "--lora {}: no such file", file.display());
        Ok(StudentSampler {
            grid: Discretization::new(intervals).context("--intervals")?,
            picking: Picking::Floor,
            net: Box::new(self.with_adapters(&file, te, rt)?),
        })
    }

    fn condition(&self, flags: &ConditionFlags, noise: &Tensor, rt: &Runtime) -> Result<Condition> {
        let rows = noise.dim(0)?;
        let prompts = prompts::per_row(flags.prompt.as_deref(), flags.prompts.as_deref(), rows)?;
        let null = NullText::from_flags(flags.negative_prompt.as_deref(), flags.uncond.as_deref())?;
        text_condition(&self.pipeline, rt, &prompts, &null, noise)
    }

    fn decode(&self, latents: &Tensor, rt: &Runtime) -> Result<Tensor> {
        images::decode(&self.pipeline, rt, latents)
    }

    /// Rows of latents `[C, h, w]` the UNet takes (its channels, a size its levels halve
    /// evenly), else an error naming the input; then the UNet's memory and work on them.
    fn check_sampling(&self, work: &SamplingWork, rt: &Runtime) -> Result<()> {
        let cfg = self.pipeline.unet_config()?;
        let levels = 1usize << cfg.block_out_channels.len().saturating_sub(1).min(16);
        let latent = match <[usize; 3]>::try_from(work.sample.as_slice()) {
            Ok([c, h, w]) if c == cfg.in_channels && h % levels == 0 && w % levels == 0 => [c, h, w],
            _ => bail!(
                "{}: rows of shape {:?}, but a Stable Diffusion teacher needs latents [B, C, h, w] with C = {} \
                 (its UNet's channels) and h, w multiples of {levels}",
                work.what,
                work.sample,
                cfg.in_channels
            ),
        };
        let cost = SamplingCost::estimate(&cfg, rt.dtype, latent, work.rows, work.calls)?;
        cost.check(rt, &work.what)
    }

    fn evaluate(&self, req: &EvalRequest, rt: &Runtime) -> Result<()> {
        let spec = match &req.teacher {
            Some(given) => given.clone(),
            None => self.spec()?,
        };
        super::evaluate::evaluate(self.sd_teacher()?, &spec, req, rt)
    }
}
