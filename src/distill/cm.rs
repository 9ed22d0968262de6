//! Consistency distillation target (Song et al. 2023; LCM): one teacher solver
//! step `x_{t_n} → x_{t_n−k}`, then the target network under stop-gradient,
//! `sg[f_θ⁻(x_{t_n−k}, t_n − k)]`.

use crate::denoiser::{Denoiser, Labels};
use crate::parameterization::consistency;
use crate::solver::Solver;
use anyhow::Result;
use candle_core::Tensor;

pub fn cm_target(
    solver: Solver,
    teacher: &dyn Denoiser,
    target_net: &dyn Denoiser,
    x: &Tensor,
    t: &[usize],
    k: usize,
    labels: &Labels,
) -> Result<Tensor> {
    let x_prev = solver.step(teacher, x, t, k, labels)?.detach();
    let t_prev: Vec<usize> = t.iter().map(|&t| t - k).collect();
    Ok(consistency(target_net, &x_prev, &t_prev, labels)?.detach())
}
