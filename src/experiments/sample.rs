//! `dcm sample`: the teacher's ODE solve, or a student's few-step sampler, from given noise.

use super::args::{refuse, OdeArgs, RuntimeArgs};
use crate::consistency::sampler::{multistep_sample, multistep_sample_with, picked_timesteps, Picking};
use crate::data::npy;
use crate::diffusion::condition::Condition;
use crate::diffusion::denoiser::Denoiser;
use crate::diffusion::discretization::Discretization;
use crate::diffusion::guidance::Guided;
use crate::diffusion::schedule::T;
use crate::diffusion::solver::solve;
use crate::models::sd::images::write_pngs;
use crate::models::sd::prompts;
use crate::models::sd::text::NullText;
use crate::models::sd::SdTeacher;
use crate::models::student::Student;
use crate::models::teacher::Teacher;
use crate::runtime::device::Runtime;
use crate::runtime::files::{check_output_dir, check_output_file};
use crate::runtime::memory::{ensure_fits, f32_bytes};
use crate::runtime::noise::{seeded, standard_normal};
use anyhow::{bail, ensure, Context, Result};
use candle_core::{Shape, Tensor};
use clap::Args;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct SampleArgs {
    /// Teacher SPEC (see below): solve its probability-flow ODE.
    #[arg(long, conflicts_with = "student", required_unless_present = "student")]
    pub teacher: Option<String>,
    /// Student folder written by `dcm distill`: run its few-step sampler.
    #[arg(long)]
    pub student: Option<PathBuf>,
    #[command(flatten)]
    pub ode: OdeArgs,
    /// Class label for every sample (default: unconditional).
    #[arg(long, conflicts_with_all = ["prompt", "prompts"])]
    pub class: Option<u32>,
    /// Prompt of every sample (text-conditioned teachers: sd:DIR).
    #[arg(long, conflicts_with = "prompts", allow_hyphen_values = true)]
    pub prompt: Option<String>,
    /// Prompts, one line per noise row (a file of one line applies it to every row).
    #[arg(long, value_name = "FILE")]
    pub prompts: Option<PathBuf>,
    /// Negative prompt, the unconditional input of guidance [default: as the diffusers pipeline:
    /// the empty prompt, or zeros for SDXL with force_zeros_for_empty_prompt].
    #[arg(long, conflicts_with = "uncond", allow_hyphen_values = true)]
    pub negative_prompt: Option<String>,
    /// Unconditional input of guidance: zeros (zero embeddings, as the paper's training code) or
    /// empty (the empty prompt's encoding, for SDXL too).
    #[arg(long, value_name = "zeros|empty")]
    pub uncond: Option<String>,
    /// A LoRA student of the sd:DIR teacher (kohya, PEFT or diffusers' mixed layout, e.g. an
    /// LCM-LoRA): run the few-step sampler of the UNet with the LoRA on, without guidance, at
    /// diffusers' LCMScheduler timesteps (N = --intervals, its original_inference_steps).
    #[arg(long, value_name = "FILE", conflicts_with = "student")]
    pub lora: Option<PathBuf>,
    /// Student sampling steps K (1 ≤ K ≤ the student's N) [default: 1].
    #[arg(long)]
    pub steps: Option<usize>,
    /// Initial noise x_T, shape [B, …], .npy float32 or float64.
    #[arg(long)]
    pub noise: PathBuf,
    /// Output .npy (float32, same shape as the noise).
    #[arg(long)]
    pub out: PathBuf,
    /// Seed of the fresh noise a multistep student injects between steps [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Decode the latents (needs a latent-space or sd:DIR teacher). `--decode`: --out holds the
    /// images, float32 in [0, 1] ([B, 1, 28, 28]; SD: [B, 3, H, W]), instead of the latents.
    /// `--decode OUT_DIR`: --out keeps the latents and OUT_DIR gets one PNG per row (00000.png, …).
    #[arg(long, num_args = 0..=1, value_name = "OUT_DIR")]
    pub decode: Option<Option<PathBuf>>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// Working copies of the state a solve or sampler holds at once (x, ε̂, guidance halves, temporaries).
const WORKING_COPIES: usize = 8;

pub fn command(a: SampleArgs) -> Result<()> {
    refuse_other_modes_flags(&a)?;
    let rt = a.runtime.runtime()?;
    check_output_file(&a.out, "--out")?;
    if let Some(Some(dir)) = &a.decode {
        check_output_dir(dir, "--decode")?;
    }
    let noise = npy::read(&a.noise)?;
    ensure!(
        noise.rank() >= 2,
        "--noise {}: expected shape [B, …], got {:?}",
        a.noise.display(),
        noise.dims()
    );
    ensure_fits(
        f32_bytes(noise.dims()) * WORKING_COPIES as f64,
        &format!("--noise {}", a.noise.display()),
    )?;
    let noise = noise.to_device(&rt.device)?;
    let (out, teacher_spec, teacher) = if let Some(lora) = &a.lora {
        let spec = a.teacher.clone().context("--lora needs --teacher sd:DIR")?;
        let teacher = lora_student(&spec, lora, &rt)?;
        let cond = condition(&a, Some(&teacher), &noise, &rt)?;
        check_class(a.class, teacher.num_classes())?;
        let grid = Discretization::new(a.ode.intervals()).context("--intervals")?;
        let ts = picked_timesteps(grid, a.steps.unwrap_or(1), Picking::Floor)?;
        let (mut rng, device) = (seeded(a.seed.unwrap_or(0)), noise.device().clone());
        let mut draw = |shape: &Shape| standard_normal(&mut rng, shape.clone(), &device);
        let out = multistep_sample_with(&teacher, &noise, &ts, &cond, &mut draw, &mut |_| ())?;
        (out, spec, Some(teacher))
    } else if let Some(dir) = &a.student {
        let labels = condition(&a, None, &noise, &rt)?;
        let student = Student::load(dir, &rt)?;
        check_class(a.class, student.net.num_classes())?;
        let grid = Discretization::new(student.config.distill.intervals)?;
        let (steps, seed) = (a.steps.unwrap_or(1), a.seed.unwrap_or(0));
        let out = multistep_sample(&*student.net, &noise, grid, steps, &labels, &mut seeded(seed))?;
        (out, student.config.teacher, None)
    } else {
        let spec = a.teacher.clone().context("give --teacher SPEC or --student DIR")?;
        let teacher = Teacher::parse(&spec, &rt)?;
        let cond = condition(&a, Some(&teacher), &noise, &rt)?;
        check_class(a.class, teacher.num_classes())?;
        let grid = Discretization::new(a.ode.intervals()).context("--intervals")?;
        let guided = Guided::new(&teacher, a.ode.guidance()?);
        (
            solve(a.ode.solver(), &guided, &noise, grid, T, &cond)?,
            spec,
            Some(teacher),
        )
    };
    let Some(decode) = &a.decode else {
        return npy::write(&a.out, &out);
    };
    let teacher = match teacher {
        Some(t) => t,
        None => Teacher::parse(&teacher_spec, &rt)?,
    };
    let images = teacher.decode(&rt, &out)?;
    match decode {
        None => npy::write(&a.out, &images),
        Some(dir) => {
            npy::write(&a.out, &out)?;
            write_pngs(dir, &images)
        }
    }
}

/// The sd:DIR teacher of `spec` with the LoRA file's adapters on its UNet.
fn lora_student(spec: &str, lora: &Path, rt: &Runtime) -> Result<Teacher> {
    let Some(dir) = spec.strip_prefix("sd:") else {
        bail!(
            "--lora {}: a LoRA student needs an sd:DIR teacher, not '{spec}'",
            lora.display()
        );
    };
    let sd =
        SdTeacher::load_with_lora(Path::new(dir), rt, Some(lora)).with_context(|| format!("--teacher '{spec}'"))?;
    Ok(Teacher::Sd(Box::new(sd)))
}

/// The condition of every noise row: the prompts of a text-conditioned teacher, else `--class`.
fn condition(a: &SampleArgs, teacher: Option<&Teacher>, noise: &Tensor, rt: &Runtime) -> Result<Condition> {
    let rows = noise.dim(0)?;
    if let Some(Teacher::Sd(sd)) = teacher {
        let prompts = prompts::per_row(a.prompt.as_deref(), a.prompts.as_deref(), rows)?;
        let null = NullText::from_flags(a.negative_prompt.as_deref(), a.uncond.as_deref())?;
        return sd.condition(rt, &prompts, &null, noise);
    }
    ensure!(
        a.prompt.is_none() && a.prompts.is_none() && a.negative_prompt.is_none() && a.uncond.is_none(),
        "--prompt, --prompts, --negative-prompt and --uncond need a text-conditioned teacher (sd:DIR)"
    );
    Ok(Condition::repeat(a.class, rows))
}

/// A student samples with its own N, solver and guidance (fixed when it was distilled); a LoRA
/// student takes N from --intervals and no solver or guidance; a teacher has no few-step
/// sampler, so student-only flags mean nothing for it.
fn refuse_other_modes_flags(a: &SampleArgs) -> Result<()> {
    if a.student.is_some() {
        return refuse(
            &a.ode.given(),
            "cannot be set for a student: it samples with the ODE settings it was distilled with",
        );
    }
    if a.lora.is_some() {
        let fixed: Vec<&str> = a.ode.given().into_iter().filter(|f| *f != "--intervals").collect();
        return refuse(
            &fixed,
            "cannot be set for a LoRA student: it samples with the consistency sampler, without guidance",
        );
    }
    let student_only = [("--steps", a.steps.is_some()), ("--seed", a.seed.is_some())];
    let given: Vec<&str> = student_only.iter().filter(|(_, g)| *g).map(|(f, _)| *f).collect();
    refuse(
        &given,
        "applies to a student's few-step sampler (--student DIR, or --lora FILE with an sd:DIR teacher); a teacher solves with --intervals",
    )
}

fn check_class(class: Option<u32>, classes: usize) -> Result<()> {
    match class {
        Some(c) if classes == 0 => bail!("--class {c}: the model is unconditional (it has no classes)"),
        Some(c) if c as usize >= classes => bail!("--class {c}: the model has classes 0..{}", classes - 1),
        _ => Ok(()),
    }
}
