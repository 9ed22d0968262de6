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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// One update moves the shadow to `d θ⁻ + (1 − d) θ`, by hand.
    #[test]
    fn update_is_the_exponential_average() {
        let v = Var::new(&[1.0f32, -2.0, 4.0], &Device::Cpu).unwrap();
        let ema = Ema::new(0.95, std::slice::from_ref(&v)).unwrap();
        v.set(&candle_core::Tensor::new(&[3.0f32, 0.0, -4.0], &Device::Cpu).unwrap())
            .unwrap();
        ema.update(std::slice::from_ref(&v)).unwrap();
        let got = ema.shadow()[0].as_tensor().to_vec1::<f32>().unwrap();
        let want = [0.95 * 1.0 + 0.05 * 3.0, 0.95 * -2.0, 0.95 * 4.0 + 0.05 * -4.0];
        for (g, w) in got.iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-6, "{got:?} vs {want:?}");
        }
        ema.update(std::slice::from_ref(&v)).unwrap();
        let second = ema.shadow()[0].as_tensor().to_vec1::<f32>().unwrap()[0] as f64;
        assert!((second - (0.95 * want[0] + 0.05 * 3.0)).abs() < 1e-6);
    }
}
