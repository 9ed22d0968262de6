//! `dcm sample`: the teacher's ODE solve, or a student's few-step sampler, from given noise.

use super::args::{OdeArgs, RuntimeArgs};
use crate::consistency::sampler::multistep_sample;
use crate::data::npy;
use crate::diffusion::condition::Condition;
use crate::diffusion::discretization::Discretization;
use crate::diffusion::guidance::Guided;
use crate::diffusion::schedule::T;
use crate::diffusion::solver::solve;
use crate::models::sd::images::write_pngs;
use crate::models::sd::prompts;
use crate::models::sd::text::NullText;
use crate::models::student::Student;
use crate::models::teacher::Teacher;
use crate::runtime::device::Runtime;
use crate::runtime::files::check_output_dir;
use crate::runtime::noise::seeded;
use anyhow::{ensure, Context, Result};
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
    /// Student sampling steps K (1 ≤ K ≤ the student's N).
    #[arg(long, default_value_t = 1)]
    pub steps: usize,
    /// Initial noise x_T, shape [B, …], .npy float32 or float64.
    #[arg(long)]
    pub noise: PathBuf,
    /// Output .npy (float32, same shape as the noise).
    #[arg(long)]
    pub out: PathBuf,
    /// Seed of the fresh noise a multistep student injects between steps.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Decode the latents (needs a latent-space or sd:DIR teacher). `--decode`: --out holds the
    /// images, float32 in [0, 1] ([B, 1, 28, 28]; SD: [B, 3, H, W]), instead of the latents.
    /// `--decode OUT_DIR`: --out keeps the latents and OUT_DIR gets one PNG per row (00000.png, …).
    #[arg(long, num_args = 0..=1, value_name = "OUT_DIR")]
    pub decode: Option<Option<PathBuf>>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

pub fn command(a: SampleArgs) -> Result<()> {
    let rt = a.runtime.runtime()?;
    if let Some(Some(dir)) = &a.decode {
        check_output_dir(dir, "--decode")?;
    }
    let noise = npy::read(&a.noise)?.to_device(&rt.device)?;
    ensure!(
        noise.rank() >= 2,
        "--noise {}: expected shape [B, …], got {:?}",
        a.noise.display(),
        noise.dims()
    );
    let (out, teacher_spec, teacher) = if let Some(dir) = &a.student {
        let labels = condition(&a, None, &noise, &rt)?;
        let student = Student::load(dir, &rt)?;
        let grid = Discretization::new(student.config.distill.intervals)?;
        let out = multistep_sample(&*student.net, &noise, grid, a.steps, &labels, &mut seeded(a.seed))?;
        (out, student.config.teacher, None)
    } else {
        let spec = a.teacher.clone().context("give --teacher SPEC or --student DIR")?;
        let teacher = Teacher::parse(&spec, &rt)?;
        let cond = condition(&a, Some(&teacher), &noise, &rt)?;
        let grid = Discretization::new(a.ode.intervals).context("--intervals")?;
        let out = solve(
            a.ode.solver,
            &Guided::new(&teacher, a.ode.guidance),
            &noise,
            grid,
            T,
            &cond,
        )?;
        (out, spec, Some(teacher))
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
