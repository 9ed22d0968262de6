//! Student evaluation: ODE solving error of the K-step sampler against the
//! teacher's N-interval solution from the same noise, next to the teacher's own
//! K-interval DDIM solve as a baseline.

use crate::denoiser::{Denoiser, Labels};
use crate::discretization::Discretization;
use crate::guidance::Guided;
use crate::noise::seeded;
use crate::ode_error::ode_error;
use crate::sampler::multistep_sample;
use crate::schedule::T;
use crate::solver::{solve, Solver};
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
    labels: &Labels,
    steps: &[usize],
    seed: u64,
) -> Result<Vec<OdeErrorRow>> {
    let guided = Guided::new(setup.teacher, setup.guidance);
    let reference = solve(setup.solver, &guided, noise, setup.grid, T, labels)?;
    steps
        .iter()
        .map(|&k| {
            let sample = multistep_sample(student, noise, setup.grid, k, labels, &mut seeded(seed))?;
            let coarse = solve(Solver::Ddim, &guided, noise, Discretization::new(k)?, T, labels)?;
            Ok(OdeErrorRow {
                steps: k,
                student: ode_error(&sample, &reference)?,
                teacher_ddim: ode_error(&coarse, &reference)?,
            })
        })
        .collect()
}
