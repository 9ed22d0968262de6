//! What a pretrained network outputs, and how dcm reads it (docs/MATHEMATICS.md, "Pretrained
//! diffusers UNets"): networks trained on timesteps 0..T−1 indexing ᾱ[t] receive dcm's t − 1,
//! and a v-prediction becomes the ε̂ every solver, guidance and parameterization works on.

use crate::diffusion::denoiser::per_row_of;
use crate::diffusion::schedule::Schedule;
use anyhow::Result;
use candle_core::Tensor;

/// What the network's output is (diffusers' `prediction_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prediction {
    /// The noise ε.
    Epsilon,
    /// The velocity `v = α_t ε − σ_t x₀` (Salimans & Ho 2022; SD 2.x 768): `ε = σ_t x_t + α_t v`.
    V,
}

impl Prediction {
    /// ε̂ from the network's output at timesteps `t` of `schedule`: itself, or `σ_t x_t + α_t v`.
    pub fn to_eps(self, schedule: &Schedule, x: &Tensor, out: Tensor, t: &[usize]) -> Result<Tensor> {
        match self {
            Self::Epsilon => Ok(out),
            Self::V => {
                let sigma = per_row_of(t, |t| schedule.sigma(t), x)?;
                let alpha = per_row_of(t, |t| schedule.alpha(t), x)?;
                Ok((x.broadcast_mul(&sigma)? + out.broadcast_mul(&alpha)?)?)
            }
        }
    }
}

/// The timesteps a network trained on 0..T−1 receives for dcm's `t` (1..=T indexes ᾱ[t−1]):
/// `t − 1`. At t = 0, the clean boundary where the consistency function is `x` itself whatever
/// ε̂ is (c_out(0) = σ_0 = 0), the network is asked at its lowest timestep, as LCM's training
/// script clamps its targets'.
pub fn network_timesteps(t: &[usize]) -> Vec<f64> {
    t.iter().map(|&t| t.saturating_sub(1) as f64).collect()
}
