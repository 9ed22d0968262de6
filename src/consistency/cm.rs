//! Consistency distillation, CM (Song et al. 2023; LCM, Luo et al. 2023): one teacher
//! solver step `x_{t_n} → x_{t_n−k}`, then the target network under stop-gradient,
//! `d(f_θ(x_{t_n}, t_n), sg[f_θ⁻(x_{t_n−k}, t_n − k)])`.

use super::batch::{Batch, Objective};
use super::parameterization::consistency;
use crate::diffusion::condition::Condition;
use crate::diffusion::denoiser::Denoiser;
use crate::diffusion::solver::Solver;
use anyhow::Result;
use candle_core::Tensor;

pub struct Cm;

impl Objective for Cm {
    fn name(&self) -> &'static str {
        "cm"
    }
    fn title(&self) -> &'static str {
        "CM"
    }
    fn loss(&self, b: &Batch) -> Result<Tensor> {
        let target = cm_target(b.solver, b.teacher, b.target_net, b.x, b.t, b.grid.k(), b.cond)?;
        b.distance.apply(&b.prediction()?, &target)
    }
}

/// `sg[f_θ⁻(Φ(x_t, t → t − k), t − k)]`, Φ one teacher solver step.
pub fn cm_target(
    solver: Solver,
    teacher: &dyn Denoiser,
    target_net: &dyn Denoiser,
    x: &Tensor,
    t: &[usize],
    k: usize,
    cond: &Condition,
) -> Result<Tensor> {
    let x_prev = solver.step(teacher, x, t, k, cond)?.detach();
    let t_prev: Vec<usize> = t.iter().map(|&t| t - k).collect();
    Ok(consistency(target_net, &x_prev, &t_prev, cond)?.detach())
}
