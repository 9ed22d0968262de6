//! The one interface every teacher and student network meets: an ε-prediction
//! `ε_θ(x_t, t, c)` for a batch whose rows may sit at different timesteps, conditioned
//! on a class label or a text encoding per row (`Condition`).

use crate::diffusion::condition::Condition;
use crate::diffusion::schedule::Schedule;
use anyhow::Result;
use candle_core::Tensor;

/// A class label per row; `None` is the null label (unconditional prediction).
pub trait Denoiser {
    /// The forward process this denoiser was built for.
    fn schedule(&self) -> &Schedule;

    /// Number of classes it can be conditioned on (0: unconditional only).
    fn num_classes(&self) -> usize;

    /// Predicted noise for `x` (shape `[B, …]`), timestep `t[b]` and condition row `b` per row.
    fn eps(&self, x: &Tensor, t: &[usize], cond: &Condition) -> Result<Tensor>;

    /// Classifier-free guided prediction `ε_u + w (ε_c − ε_u)` (Ho & Salimans 2022), ε_u the
    /// null-condition prediction. By default one call on `[x; x]` with conditions `[c; ∅]`; a network
    /// may share work between the halves.
    fn eps_guided(&self, x: &Tensor, t: &[usize], cond: &Condition, w: f64) -> Result<Tensor> {
        let b = x.dim(0)?;
        let x2 = Tensor::cat(&[x, x], 0)?;
        let both = Condition::cat(&[cond, &cond.null()])?;
        let e = self.eps(&x2, &[t, t].concat(), &both)?;
        let (ec, eu) = (e.narrow(0, 0, b)?, e.narrow(0, b, b)?);
        Ok((&eu + ((ec - &eu)? * w)?)?)
    }
}

/// A tensor of shape `[B, 1, …, 1]` holding `values[b]` per row, ready to broadcast against `like`.
pub fn per_row(values: &[f64], like: &Tensor) -> Result<Tensor> {
    let mut shape = vec![1usize; like.rank()];
    shape[0] = values.len();
    let v: Vec<f32> = values.iter().map(|&v| v as f32).collect();
    Ok(Tensor::from_vec(v, shape, like.device())?.to_dtype(like.dtype())?)
}

/// `per_row` of `f(t[b])` for every row's timestep.
pub fn per_row_of(t: &[usize], f: impl Fn(usize) -> f64, like: &Tensor) -> Result<Tensor> {
    per_row(&t.iter().map(|&t| f(t)).collect::<Vec<_>>(), like)
}

/// `x̂₀ = (x − σ_t ε)/α_t`, the clean estimate implied by an ε-prediction.
pub fn predict_x0(schedule: &Schedule, x: &Tensor, eps: &Tensor, t: &[usize]) -> Result<Tensor> {
    let sigma = per_row_of(t, |t| schedule.sigma(t), x)?;
    let inv_alpha = per_row_of(t, |t| 1.0 / schedule.alpha(t), x)?;
    Ok(x.sub(&eps.broadcast_mul(&sigma)?)?.broadcast_mul(&inv_alpha)?)
}

/// Counts per-sample teacher evaluations (rows passed to `eps`), for reporting work done.
pub struct Counted<'a> {
    inner: &'a dyn Denoiser,
    rows: std::cell::Cell<u64>,
}

impl<'a> Counted<'a> {
    pub fn new(inner: &'a dyn Denoiser) -> Self {
        Self {
            inner,
            rows: std::cell::Cell::new(0),
        }
    }

    pub fn evaluations(&self) -> u64 {
        self.rows.get()
    }
}

impl Denoiser for Counted<'_> {
    fn schedule(&self) -> &Schedule {
        self.inner.schedule()
    }
    fn num_classes(&self) -> usize {
        self.inner.num_classes()
    }
    fn eps(&self, x: &Tensor, t: &[usize], cond: &Condition) -> Result<Tensor> {
        self.rows.set(self.rows.get() + t.len() as u64);
        self.inner.eps(x, t, cond)
    }
}

/// Forward noising `x_t = α_t x₀ + σ_t ε`, one timestep per row.
pub fn diffuse(schedule: &Schedule, x0: &Tensor, eps: &Tensor, t: &[usize]) -> Result<Tensor> {
    let alpha = per_row_of(t, |t| schedule.alpha(t), x0)?;
    let sigma = per_row_of(t, |t| schedule.sigma(t), x0)?;
    Ok((x0.broadcast_mul(&alpha)? + eps.broadcast_mul(&sigma)?)?)
}
