//! The target-horizon family between CM and Direct CM: the teacher solves k steps
//! from `t_n` (or down to clean when fewer remain), then the target network maps the
//! result to clean, `d(f_θ(x_{t_n}, t_n), sg[f_θ⁻(Φ_k(x_{t_n}), t_n − k Δ)])`.
//! k = 1 is CM's target; k ≥ N is Direct's (at clean `f_θ⁻(x, 0) = x` exactly).

use super::batch::{Batch, Objective};
use super::direct::solve_rows_to;
use super::parameterization::consistency;
use crate::diffusion::condition::Condition;
use crate::diffusion::denoiser::Denoiser;
use crate::diffusion::discretization::Discretization;
use crate::diffusion::solver::Solver;
use anyhow::Result;
use candle_core::Tensor;

/// One member of the family: `k` teacher steps before the target network.
pub struct Horizon {
    pub k: usize,
    name: &'static str,
    title: &'static str,
}

/// The horizons the study trains between CM (k = 1) and Direct (k = all).
pub static HORIZON_2: Horizon = Horizon::new(2, "horizon-2", "k = 2");
pub static HORIZON_5: Horizon = Horizon::new(5, "horizon-5", "k = 5");
pub static HORIZON_10: Horizon = Horizon::new(10, "horizon-10", "k = 10");
pub static HORIZON_25: Horizon = Horizon::new(25, "horizon-25", "k = 25");

impl Horizon {
    pub const fn new(k: usize, name: &'static str, title: &'static str) -> Self {
        Self { k, name, title }
    }
}

impl Objective for Horizon {
    fn name(&self) -> &'static str {
        self.name
    }
    fn title(&self) -> &'static str {
        self.title
    }
    fn loss(&self, b: &Batch) -> Result<Tensor> {
        let target = horizon_target(b.solver, b.teacher, b.target_net, b.x, b.t, b.grid, self.k, b.cond)?;
        b.distance.apply(&b.prediction()?, &target)
    }
}

/// `sg[f_θ⁻(Φ_k(x_t), t_end)]`, `t_end = max(t − kΔ, 0)` per row.
#[allow(clippy::too_many_arguments)]
pub fn horizon_target(
    solver: Solver,
    teacher: &dyn Denoiser,
    target_net: &dyn Denoiser,
    x: &Tensor,
    t: &[usize],
    grid: Discretization,
    k: usize,
    cond: &Condition,
) -> Result<Tensor> {
    let ends: Vec<usize> = t.iter().map(|&t| t.saturating_sub(k * grid.k())).collect();
    let landed = solve_rows_to(solver, teacher, x, t, &ends, grid, cond)?;
    Ok(consistency(target_net, &landed, &ends, cond)?.detach())
}
