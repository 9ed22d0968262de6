//! The N-interval grid (docs/MATHEMATICS.md, "Discretization"): on a time axis of T steps,
//! k = T/N, start timesteps `T, T−k, …, k`; each solver step goes from `t_n` to `t_n − k`, the
//! last one to clean. The axis length comes with the grid, so a teacher on another axis (a
//! schedule of another length) needs no change to the solvers or the sampler.

use crate::diffusion::schedule::T;
use anyhow::{ensure, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Discretization {
    intervals: usize,
    /// Timesteps of the axis, T.
    steps: usize,
}

impl Discretization {
    /// N intervals of the standard axis (T = 1000, the Stable Diffusion convention).
    pub fn new(intervals: usize) -> Result<Self> {
        Self::on_axis(T, intervals)
    }

    /// N intervals of an axis of `steps` timesteps; N must divide it.
    pub fn on_axis(steps: usize, intervals: usize) -> Result<Self> {
        ensure!(
            intervals > 0 && steps.is_multiple_of(intervals),
            "--intervals {intervals} must divide T = {steps} (e.g. 10, 20, 50, 100, 1000)"
        );
        Ok(Self { intervals, steps })
    }

    pub fn intervals(&self) -> usize {
        self.intervals
    }

    /// The axis length T: the grid's first start timestep.
    pub fn top(&self) -> usize {
        self.steps
    }

    /// Step length k in timesteps.
    pub fn k(&self) -> usize {
        self.steps / self.intervals
    }

    /// The n-th start timestep, `T − n k`, for `n ∈ 0..N`.
    pub fn start(&self, n: usize) -> usize {
        self.steps - n * self.k()
    }

    /// A grid of `intervals` on the same axis.
    pub fn coarser(&self, intervals: usize) -> Result<Self> {
        Self::on_axis(self.steps, intervals)
    }
}
