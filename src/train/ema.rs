//! Exponential moving average of parameters, `θ⁻ ← d θ⁻ + (1 − d) θ`
//! (the target network of the original consistency models).

use crate::nets::layers::Params;
use anyhow::Result;
use candle_core::Var;

pub struct Ema {
    decay: f64,
    shadow: Vec<Var>,
}

impl Ema {
    pub fn new(decay: f64, vars: &[Var]) -> Result<Self> {
        let shadow = vars
            .iter()
            .map(|v| Var::from_tensor(&v.as_tensor().copy()?))
            .collect::<candle_core::Result<_>>()?;
        Ok(Self { decay, shadow })
    }

    pub fn update(&self, vars: &[Var]) -> Result<()> {
        for (s, v) in self.shadow.iter().zip(vars) {
            s.set(&((s.as_tensor() * self.decay)? + (v.as_tensor() * (1.0 - self.decay))?)?)?;
        }
        Ok(())
    }

    pub fn shadow(&self) -> &[Var] {
        &self.shadow
    }

    /// The averaged weights as plain tensors (no gradient graph), updated in place by `update`.
    pub fn params(&self, names: &[String]) -> Params {
        names
            .iter()
            .cloned()
            .zip(self.shadow.iter().map(|s| s.as_tensor().detach()))
            .collect()
    }
}
