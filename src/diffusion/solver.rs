//! Teacher ODE solvers over the N-interval grid (docs/MATHEMATICS.md, "DDIM step",
//! "Euler and Heun steps"). Each row of a batch may sit at its own timestep.

use crate::diffusion::condition::Condition;
use crate::diffusion::denoiser::{per_row, per_row_of, Denoiser};
use crate::diffusion::discretization::Discretization;
use crate::diffusion::schedule::Schedule;
use crate::runtime::signals;
use anyhow::{bail, ensure, Result};
use candle_core::Tensor;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Solver {
    /// Song et al. 2021: `x̂₀ = (x − σ_s ε̂)/α_s`, `x_next = α_n x̂₀ + σ_n ε̂`.
    Ddim,
    /// Euler on the VP PF-ODE `dx/dt = −½ β(t) (x − ε̂/σ_t)`, `β(t) = T β_{t−1}`, `dt = −k/T`.
    Euler,
    /// Heun (Karras et al. 2022): Euler predictor, trapezoidal corrector; one extra teacher call.
    Heun,
}

impl std::str::FromStr for Solver {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "ddim" => Ok(Self::Ddim),
            "euler" => Ok(Self::Euler),
            "heun" => Ok(Self::Heun),
            _ => bail!("unknown solver '{s}' (expected ddim, euler or heun)"),
        }
    }
}

/// `x + dt · dx/dt` with `dx/dt = −½ T β_t (x − ε/σ_t)` and `dt = −k/T`, i.e.
/// `x + ½ k β_t (x − ε/σ_t)`; the slope is taken at timestep `t` per row.
fn euler_update(s: &Schedule, x: &Tensor, slope_x: &Tensor, eps: &Tensor, t: &[usize], k: usize) -> Result<Tensor> {
    let a = per_row_of(t, |t| 0.5 * k as f64 * s.beta(t), x)?;
    let b = per_row_of(t, |t| 0.5 * k as f64 * s.beta(t) / s.sigma(t), x)?;
    Ok((x + slope_x.broadcast_mul(&a)?.sub(&eps.broadcast_mul(&b)?)?)?)
}

impl Solver {
    /// One step of every row from `t[b]` to `t[b] − k`.
    pub fn step(self, teacher: &dyn Denoiser, x: &Tensor, t: &[usize], k: usize, cond: &Condition) -> Result<Tensor> {
        let s = teacher.schedule();
        ensure!(
            t.iter().all(|&t| t >= k && t <= s.steps()),
            "solver step from a timestep below k = {k} or above T = {}",
            s.steps()
        );
        let to: Vec<usize> = t.iter().map(|&t| t - k).collect();
        let eps = teacher.eps(x, t, cond)?;
        match self {
            Self::Ddim => {
                // α' x̂₀ + σ' ε with x̂₀ = (x − σ ε)/α, as two per-row products whose
                // coefficients are combined in f64: α'/α on x, σ' − α'σ/α on ε.
                let pairs: Vec<(usize, usize)> = t.iter().copied().zip(to.iter().copied()).collect();
                let ratio = |(t, n): (usize, usize)| s.alpha(n) / s.alpha(t);
                let on_x: Vec<f64> = pairs.iter().map(|&p| ratio(p)).collect();
                let on_eps: Vec<f64> = pairs
                    .iter()
                    .map(|&(t, n)| s.sigma(n) - ratio((t, n)) * s.sigma(t))
                    .collect();
                Ok((x.broadcast_mul(&per_row(&on_x, x)?)? + eps.broadcast_mul(&per_row(&on_eps, x)?)?)?)
            }
            Self::Euler => euler_update(s, x, x, &eps, t, k),
            Self::Heun => {
                let xe = euler_update(s, x, x, &eps, t, k)?;
                // The corrector at clean uses timestep 1 (the reference's convention; σ_0 = 0).
                let tc: Vec<usize> = to.iter().map(|&t| t.max(1)).collect();
                let eps_e = teacher.eps(&xe, &tc, cond)?;
                // Trapezoid: x + dt (d₁ + d₂)/2 = average of the two Euler updates from x.
                let x2 = euler_update(s, x, &xe, &eps_e, &tc, k)?;
                Ok(((xe + x2)? * 0.5)?)
            }
        }
    }
}

/// The teacher's solve of every row from the common timestep `t_start` (a grid
/// point) down to clean, over the grid's steps.
pub fn solve(
    solver: Solver,
    teacher: &dyn Denoiser,
    x: &Tensor,
    grid: Discretization,
    t_start: usize,
    cond: &Condition,
) -> Result<Tensor> {
    let k = grid.k();
    ensure!(
        t_start.is_multiple_of(k) && t_start <= grid.top(),
        "start timestep {t_start} is not on the {}-interval grid",
        grid.intervals()
    );
    let b = x.dim(0)?;
    let mut x = x.clone();
    for t in (1..=t_start / k).rev().map(|i| i * k) {
        signals::check()?;
        x = solver.step(teacher, &x, &vec![t; b], k, cond)?;
    }
    Ok(x)
}
