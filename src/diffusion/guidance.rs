//! Classifier-free guidance, Imagen form (Ho & Salimans 2022; as the reference):
//! `ε̂ = ε_u + w (ε_c − ε_u)`; w = 1 is the plain conditional prediction.

use crate::diffusion::condition::Condition;
use crate::diffusion::denoiser::Denoiser;
use crate::diffusion::schedule::Schedule;
use anyhow::Result;
use candle_core::Tensor;

pub struct Guided<'a> {
    inner: &'a dyn Denoiser,
    w: f64,
}

impl<'a> Guided<'a> {
    pub fn new(inner: &'a dyn Denoiser, w: f64) -> Self {
        Self { inner, w }
    }
}

impl Denoiser for Guided<'_> {
    fn schedule(&self) -> &Schedule {
        self.inner.schedule()
    }
    fn num_classes(&self) -> usize {
        self.inner.num_classes()
    }
    fn eps(&self, x: &Tensor, t: &[usize], cond: &Condition) -> Result<Tensor> {
        if self.w == 1.0 || !cond.is_conditional() {
            return self.inner.eps(x, t, cond);
        }
        self.inner.eps_guided(x, t, cond, self.w)
    }
}
