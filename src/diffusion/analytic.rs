//! Analytic teachers: data distributions whose optimal denoiser and (for the
//! Gaussian) probability-flow ODE solution are known in closed form (docs/MATHEMATICS.md,
//! "Analytic oracles").

use crate::data::toy::Components;
use crate::data::Dataset;
use crate::diffusion::condition::Condition;
use crate::diffusion::denoiser::{per_row_of, Denoiser};
use crate::diffusion::schedule::Schedule;
use crate::runtime::noise::Rng;
use anyhow::{bail, ensure, Result};
use candle_core::Tensor;

/// Isotropic Gaussian data `N(μ·1, s² I)` of any dimension.
#[derive(Clone, Debug)]
pub struct Gaussian {
    pub mean: f64,
    pub std: f64,
    /// Per-sample shape when fixed by the spec (`dim=D`); otherwise any shape is accepted.
    pub dim: Option<usize>,
    pub schedule: Schedule,
}

impl Gaussian {
    fn variance_at(&self, t: usize) -> f64 {
        let (a, s) = (self.schedule.alpha(t), self.schedule.sigma(t));
        a * a * self.std * self.std + s * s
    }

    /// `(x_t − α_t μ) · gain(t)`, row by row: both closed forms have this shape.
    fn centred_scaled(&self, x: &Tensor, t: &[usize], gain: impl Fn(usize) -> f64) -> Result<Tensor> {
        let alpha_mu = per_row_of(t, |t| self.schedule.alpha(t) * self.mean, x)?;
        Ok(x.broadcast_sub(&alpha_mu)?.broadcast_mul(&per_row_of(t, gain, x)?)?)
    }

    /// Exact PF-ODE solution from `x_t` to clean: `x₀ = μ + s (x_t − α_t μ)/√(α_t² s² + σ_t²)`.
    pub fn exact_solution(&self, x: &Tensor, t: &[usize]) -> Result<Tensor> {
        Ok((self.centred_scaled(x, t, |t| self.std / self.variance_at(t).sqrt())? + self.mean)?)
    }

    fn check_shape(&self, x: &Tensor) -> Result<()> {
        if let Some(d) = self.dim {
            let got = x.elem_count() / x.dim(0)?;
            ensure!(
                got == d,
                "gaussian teacher has dim={d} but the input has {got} values per sample"
            );
        }
        Ok(())
    }
}

impl Denoiser for Gaussian {
    fn schedule(&self) -> &Schedule {
        &self.schedule
    }
    fn num_classes(&self) -> usize {
        0
    }
    /// `E[ε | x_t] = σ_t (x_t − α_t μ)/(α_t² s² + σ_t²)`.
    fn eps(&self, x: &Tensor, t: &[usize], _cond: &Condition) -> Result<Tensor> {
        self.check_shape(x)?;
        self.centred_scaled(x, t, |t| self.schedule.sigma(t) / self.variance_at(t))
    }
}

/// A mixture of isotropic Gaussians `Σ_k w_k N(μ_k, s_k² I)`; component k is class k,
/// so conditioning on a label gives that component's own Gaussian denoiser.
#[derive(Clone, Debug)]
pub struct GaussianMixture {
    pub components: Components,
    pub schedule: Schedule,
}

impl GaussianMixture {
    pub fn new(means: Vec<Vec<f64>>, stds: Vec<f64>, weights: Vec<f64>, schedule: Schedule) -> Result<Self> {
        Ok(Self {
            components: Components::new(means, stds, weights)?,
            schedule,
        })
    }

    pub fn dim(&self) -> usize {
        self.components.dim()
    }

    /// Draws `n` points with their component as class label.
    pub fn sample(&self, n: usize, rng: &mut Rng) -> Result<Dataset> {
        self.components.sample(n, rng)
    }

    /// Posterior ε for one row: `σ Σ_k r_k (x − α μ_k)/(α² s_k² + σ²)`, responsibilities `r_k`.
    fn eps_row(&self, x: &[f32], t: usize, label: Option<u32>, out: &mut Vec<f32>) {
        let (a, s) = (self.schedule.alpha(t), self.schedule.sigma(t));
        let d = x.len() as f64;
        let var: Vec<f64> = self.components.stds.iter().map(|sk| a * a * sk * sk + s * s).collect();
        let dist2 = |k: usize| -> f64 {
            x.iter()
                .zip(&self.components.means[k])
                .map(|(&xi, m)| (xi as f64 - a * m).powi(2))
                .sum()
        };
        let mut r: Vec<f64> = match label {
            Some(c) => (0..self.components.means.len())
                .map(|k| if k == c as usize { 0.0 } else { f64::NEG_INFINITY })
                .collect(),
            None => (0..self.components.means.len())
                .map(|k| self.components.weights[k].ln() - 0.5 * d * var[k].ln() - dist2(k) / (2.0 * var[k]))
                .collect(),
        };
        let max = r.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        r.iter_mut().for_each(|v| *v = (*v - max).exp());
        let z: f64 = r.iter().sum();
        for (i, &xi) in x.iter().enumerate() {
            let e: f64 = (0..self.components.means.len())
                .map(|k| r[k] / z * (xi as f64 - a * self.components.means[k][i]) / var[k])
                .sum();
            out.push((s * e) as f32);
        }
    }
}

impl Denoiser for GaussianMixture {
    fn schedule(&self) -> &Schedule {
        &self.schedule
    }
    fn num_classes(&self) -> usize {
        self.components.means.len()
    }
    fn eps(&self, x: &Tensor, t: &[usize], cond: &Condition) -> Result<Tensor> {
        let (b, d) = (x.dim(0)?, x.elem_count() / x.dim(0)?);
        ensure!(
            d == self.dim(),
            "mixture teacher has dimension {} but the input has {d} values per sample",
            self.dim()
        );
        let labels = cond.labels()?;
        if let Some(c) = labels
            .iter()
            .flatten()
            .find(|&&c| c as usize >= self.components.means.len())
        {
            bail!(
                "class {c} is out of range for a mixture with {} components",
                self.components.means.len()
            );
        }
        let rows = x.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
        let mut out = Vec::with_capacity(rows.len());
        for (i, row) in rows.chunks(d).enumerate() {
            self.eps_row(row, t[i], labels[i], &mut out);
        }
        debug_assert_eq!(out.len(), b * d);
        Ok(Tensor::from_vec(out, x.shape(), x.device())?.to_dtype(x.dtype())?)
    }
}
