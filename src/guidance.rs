//! Classifier-free guidance, Imagen form (Ho & Salimans 2022; as the reference):
//! `ε̂ = ε_u + w (ε_c − ε_u)`; w = 1 is the plain conditional prediction.

use crate::denoiser::{Denoiser, Labels};
use crate::schedule::Schedule;
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
    fn eps(&self, x: &Tensor, t: &[usize], labels: &Labels) -> Result<Tensor> {
        let conditional = labels.iter().any(Option::is_some);
        if self.w == 1.0 || !conditional {
            return self.inner.eps(x, t, labels);
        }
        // One call on [x; x] with [c; ∅] labels: a network does one batched forward.
        let b = x.dim(0)?;
        let x2 = Tensor::cat(&[x, x], 0)?;
        let t2 = [t, t].concat();
        let labels2: Vec<Option<u32>> = labels.iter().copied().chain(std::iter::repeat_n(None, b)).collect();
        let e = self.inner.eps(&x2, &t2, &labels2)?;
        let (ec, eu) = (e.narrow(0, 0, b)?, e.narrow(0, b, b)?);
        Ok((&eu + ((ec - &eu)? * self.w)?)?)
    }
}
