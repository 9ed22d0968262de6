//! A distillation objective: the whole loss of one training batch — the target the
//! teacher provides and the distance the student's prediction is judged by. Each objective
//! lives in its own file and implements `Objective`; `objective.rs` registers them by name.

use super::distance::Distance;
use super::parameterization::consistency;
use crate::diffusion::condition::Condition;
use crate::diffusion::denoiser::Denoiser;
use crate::diffusion::discretization::Discretization;
use crate::diffusion::solver::Solver;
use anyhow::Result;
use candle_core::Tensor;

/// What an objective sees of one training batch.
pub struct Batch<'a> {
    /// The guided teacher ε̂ (counted).
    pub teacher: &'a dyn Denoiser,
    /// The network being trained, θ.
    pub student: &'a dyn Denoiser,
    /// The target network θ⁻: θ under stop-gradient, or its EMA.
    pub target_net: &'a dyn Denoiser,
    pub solver: Solver,
    pub grid: Discretization,
    pub distance: Distance,
    /// `x_{t_n}`, each row noised to its own start timestep.
    pub x: &'a Tensor,
    pub t: &'a [usize],
    pub cond: &'a Condition,
}

impl Batch<'_> {
    /// The student's consistency prediction `f_θ(x_{t_n}, t_n)` (carries the gradient).
    pub fn prediction(&self) -> Result<Tensor> {
        consistency(self.student, self.x, self.t, self.cond)
    }
}

pub trait Objective: Sync {
    /// The name `--method` takes and configs store.
    fn name(&self) -> &'static str;
    /// The name in reports and tables.
    fn title(&self) -> &'static str;
    /// The batch's loss, differentiable with respect to the student only.
    fn loss(&self, batch: &Batch) -> Result<Tensor>;
}
