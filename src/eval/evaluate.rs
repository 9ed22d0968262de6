//! Student evaluation: ODE solving error of the K-step sampler against the
//! teacher's N-interval solution from the same noise, next to the teacher's own
//! K-interval DDIM solve as a baseline.

use crate::consistency::sampler::multistep_sample;
use crate::diffusion::condition::Condition;
use crate::diffusion::denoiser::Denoiser;
use crate::diffusion::discretization::Discretization;
use crate::diffusion::guidance::Guided;
use crate::diffusion::schedule::T;
use crate::diffusion::solver::{solve, Solver};
use crate::eval::ode_error::ode_error;
use crate::runtime::noise::renoise_rng;
use anyhow::Result;
use candle_core::Tensor;

pub struct OdeErrorRow {
    pub steps: usize,
    pub student: f64,
    /// Teacher DDIM with `steps` intervals from the same noise.
    pub teacher_ddim: f64,
}

pub struct EvalSetup<'a> {
    pub teacher: &'a dyn Denoiser,
    pub solver: Solver,
    pub grid: Discretization,
    pub guidance: f64,
}

/// ODE errors at each K in `steps` (K must not exceed N and must divide T for the baseline).
pub fn ode_errors(
    setup: &EvalSetup,
    student: &dyn Denoiser,
    noise: &Tensor,
    cond: &Condition,
    steps: &[usize],
    seed: u64,
) -> Result<Vec<OdeErrorRow>> {
    let guided = Guided::new(setup.teacher, setup.guidance);
    let reference = solve(setup.solver, &guided, noise, setup.grid, T, cond)?;
    steps
        .iter()
        .map(|&k| {
            let sample = multistep_sample(student, noise, setup.grid, k, cond, &mut renoise_rng(seed))?;
            let coarse = solve(Solver::Ddim, &guided, noise, Discretization::new(k)?, T, cond)?;
            Ok(OdeErrorRow {
                steps: k,
                student: ode_error(&sample, &reference)?,
                teacher_ddim: ode_error(&coarse, &reference)?,
            })
        })
        .collect()
}
