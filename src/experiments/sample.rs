//! `dcm sample`: the teacher's ODE solve, or a student's few-step sampler, from given noise.

use super::args::{refuse, refuse_recorded_options, OdeArgs, RuntimeArgs, SingleFileArgs};
use crate::data::npy;
use crate::diffusion::teacher_ode::TeacherOde;
use crate::families::family::{ConditionFlags, ModelFamily, SamplingWork, StudentSource};
use crate::families::open::{open, open_recorded};
use crate::models::sd::images::{check_png_paths, write_pngs};
use crate::nets::sd::lora_files::TextEncoderParts;
use crate::runtime::device::Runtime;
use crate::runtime::files::{check_output_dir, check_output_file};
use crate::runtime::memory::{ensure_fits, f32_bytes};
use crate::runtime::noise::seeded;
use anyhow::{bail, ensure, Context, Result};
use candle_core::Tensor;
use clap::Args;
use std::path::PathBuf;

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
    /// Text-encoder parts of the --lora file: refuse (an error) or ignore (sample with its UNet
    /// part alone; dcm does not apply LoRAs to text encoders) [default: refuse].
    #[arg(long, value_name = "ignore|refuse", requires = "lora")]
    pub lora_text_encoder: Option<String>,
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
    pub single_file: SingleFileArgs,
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
    let noise = read_noise(&a, &rt)?;
    if let Some(Some(dir)) = &a.decode {
        check_png_paths(dir, noise.dim(0)?, "--decode")?;
    }
    let (family, out) = match (&a.student, &a.lora) {
        (Some(dir), _) => {
            refuse_recorded_options(&a.single_file)?;
            let family = open_recorded(dir, &rt)?;
            let out = student_samples(&a, &*family, StudentSource::Folder(dir), &noise, &rt)?;
            (family, out)
        }
        (None, lora) => {
            let family = open(
                a.teacher.as_deref().context("give --teacher SPEC or --student DIR")?,
                &a.single_file.options()?,
                &rt,
            )?;
            let out = match lora {
                Some(file) => {
                    let text_encoder = match &a.lora_text_encoder {
                        Some(v) => v.parse()?,
                        None => TextEncoderParts::default(),
                    };
                    let source = StudentSource::Adapters {
                        file,
                        intervals: a.ode.intervals(),
                        text_encoder,
                    };
                    student_samples(&a, &*family, source, &noise, &rt)?
                }
                None => teacher_solve(&a, &*family, &noise, &rt)?,
            };
            (family, out)
        }
    };
    match &a.decode {
        None => npy::write(&a.out, &out),
        Some(None) => npy::write(&a.out, &family.decode(&out, &rt)?),
        Some(Some(dir)) => {
            npy::write(&a.out, &out)?;
            write_pngs(dir, &family.decode(&out, &rt)?)
        }
    }
}

/// `--noise`, shape `[B, …]`, checked against memory and moved to the device.
fn read_noise(a: &SampleArgs, rt: &Runtime) -> Result<Tensor> {
    let noise = npy::read(&a.noise)?;
    ensure!(
        noise.rank() >= 2,
        "--noise {}: expected shape [B, …], got {:?}",
        a.noise.display(),
        noise.dims()
    );
    ensure!(
        noise.elem_count() > 0,
        "--noise {}: shape {:?} holds no values, so there is nothing to sample",
        a.noise.display(),
        noise.dims()
    );
    ensure_fits(
        f32_bytes(noise.dims()) * WORKING_COPIES as f64,
        &format!("--noise {}", a.noise.display()),
    )?;
    Ok(noise.to_device(&rt.device)?)
}

fn condition_flags(a: &SampleArgs) -> ConditionFlags {
    ConditionFlags {
        class: a.class,
        prompt: a.prompt.clone(),
        prompts: a.prompts.clone(),
        negative_prompt: a.negative_prompt.clone(),
        uncond: a.uncond.clone(),
    }
}

/// The teacher's guided N-interval solve of every noise row.
fn teacher_solve(a: &SampleArgs, family: &dyn ModelFamily, noise: &Tensor, rt: &Runtime) -> Result<Tensor> {
    let ode = TeacherOde::new(a.ode.solver(), a.ode.intervals(), a.ode.guidance()?)?;
    if ode.guidance <= 1.0 {
        refuse_unused_null(a, "has no effect without guidance (--guidance W > 1)")?;
    }
    let halves = if ode.guidance > 1.0 { 2 } else { 1 };
    family.check_sampling(&work(a, noise, halves, ode.teacher_calls_per_sample())?, rt)?;
    let cond = family.condition(&condition_flags(a), noise, rt)?;
    let teacher = family.teacher()?;
    check_class(a.class, teacher.num_classes())?;
    ode.solve(teacher, noise, &cond)
}

/// A student's K-step samples of every noise row.
fn student_samples(
    a: &SampleArgs,
    family: &dyn ModelFamily,
    source: StudentSource,
    noise: &Tensor,
    rt: &Runtime,
) -> Result<Tensor> {
    refuse_unused_null(a, "has no effect on a student: its sampler uses no guidance")?;
    family.check_sampling(&work(a, noise, 1, a.steps.unwrap_or(1))?, rt)?;
    let cond = family.condition(&condition_flags(a), noise, rt)?;
    let student = family.student(source, rt)?;
    check_class(a.class, student.net.num_classes())?;
    let mut rng = seeded(a.seed.unwrap_or(0));
    student.sample(noise, a.steps.unwrap_or(1), &cond, &mut rng)
}

/// `calls` network calls on every noise row, each row `halves` times (guidance).
fn work(a: &SampleArgs, noise: &Tensor, halves: usize, calls: usize) -> Result<SamplingWork> {
    Ok(SamplingWork {
        sample: noise.dims()[1..].to_vec(),
        rows: noise.dim(0)? * halves,
        calls,
        what: format!("--noise {}", a.noise.display()),
    })
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

/// Refuses `--negative-prompt` and `--uncond` where no guidance reads them.
fn refuse_unused_null(a: &SampleArgs, why: &str) -> Result<()> {
    let flags = [
        ("--negative-prompt", a.negative_prompt.is_some()),
        ("--uncond", a.uncond.is_some()),
    ];
    let given: Vec<&str> = flags.iter().filter(|(_, g)| *g).map(|(f, _)| *f).collect();
    refuse(&given, why)
}

fn check_class(class: Option<u32>, classes: usize) -> Result<()> {
    match class {
        Some(c) if classes == 0 => bail!("--class {c}: the model is unconditional (it has no classes)"),
        Some(c) if c as usize >= classes => bail!("--class {c}: the model has classes 0..{}", classes - 1),
        _ => Ok(()),
    }
}
