//! Direct CM (Vouitsis et al. 2024): the target is the teacher's full ODE solve from
//! each row's own start timestep down to clean,
//! `d(f_θ(x_{t_n}, t_n), sg[Solve(x_{t_n}, t_n → 0)])`.

use super::batch::{Batch, Objective};
use crate::diffusion::condition::Condition;
use crate::diffusion::denoiser::Denoiser;
use crate::diffusion::discretization::Discretization;
use crate::diffusion::solver::Solver;
use anyhow::Result;
use candle_core::Tensor;

pub struct Direct;

impl Objective for Direct {
    fn name(&self) -> &'static str {
        "direct"
    }
    fn title(&self) -> &'static str {
        "Direct"
    }
    fn loss(&self, b: &Batch) -> Result<Tensor> {
        let target = direct_targets(b.solver, b.teacher, b.x, b.t, b.grid, b.cond)?;
        b.distance.apply(&b.prediction()?, &target)
    }
}

/// Solves only the rows whose start has been reached ("active set"): rows are
/// sorted by start timestep so the active ones are always a prefix of the batch.
pub fn direct_targets(
    solver: Solver,
    teacher: &dyn Denoiser,
    x: &Tensor,
    t: &[usize],
    grid: Discretization,
    cond: &Condition,
) -> Result<Tensor> {
    solve_rows_to(solver, teacher, x, t, &vec![0; t.len()], grid, cond)
}

/// Solves each row from its start `t[i]` down to `ends[i]`. Rows sorted by start
/// (descending): at timestep τ the rows still to step — started (start ≥ τ) and not yet
/// arrived (end < τ) — are one contiguous range, so each step is one teacher call.
pub fn solve_rows_to(
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

/// The reference's way: step the whole batch from its largest start timestep and
/// keep rows that have not started yet frozen. Same targets, more teacher calls;
/// kept as the baseline the active set is measured against.
pub fn direct_targets_whole_batch(
    solver: Solver,
    teacher: &dyn Denoiser,
    x: &Tensor,
    t: &[usize],
    grid: Discretization,
    cond: &Condition,
) -> Result<Tensor> {
    let b = t.len();
    let k = grid.k();
    let top = *t.iter().max().expect("non-empty batch");
    let mut xs = x.clone();
    for tau in (1..=top / k).rev().map(|i| i * k) {
        let stepped = solver.step(teacher, &xs, &vec![tau; b], k, cond)?.detach();
        let started: Vec<u8> = t.iter().map(|&ti| (ti >= tau) as u8).collect();
        let mut mask_shape = vec![1usize; x.rank()];
        mask_shape[0] = b;
        let mask = Tensor::from_vec(started, mask_shape, x.device())?.broadcast_as(x.shape())?;
        xs = mask.where_cond(&stepped, &xs)?;
    }
    Ok(xs)
}
