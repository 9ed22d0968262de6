//! Noise schedules in the Stable Diffusion convention (docs/MATHEMATICS.md, "Schedules"):
//! T = 1000 training steps; timestep `t ∈ 1..=T` indexes `ᾱ[t-1]`, and `t = 0`
//! stands for clean data (α = 1, σ = 0).

use anyhow::{bail, ensure, Result};
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
    /// The named kind these betas are, if any (a pretrained model's may be none).
    kind: Option<ScheduleKind>,
    betas: Vec<f64>,
    alphas_cumprod: Vec<f64>,
}

fn linspace(a: f64, b: f64, n: usize) -> impl Iterator<Item = f64> {
    (0..n).map(move |i| a + (b - a) * i as f64 / (n - 1) as f64)
}

fn cosine_alpha_bar(s: f64) -> f64 {
    ((s + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2).cos().powi(2)
}

/// `β_i = (linspace(√β_start, √β_end, T)_i)²` (latent diffusion's `scaled_linear`).
fn scaled_linear(start: f64, end: f64) -> Vec<f64> {
    linspace(start.sqrt(), end.sqrt(), T).map(|b| b * b).collect()
}

/// Nichol & Dhariwal 2021 (diffusers' `squaredcos_cap_v2`): `β_i = min(1 − ᾱ((i+1)/T)/ᾱ(i/T), 0.999)`.
fn cosine() -> Vec<f64> {
    (0..T)
        .map(|i| {
            let (s1, s2) = (i as f64 / T as f64, (i + 1) as f64 / T as f64);
            (1.0 - cosine_alpha_bar(s2) / cosine_alpha_bar(s1)).min(0.999)
        })
        .collect()
}

fn betas_of(kind: ScheduleKind) -> Vec<f64> {
    match kind {
        ScheduleKind::ScaledLinear => scaled_linear(0.00085, 0.012),
        ScheduleKind::Linear => linspace(1e-4, 0.02, T).collect(),
        ScheduleKind::Cosine => cosine(),
    }
}

/// A β sequence as a diffusers scheduler config gives it (`scheduler_config.json`).
#[derive(Clone, Debug, PartialEq)]
pub enum DiffusersBetas {
    /// `beta_schedule` with `beta_start` and `beta_end` (`squaredcos_cap_v2` ignores both, as diffusers).
    Named { schedule: String, start: f64, end: f64 },
    /// `trained_betas`: T explicit values.
    Trained(Vec<f64>),
}

impl Schedule {
    pub fn new(kind: ScheduleKind) -> Self {
        Self::with_betas(Some(kind), betas_of(kind))
    }

    /// A schedule on its own time axis: timesteps 1..=len(β) (a teacher trained with another T).
    /// Grids on it come from `Discretization::on_axis(schedule.steps(), N)`.
    pub fn on_axis(betas: Vec<f64>) -> Result<Self> {
        ensure!(!betas.is_empty(), "a schedule needs at least one β");
        if let Some((i, bad)) = betas
            .iter()
            .enumerate()
            .find(|(_, b)| !(b.is_finite() && **b > 0.0 && **b < 1.0))
        {
            bail!("β[{i}] = {bad} lies outside (0, 1)");
        }
        Ok(Self::with_betas(None, betas))
    }

    /// `ᾱ_i = Π_{j≤i}(1 − β_j)`.
    fn with_betas(kind: Option<ScheduleKind>, betas: Vec<f64>) -> Self {
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

    /// The schedule of a diffusers scheduler config (its `linear`, `scaled_linear` and
    /// `squaredcos_cap_v2` β sequences, or `trained_betas`), computed in f64; the kind is
    /// recognised when the betas are one of ours. Errors name the config key at fault.
    pub fn from_diffusers(spec: &DiffusersBetas) -> Result<Self> {
        let betas = match spec {
            DiffusersBetas::Trained(b) => {
                ensure!(b.len() == T, "trained_betas has {} values, expected T = {T}", b.len());
                if let Some((i, bad)) = b
                    .iter()
                    .enumerate()
                    .find(|(_, b)| !(b.is_finite() && **b > 0.0 && **b < 1.0))
                {
                    bail!("trained_betas[{i}] = {bad} lies outside (0, 1)");
                }
                b.clone()
            }
            DiffusersBetas::Named { schedule, start, end } => {
                let ok = |v: f64| v.is_finite() && v > 0.0 && v < 1.0;
                ensure!(
                    ok(*start) && ok(*end),
                    "beta_start {start} and beta_end {end} must lie in (0, 1)"
                );
                match schedule.as_str() {
                    "linear" => linspace(*start, *end, T).collect(),
                    "scaled_linear" => scaled_linear(*start, *end),
                    "squaredcos_cap_v2" => cosine(),
                    _ => bail!("beta_schedule '{schedule}' is not supported (expected linear, scaled_linear or squaredcos_cap_v2)"),
                }
            }
        };
        let kind = [ScheduleKind::ScaledLinear, ScheduleKind::Linear, ScheduleKind::Cosine]
            .into_iter()
            .find(|&k| betas_of(k) == betas);
        Ok(Self::with_betas(kind, betas))
    }

    /// The named kind of these betas; `None` for a pretrained model's own (e.g. `trained_betas`).
    pub fn kind(&self) -> Option<ScheduleKind> {
        self.kind
    }

    /// The length T of its time axis: timesteps 1..=T.
    pub fn steps(&self) -> usize {
        self.betas.len()
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

    /// diffusers' configs give our named schedules exactly (SD's `scaled_linear`, DDPM's
    /// `linear`, `squaredcos_cap_v2`); other ranges and trained betas are schedules of their own.
    #[test]
    fn diffusers_configs_build_schedules() {
        let named = |schedule: &str, start, end| DiffusersBetas::Named {
            schedule: schedule.into(),
            start,
            end,
        };
        let kind = |spec| Schedule::from_diffusers(&spec).unwrap().kind();
        assert_eq!(
            kind(named("scaled_linear", 0.00085, 0.012)),
            Some(ScheduleKind::ScaledLinear)
        );
        assert_eq!(kind(named("linear", 1e-4, 0.02)), Some(ScheduleKind::Linear));
        assert_eq!(kind(named("squaredcos_cap_v2", 1e-4, 0.02)), Some(ScheduleKind::Cosine));
        let other = Schedule::from_diffusers(&named("scaled_linear", 0.001, 0.02)).unwrap();
        assert_eq!(other.kind(), None);
        assert!((other.beta(T) - 0.02).abs() < 1e-12);
        let trained = Schedule::from_diffusers(&DiffusersBetas::Trained(betas_of(ScheduleKind::Linear))).unwrap();
        assert_eq!(trained.kind(), Some(ScheduleKind::Linear));
        let errors = [
            (named("sigmoid", 1e-4, 0.02), "beta_schedule 'sigmoid'"),
            (named("linear", 0.0, 0.02), "beta_start 0"),
            (named("linear", 1e-4, f64::NAN), "beta_end NaN"),
            (DiffusersBetas::Trained(vec![0.01; 10]), "trained_betas has 10 values"),
            (
                DiffusersBetas::Trained(vec![1.0; T]),
                "trained_betas[0] = 1 lies outside",
            ),
        ];
        for (spec, needle) in errors {
            let e = Schedule::from_diffusers(&spec).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
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
