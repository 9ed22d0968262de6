//! Consistency parameterization (Song et al. 2023; LCM's scalings):
//! `f(x,t) = c_skip(t) x + c_out(t) x̂₀(x,t)`, `c_skip = σ_d²/((s t)² + σ_d²)`,
//! `c_out = s t/√((s t)² + σ_d²)`, so that `f(x, 0) = x` exactly.

use crate::denoiser::{per_row_of, predict_x0, Denoiser, Labels};
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
pub fn consistency(net: &dyn Denoiser, x: &Tensor, t: &[usize], labels: &Labels) -> Result<Tensor> {
    let eps = net.eps(x, t, labels)?;
    let x0 = predict_x0(net.schedule(), x, &eps, t)?;
    let skip = per_row_of(t, c_skip, x)?;
    let out = per_row_of(t, c_out, x)?;
    Ok((x.broadcast_mul(&skip)? + x0.broadcast_mul(&out)?)?)
}
