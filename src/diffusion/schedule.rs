//! Noise schedules in the Stable Diffusion convention (DESIGN.md, "Schedule"):
//! T = 1000 training steps; timestep `t ∈ 1..=T` indexes `ᾱ[t-1]`, and `t = 0`
//! stands for clean data (α = 1, σ = 0).

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// Number of training timesteps T.
pub const T: usize = 1000;

/// Which β sequence defines the forward process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// SD default: `β_i = (linspace(√0.00085, √0.012, T)_i)²`.
    #[default]
    ScaledLinear,
    /// DDPM: `β_i = linspace(1e-4, 0.02, T)_i`.
    Linear,
    /// Nichol & Dhariwal 2021: `ᾱ(s) = cos²((s + 0.008)/1.008 · π/2)`, β capped at 0.999.
    Cosine,
}

impl std::str::FromStr for ScheduleKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "scaled_linear" => Ok(Self::ScaledLinear),
            "linear" => Ok(Self::Linear),
            "cosine" => Ok(Self::Cosine),
            _ => bail!("unknown schedule '{s}' (expected scaled_linear, linear or cosine)"),
        }
    }
}

/// The discrete forward process `x_t = α_t x_0 + σ_t ε`, in f64.
#[derive(Clone, Debug)]
pub struct Schedule {
    kind: ScheduleKind,
    betas: Vec<f64>,
    alphas_cumprod: Vec<f64>,
}

fn linspace(a: f64, b: f64, n: usize) -> impl Iterator<Item = f64> {
    (0..n).map(move |i| a + (b - a) * i as f64 / (n - 1) as f64)
}

fn cosine_alpha_bar(s: f64) -> f64 {
    ((s + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2).cos().powi(2)
}

impl Schedule {
    pub fn new(kind: ScheduleKind) -> Self {
        let betas: Vec<f64> = match kind {
            ScheduleKind::ScaledLinear => linspace(0.00085f64.sqrt(), 0.012f64.sqrt(), T).map(|b| b * b).collect(),
            ScheduleKind::Linear => linspace(1e-4, 0.02, T).collect(),
            ScheduleKind::Cosine => (0..T)
                .map(|i| {
                    let (s1, s2) = (i as f64 / T as f64, (i + 1) as f64 / T as f64);
                    (1.0 - cosine_alpha_bar(s2) / cosine_alpha_bar(s1)).min(0.999)
                })
                .collect(),
        };
        let alphas_cumprod = betas
            .iter()
            .scan(1.0, |acc, b| {
                *acc *= 1.0 - b;
                Some(*acc)
            })
            .collect();
        Self {
            kind,
            betas,
            alphas_cumprod,
        }
    }

    pub fn kind(&self) -> ScheduleKind {
        self.kind
    }

    /// `ᾱ_t`; 1 at the clean end `t = 0`.
    pub fn alpha_bar(&self, t: usize) -> f64 {
        if t == 0 {
            1.0
        } else {
            self.alphas_cumprod[t - 1]
        }
    }

    /// Signal scale `α_t = √ᾱ_t`.
    pub fn alpha(&self, t: usize) -> f64 {
        self.alpha_bar(t).sqrt()
    }

    /// Noise scale `σ_t = √(1 − ᾱ_t)`.
    pub fn sigma(&self, t: usize) -> f64 {
        (1.0 - self.alpha_bar(t)).sqrt()
    }

    /// Discrete `β_{t−1}` for `t ∈ 1..=T`.
    pub fn beta(&self, t: usize) -> f64 {
        self.betas[t - 1]
    }
}

impl Default for Schedule {
    fn default() -> Self {
        Self::new(ScheduleKind::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaled_linear_endpoints_match_stable_diffusion() {
        let s = Schedule::new(ScheduleKind::ScaledLinear);
        assert!((s.beta(1) - 0.00085).abs() < 1e-12);
        assert!((s.beta(T) - 0.012).abs() < 1e-12);
        // SD's ᾱ at the last step is 0.0046 (α_T ≈ 0.068).
        assert!((s.alpha_bar(T) - 0.004_660_9).abs() < 1e-6, "{}", s.alpha_bar(T));
        assert_eq!(s.alpha(0), 1.0);
        assert_eq!(s.sigma(0), 0.0);
    }

    #[test]
    fn every_schedule_is_monotone_and_normalised() {
        for kind in [ScheduleKind::ScaledLinear, ScheduleKind::Linear, ScheduleKind::Cosine] {
            let s = Schedule::new(kind);
            for t in 1..=T {
                assert!(s.alpha_bar(t) < s.alpha_bar(t - 1), "{kind:?} t={t}");
                let (a, sg) = (s.alpha(t), s.sigma(t));
                assert!((a * a + sg * sg - 1.0).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn linear_schedule_alpha_bar_is_the_product_of_one_minus_beta() {
        let s = Schedule::new(ScheduleKind::Linear);
        let direct: f64 = (1..=10)
            .map(|i| 1.0 - (1e-4 + (0.02 - 1e-4) * (i - 1) as f64 / 999.0))
            .product();
        assert!((s.alpha_bar(10) - direct).abs() < 1e-14);
    }
}
