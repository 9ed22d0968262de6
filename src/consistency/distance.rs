//! Distance functions d(prediction, target) of the distillation objectives.

use anyhow::{bail, Result};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Distance {
    /// Mean squared error (the reference's default).
    L2,
    /// Pseudo-Huber `√(Δ² + c²) − c`, element-wise then averaged (Song & Dhariwal 2023).
    PseudoHuber { c: f64 },
}

impl Distance {
    pub fn apply(self, pred: &Tensor, target: &Tensor) -> Result<Tensor> {
        let d2 = pred.sub(target)?.sqr()?;
        Ok(match self {
            Self::L2 => d2.mean_all()?,
            Self::PseudoHuber { c } => ((d2 + c * c)?.sqrt()? - c)?.mean_all()?,
        })
    }
}

impl std::str::FromStr for Distance {
    type Err = anyhow::Error;
    /// `l2`, `huber` (c = 0.001, the reference's) or `huber:C`.
    fn from_str(s: &str) -> Result<Self> {
        match s.split_once(':') {
            None if s == "l2" => Ok(Self::L2),
            None if s == "huber" => Ok(Self::PseudoHuber { c: 0.001 }),
            Some(("huber", c)) => match c.parse::<f64>() {
                Ok(c) if c > 0.0 && c.is_finite() => Ok(Self::PseudoHuber { c }),
                _ => bail!("huber constant '{c}' must be a positive number"),
            },
            _ => bail!("unknown loss '{s}' (expected l2, huber or huber:C)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn losses_match_their_formulas() {
        let p = Tensor::new(&[0.0f32, 1.0, -2.0, 0.5], &Device::Cpu).unwrap();
        let q = Tensor::new(&[0.0f32, 0.0, 1.0, 0.5], &Device::Cpu).unwrap();
        let l2: f32 = Distance::L2.apply(&p, &q).unwrap().to_scalar().unwrap();
        assert!((l2 - 10.0 / 4.0).abs() < 1e-6);
        let c = 0.1f64;
        let expect = [0.0f64, 1.0, 3.0, 0.0]
            .iter()
            .map(|d| (d * d + c * c).sqrt() - c)
            .sum::<f64>()
            / 4.0;
        let h: f32 = Distance::PseudoHuber { c }.apply(&p, &q).unwrap().to_scalar().unwrap();
        assert!((h as f64 - expect).abs() < 1e-6);
        assert!("huber:-1".parse::<Distance>().is_err());
        assert_eq!("huber".parse::<Distance>().unwrap(), Distance::PseudoHuber { c: 0.001 });
    }
}
