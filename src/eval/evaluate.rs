//! Student evaluation: ODE solving error of the K-step sampler against the
//! teacher's N-interval solution from the same noise, next to the teacher's own
//! K-interval DDIM solve as a baseline.

use crate::consistency::sampler::multistep_sample;
use crate::diffusion::condition::Condition;
use crate::diffusion::denoiser::Denoiser;
use crate::diffusion::solver::Solver;
use crate::diffusion::teacher_ode::TeacherOde;
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

/// ODE errors at each K in `steps` (K must not exceed N and must divide T for the baseline).
pub fn ode_errors(
    teacher: &dyn Denoiser,
    ode: &TeacherOde,
    student: &dyn Denoiser,
    noise: &Tensor,
    cond: &Condition,
    steps: &[usize],
    seed: u64,
) -> Result<Vec<OdeErrorRow>> {
    let reference = ode.solve(teacher, noise, cond)?;
    steps
        .iter()
        .map(|&k| {
            let sample = multistep_sample(student, noise, ode.grid, k, cond, &mut renoise_rng(seed))?;
            let coarse = ode
                .on_grid(Solver::Ddim, ode.grid.coarser(k)?)
                .solve(teacher, noise, cond)?;
            Ok(OdeErrorRow {
                steps: k,
                student: ode_error(&sample, &reference)?,
                teacher_ddim: ode_error(&coarse, &reference)?,
            })
        })
        .collect()
}
