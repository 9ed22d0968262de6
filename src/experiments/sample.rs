//! `dcm sample`: the teacher's ODE solve, or a student's few-step sampler, from given noise.

use super::args::{OdeArgs, RuntimeArgs};
use crate::consistency::sampler::multistep_sample;
use crate::data::npy;
use crate::diffusion::condition::Condition;
use crate::diffusion::discretization::Discretization;
use crate::diffusion::guidance::Guided;
use crate::diffusion::schedule::T;
use crate::diffusion::solver::solve;
use crate::models::student::Student;
use crate::models::teacher::Teacher;
use crate::nets::autoencoder::decode_all;
use crate::runtime::noise::seeded;
use anyhow::{ensure, Context, Result};
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
    /// Write decoded images (float32 [B, 1, 28, 28] in [0, 1]) instead of latents; needs a latent-space teacher.
    #[arg(long)]
    pub decode: bool,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

pub fn command(a: SampleArgs) -> Result<()> {
    let rt = a.runtime.runtime()?;
    let noise = npy::read(&a.noise)?.to_device(&rt.device)?;
    ensure!(
        noise.rank() >= 2,
        "--noise {}: expected shape [B, …], got {:?}",
        a.noise.display(),
        noise.dims()
    );
    let labels = Condition::repeat(a.class, noise.dim(0)?);
    let (out, teacher_spec) = if let Some(dir) = &a.student {
        let student = Student::load(dir, &rt)?;
        let grid = Discretization::new(student.config.distill.intervals)?;
        let out = multistep_sample(&*student.net, &noise, grid, a.steps, &labels, &mut seeded(a.seed))?;
        (out, student.config.teacher)
    } else {
        let spec = a.teacher.clone().context("give --teacher SPEC or --student DIR")?;
        let teacher = Teacher::parse(&spec, &rt)?;
        let grid = Discretization::new(a.ode.intervals).context("--intervals")?;
        (
            solve(
                a.ode.solver,
                &Guided::new(&teacher, a.ode.guidance),
                &noise,
                grid,
                T,
                &labels,
            )?,
            spec,
        )
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
