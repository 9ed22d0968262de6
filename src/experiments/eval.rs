//! `dcm eval`: a student's ODE-solving error at several step counts.

use super::args::RuntimeArgs;
use crate::diffusion::condition::Condition;
use crate::diffusion::denoiser::Denoiser;
use crate::diffusion::discretization::Discretization;
use crate::diffusion::schedule::T;
use crate::eval::evaluate::{ode_errors, EvalSetup};
use crate::models::student::Student;
use crate::runtime::memory::{ensure_fits, f32_bytes};
use crate::runtime::noise::{eval_noise_rng, standard_normal};
use anyhow::{ensure, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct EvalArgs {
    #[arg(long)]
    pub student: PathBuf,
    /// Number of noise samples.
    #[arg(long, default_value_t = 2000)]
    pub samples: usize,
    /// Student step counts to evaluate, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    pub steps: Vec<usize>,
    /// Evaluation seed: the noise and the sampler's re-noise streams (`dcm reproduce` seed K uses the same).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

pub fn command(a: EvalArgs) -> Result<()> {
    ensure!(a.samples > 0, "--samples must be positive");
    let rt = a.runtime.runtime()?;
    let student = Student::load(&a.student, &rt)?;
    let teacher = student.teacher(&rt)?;
    let d = &student.config.distill;
    let grid = Discretization::new(d.intervals)?;
    let mut shape = vec![a.samples];
    shape.extend(student.config.net.sample_shape());
    // The reference solve, the sampler and the coarse solve each hold several copies.
    ensure_fits(f32_bytes(&shape) * 16.0, &format!("--samples {}", a.samples))?;
    let noise = standard_normal(&mut eval_noise_rng(a.seed), shape, &rt.device)?;
    let classes = teacher.num_classes() as u32;
    let conditional = student.config.conditional && classes > 0;
    let labels = Condition::Labels(
        (0..a.samples as u32)
            .map(|i| conditional.then(|| i % classes))
            .collect(),
    );
    for &k in &a.steps {
        ensure!(
            k >= 1 && k <= grid.intervals() && T.is_multiple_of(k),
            "--steps {k} must divide 1000 and be at most N = {}",
            grid.intervals()
        );
    }
    let setup = EvalSetup {
        teacher: &teacher,
        solver: d.solver,
        grid,
        guidance: d.guidance,
    };
    let rows = ode_errors(&setup, &*student.net, &noise, &labels, &a.steps, a.seed)?;
    let cond = if conditional {
        "classes in turn"
    } else {
        "unconditional"
    };
    println!(
        "ODE error (MSE to the teacher's {}-interval {:?} solve, w = {}, {} samples, {cond})",
        d.intervals, d.solver, d.guidance, a.samples
    );
    println!("| steps | student ({:?}) | teacher DDIM, same steps |", d.method);
    println!("|---|---|---|");
    for r in rows {
        println!("| {} | {:.4e} | {:.4e} |", r.steps, r.student, r.teacher_ddim);
    }
    Ok(())
}
