//! Few-step consistency sampling (LCM multistep, Luo et al. 2023): evaluate
//! `x̂₀ = f_θ(x, t)` at K timesteps picked evenly from the N-interval grid,
//! re-noising to the next one with fresh noise in between.

use crate::consistency::parameterization::consistency;
use crate::diffusion::condition::Condition;
use crate::diffusion::denoiser::{per_row, Denoiser};
use crate::diffusion::discretization::Discretization;
use crate::runtime::noise::{standard_normal, Rng};
use crate::runtime::signals;
use anyhow::{ensure, Result};
use candle_core::Tensor;

/// Start timesteps `starts[round(linspace(0, N, K, endpoint=false))]`, ties to even (numpy's rounding).
pub fn sampler_timesteps(grid: Discretization, steps: usize) -> Result<Vec<usize>> {
    let n = grid.intervals();
    ensure!(
        steps > 0 && steps <= n,
        "--steps {steps} must be between 1 and the number of intervals ({n})"
    );
    Ok((0..steps)
        .map(|i| {
            let idx = (i as f64 * n as f64 / steps as f64).round_ties_even() as usize;
            grid.start(idx)
        })
        .collect())
}

/// Runs the K-step sampler from `noise` (the x_T of every row).
pub fn multistep_sample(
    student: &dyn Denoiser,
    noise: &Tensor,
    grid: Discretization,
    steps: usize,
    cond: &Condition,
    rng: &mut Rng,
) -> Result<Tensor> {
    let ts = sampler_timesteps(grid, steps)?;
    let b = noise.dim(0)?;
    let s = student.schedule();
    let mut x = noise.clone();
    let mut x0 = noise.clone();
    for (i, &t) in ts.iter().enumerate() {
        signals::check()?;
        x0 = consistency(student, &x, &vec![t; b], cond)?.detach();
        if let Some(&next) = ts.get(i + 1) {
            let z = standard_normal(rng, x.shape(), x.device())?;
            x = (x0.broadcast_mul(&per_row(&vec![s.alpha(next); b], &x0)?)?
                + z.broadcast_mul(&per_row(&vec![s.sigma(next); b], &z)?)?)?;
        }
    }
    Ok(x0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timesteps_follow_numpy_rounding() {
        let g = Discretization::new(100).unwrap();
        assert_eq!(sampler_timesteps(g, 1).unwrap(), vec![1000]);
        assert_eq!(sampler_timesteps(g, 2).unwrap(), vec![1000, 500]);
        assert_eq!(sampler_timesteps(g, 4).unwrap(), vec![1000, 750, 500, 250]);
        assert_eq!(
            sampler_timesteps(g, 8).unwrap(),
            vec![1000, 880, 750, 620, 500, 380, 250, 120]
        );
        assert!(sampler_timesteps(g, 0).is_err());
        assert!(sampler_timesteps(g, 101).is_err());
    }
}
