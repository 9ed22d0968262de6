//! The target-horizon family between CM and Direct CM: the teacher solves k steps
//! from `t_n` (or down to clean when fewer remain), then the target network maps the
//! result to clean, `d(f_θ(x_{t_n}, t_n), sg[f_θ⁻(Φ_k(x_{t_n}), t_n − k Δ)])`.
//! k = 1 is CM's target; k ≥ N is Direct's (at clean `f_θ⁻(x, 0) = x` exactly).

use super::objective::{Batch, Objective};
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
    let landed = partial_solve(solver, teacher, x, t, &ends, grid, cond)?;
    Ok(consistency(target_net, &landed, &ends, cond)?.detach())
}

/// Solves each row from its start `t[i]` down to `ends[i]`. Rows sorted by start
/// (descending): at timestep τ the rows still to step — started (start ≥ τ) and not yet
/// arrived (end < τ) — are one contiguous range, so each step is one teacher call.
fn partial_solve(
    solver: Solver,
    teacher: &dyn Denoiser,
    x: &Tensor,
    t: &[usize],
    ends: &[usize],
    grid: Discretization,
    cond: &Condition,
) -> Result<Tensor> {
    let b = t.len();
    let mut order: Vec<usize> = (0..b).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(t[i]));
    let ids = |v: &[usize]| Tensor::from_vec(v.iter().map(|&i| i as u32).collect::<Vec<_>>(), v.len(), x.device());
    let sorted = cond.select(&order)?;
    let mut xs = x.index_select(&ids(&order)?, 0)?;
    let k = grid.k();
    for tau in (1..=t[order[0]] / k).rev().map(|i| i * k) {
        let hi = order.iter().take_while(|&&i| t[i] >= tau).count();
        let lo = order.iter().take_while(|&&i| ends[i] >= tau).count();
        if lo == hi {
            continue;
        }
        let stepped = solver
            .step(
                teacher,
                &xs.narrow(0, lo, hi - lo)?,
                &vec![tau; hi - lo],
                k,
                &sorted.narrow(lo, hi - lo)?,
            )?
            .detach();
        let mut parts = Vec::with_capacity(3);
        if lo > 0 {
            parts.push(xs.narrow(0, 0, lo)?);
        }
        parts.push(stepped);
        if hi < b {
            parts.push(xs.narrow(0, hi, b - hi)?);
        }
        xs = if parts.len() == 1 {
            parts.remove(0)
        } else {
            Tensor::cat(&parts, 0)?
        };
    }
    let mut inverse = vec![0usize; b];
    for (pos, &i) in order.iter().enumerate() {
        inverse[i] = pos;
    }
    Ok(xs.index_select(&ids(&inverse)?, 0)?)
}
