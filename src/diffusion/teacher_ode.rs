//! The teacher's guided probability-flow ODE as one value: solver, N-interval grid and
//! guidance scale. Every guided solve — distillation targets, reference samples, evaluation,
//! `dcm sample` — goes through `TeacherOde::solve`, so the pieces are assembled in one place.

use crate::diffusion::condition::Condition;
use crate::diffusion::denoiser::Denoiser;
use crate::diffusion::discretization::Discretization;
use crate::diffusion::guidance::Guided;
use crate::diffusion::solver::{solve, Solver};
use anyhow::{Context, Result};
use candle_core::Tensor;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TeacherOde {
    pub solver: Solver,
    pub grid: Discretization,
    /// Classifier-free guidance scale w (Imagen form; 1: none).
    pub guidance: f64,
}

impl TeacherOde {
    /// The ODE with `intervals` N, refused (naming `--intervals`) unless N divides T.
    pub fn new(solver: Solver, intervals: usize, guidance: f64) -> Result<Self> {
        let grid = Discretization::new(intervals).context("--intervals")?;
        Ok(Self { solver, grid, guidance })
    }

    pub fn intervals(&self) -> usize {
        self.grid.intervals()
    }

    /// The guided solve of every row of `x_T` from the top of the grid down to clean.
    pub fn solve(&self, teacher: &dyn Denoiser, noise: &Tensor, cond: &Condition) -> Result<Tensor> {
        let guided = Guided::new(teacher, self.guidance);
        solve(self.solver, &guided, noise, self.grid, self.grid.top(), cond)
    }

    /// The same ODE solved on another grid (the teacher's own K-step baseline).
    pub fn on_grid(&self, solver: Solver, grid: Discretization) -> Self {
        Self { solver, grid, ..*self }
    }

    /// Teacher calls per sample of the whole solve (Heun: a corrector call per step).
    pub fn teacher_calls_per_sample(&self) -> usize {
        let per_step = if self.solver == Solver::Heun { 2 } else { 1 };
        self.intervals() * per_step
    }

    /// Network evaluations per sample: each teacher call doubled by guidance (both halves in one
    /// batched call) when w > 1.
    pub fn network_evals_per_sample(&self) -> usize {
        let halves = if self.guidance > 1.0 { 2 } else { 1 };
        self.teacher_calls_per_sample() * halves
    }
}
