//! `dcm sample`: the teacher's ODE solve, or a student's few-step sampler, from given noise.

use super::args::{refuse, OdeArgs, RuntimeArgs};
use crate::consistency::sampler::multistep_sample;
use crate::data::npy;
use crate::diffusion::condition::Condition;
use crate::diffusion::denoiser::Denoiser;
use crate::diffusion::discretization::Discretization;
use crate::diffusion::guidance::Guided;
use crate::diffusion::schedule::T;
use crate::diffusion::solver::solve;
use crate::models::student::Student;
use crate::models::teacher::Teacher;
use crate::nets::autoencoder::decode_all;
use crate::runtime::files::check_output_file;
use crate::runtime::memory::{ensure_fits, f32_bytes};
use crate::runtime::noise::seeded;
use anyhow::{bail, ensure, Context, Result};
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
    #[arg(long)]
    pub class: Option<u32>,
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
    /// Write decoded images (float32 [B, 1, 28, 28] in [0, 1]) instead of latents; needs a latent-space teacher.
    #[arg(long)]
    pub decode: bool,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// Working copies of the state a solve or sampler holds at once (x, ε̂, guidance halves, temporaries).
const WORKING_COPIES: usize = 8;

pub fn command(a: SampleArgs) -> Result<()> {
    refuse_other_modes_flags(&a)?;
    let rt = a.runtime.runtime()?;
    check_output_file(&a.out, "--out")?;
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
    let labels = Condition::repeat(a.class, noise.dim(0)?);
    let (out, teacher_spec) = if let Some(dir) = &a.student {
        let student = Student::load(dir, &rt)?;
        check_class(a.class, student.net.num_classes())?;
        let grid = Discretization::new(student.config.distill.intervals)?;
        let (steps, seed) = (a.steps.unwrap_or(1), a.seed.unwrap_or(0));
        let out = multistep_sample(&*student.net, &noise, grid, steps, &labels, &mut seeded(seed))?;
        (out, student.config.teacher)
    } else {
        let spec = a.teacher.clone().context("give --teacher SPEC or --student DIR")?;
        let teacher = Teacher::parse(&spec, &rt)?;
        check_class(a.class, teacher.num_classes())?;
        let grid = Discretization::new(a.ode.intervals()).context("--intervals")?;
        let guided = Guided::new(&teacher, a.ode.guidance()?);
        (solve(a.ode.solver(), &guided, &noise, grid, T, &labels)?, spec)
    };
    let out = if a.decode {
        let ae = Teacher::parse(&teacher_spec, &rt)?.autoencoder(&rt)?;
        decode_all(
            &ae.context("--decode: the teacher has no autoencoder (not a latent-space teacher)")?,
            &out,
        )?
    } else {
        out
    };
    npy::write(&a.out, &out)
}

/// A student samples with its own N, solver and guidance (fixed when it was distilled); a
/// teacher has no few-step sampler, so student-only flags mean nothing for it.
fn refuse_other_modes_flags(a: &SampleArgs) -> Result<()> {
    if a.student.is_some() {
        return refuse(
            &a.ode.given(),
            "cannot be set for a student: it samples with the ODE settings it was distilled with",
        );
    }
    let student_only = [("--steps", a.steps.is_some()), ("--seed", a.seed.is_some())];
    let given: Vec<&str> = student_only.iter().filter(|(_, g)| *g).map(|(f, _)| *f).collect();
    refuse(
        &given,
        "applies to a student's few-step sampler; a teacher solves with --intervals",
    )
}

fn check_class(class: Option<u32>, classes: usize) -> Result<()> {
    match class {
        Some(c) if classes == 0 => bail!("--class {c}: the model is unconditional (it has no classes)"),
        Some(c) if c as usize >= classes => bail!("--class {c}: the model has classes 0..{}", classes - 1),
        _ => Ok(()),
    }
}
