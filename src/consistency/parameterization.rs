//! Consistency parameterization (Song et al. 2023; LCM's scalings):
//! `f(x,t) = c_skip(t) x + c_out(t) x̂₀(x,t)`, `c_skip = σ_d²/((s t)² + σ_d²)`,
//! `c_out = s t/√((s t)² + σ_d²)`, so that `f(x, 0) = x` exactly.

use crate::diffusion::condition::Condition;
use crate::diffusion::denoiser::{per_row_of, Denoiser};
use anyhow::Result;
use candle_core::Tensor;

/// σ_d, the data standard deviation assumed by the boundary scalings.
pub const SIGMA_DATA: f64 = 0.5;
/// s, the factor applied to the integer timestep.
pub const TIMESTEP_SCALING: f64 = 10.0;

pub fn c_skip(t: usize) -> f64 {
    let st = TIMESTEP_SCALING * t as f64;
    SIGMA_DATA * SIGMA_DATA / (st * st + SIGMA_DATA * SIGMA_DATA)
}

pub fn c_out(t: usize) -> f64 {
    let st = TIMESTEP_SCALING * t as f64;
    st / (st * st + SIGMA_DATA * SIGMA_DATA).sqrt()
}

/// `f_θ(x, t)` for an ε-prediction network `net`, one timestep per row.
pub fn consistency(net: &dyn Denoiser, x: &Tensor, t: &[usize], cond: &Condition) -> Result<Tensor> {
    let eps = net.eps(x, t, cond)?;
    let s = net.schedule();
    // c_skip x + c_out (x − σ ε)/α with the per-row coefficients combined in f64:
    // two tensor products instead of five.
    let on_x = per_row_of(t, |t| c_skip(t) + c_out(t) / s.alpha(t), x)?;
    let on_eps = per_row_of(t, |t| -c_out(t) * s.sigma(t) / s.alpha(t), x)?;
    Ok((x.broadcast_mul(&on_x)? + eps.broadcast_mul(&on_eps)?)?)
}
