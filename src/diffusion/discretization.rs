//! The N-interval grid (docs/MATHEMATICS.md, "Discretization"): k = T/N, start timesteps
//! `T, T−k, …, k`; each solver step goes from `t_n` to `t_n − k`, the last one to clean.

use crate::diffusion::schedule::T;
use anyhow::{ensure, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Discretization {
    intervals: usize,
}

impl Discretization {
    pub fn new(intervals: usize) -> Result<Self> {
        ensure!(
            intervals > 0 && T.is_multiple_of(intervals),
            "--intervals {intervals} must divide T = {T} (e.g. 10, 20, 50, 100, 1000)"
        );
        Ok(Self { intervals })
    }

    pub fn intervals(&self) -> usize {
        self.intervals
    }

    /// Step length k in timesteps.
    pub fn k(&self) -> usize {
        T / self.intervals
    }

    /// The n-th start timestep, `T − n k`, for `n ∈ 0..N`.
    pub fn start(&self, n: usize) -> usize {
        T - n * self.k()
    }
}
