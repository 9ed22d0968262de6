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
use candle_core::{Shape, Tensor};

/// How the K evenly spaced grid indices `linspace(0, N, K, endpoint=false)` become integers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Picking {
    /// numpy's rounding, ties to even (dcm's students, docs/MATHEMATICS.md, "Few-step sampling").
    Round,
    /// `np.floor`, as diffusers' `LCMScheduler.set_timesteps` (LoRA students of SD teachers).
    Floor,
}

/// Start timesteps `starts[round(linspace(0, N, K, endpoint=false))]`, ties to even (numpy's rounding).
pub fn sampler_timesteps(grid: Discretization, steps: usize) -> Result<Vec<usize>> {
    picked_timesteps(grid, steps, Picking::Round)
}

/// Start timesteps `starts[pick(linspace(0, N, K, endpoint=false))]`; with `Floor`, diffusers'
/// LCMScheduler timesteps `τ` as our `t = τ + 1` (N = 10, K = 4: 1000, 800, 500, 300).
pub fn picked_timesteps(grid: Discretization, steps: usize, picking: Picking) -> Result<Vec<usize>> {
    let n = grid.intervals();
    ensure!(
        steps > 0 && steps <= n,
        "--steps {steps} must be between 1 and the number of intervals ({n})"
    );
    Ok((0..steps)
        .map(|i| {
            let at = i as f64 * n as f64 / steps as f64;
            let idx = match picking {
                Picking::Round => at.round_ties_even(),
                Picking::Floor => at.floor(),
            };
            grid.start(idx as usize)
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
    let device = noise.device().clone();
    let mut draw = |shape: &Shape| standard_normal(rng, shape.clone(), &device);
    multistep_sample_with(student, noise, &ts, cond, &mut draw, &mut |_| ())
}

/// The sampler at timesteps `ts` (descending), re-noising with `renoise(shape)` (one draw per
/// step but the last) and handing every step's `x̂₀ = f_θ(x, t)` to `each`; the last `x̂₀`.
pub fn multistep_sample_with(
    student: &dyn Denoiser,
    noise: &Tensor,
    ts: &[usize],
    cond: &Condition,
    renoise: &mut dyn FnMut(&Shape) -> Result<Tensor>,
    each: &mut dyn FnMut(&Tensor),
) -> Result<Tensor> {
    let b = noise.dim(0)?;
    let s = student.schedule();
    let mut x = noise.clone();
    let mut x0 = noise.clone();
    for (i, &t) in ts.iter().enumerate() {
        signals::check()?;
        x0 = consistency(student, &x, &vec![t; b], cond)?.detach();
        each(&x0);
        if let Some(&next) = ts.get(i + 1) {
            let z = renoise(x.shape())?;
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

    /// diffusers' LCMScheduler (original_inference_steps 10) gives τ = [999, 799, 499, 299] for 4 steps.
    #[test]
    fn floor_picking_is_the_lcm_schedulers() {
        let g = Discretization::new(10).unwrap();
        assert_eq!(picked_timesteps(g, 2, Picking::Floor).unwrap(), vec![1000, 500]);
        assert_eq!(
            picked_timesteps(g, 4, Picking::Floor).unwrap(),
            vec![1000, 800, 500, 300]
        );
        assert_eq!(
            picked_timesteps(g, 4, Picking::Round).unwrap(),
            vec![1000, 800, 500, 200]
        );
    }
}
