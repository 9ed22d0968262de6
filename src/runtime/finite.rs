//! Non-finite numbers stop where they enter: files, flags and loaded weights are
//! checked, and no command reports success with a NaN or infinite result.

use anyhow::{ensure, Result};
use candle_core::{DType, Tensor};
use std::collections::BTreeMap;

/// Errors unless every value of `t` is finite; `what` names the file, flag or result.
pub fn ensure_finite(t: &Tensor, what: &str) -> Result<()> {
    // 0·x is 0 for a finite x and NaN for ±∞ and NaN, so the sum is 0 exactly when all are finite.
    let s = t
        .to_dtype(DType::F32)?
        .affine(0.0, 0.0)?
        .sum_all()?
        .to_scalar::<f32>()?;
    ensure!(s == 0.0, "{what}: contains NaN or infinite values");
    Ok(())
}

/// `ensure_finite` for every tensor of a weights map, naming the tensor.
pub fn ensure_finite_weights(params: &BTreeMap<String, Tensor>, what: &str) -> Result<()> {
    for (name, t) in params {
        ensure_finite(t, &format!("{what}: tensor '{name}'"))?;
    }
    Ok(())
}

/// A flag's number: finite and, as all values dcm computes in are f32, at most `limit` in size.
pub fn finite_flag(value: f64, flag: &str, limit: f64) -> Result<f64> {
    let shown = if value.abs() < 1e6 {
        value.to_string()
    } else {
        format!("{value:e}")
    };
    ensure!(
        value.is_finite() && value.abs() <= limit,
        "{flag} {shown}: must be a finite number of magnitude at most {limit:e}"
    );
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn every_kind_of_non_finite_value_is_caught() {
        let ok = Tensor::new(&[1.0f32, -3e38, 0.0], &Device::Cpu).unwrap();
        assert!(ensure_finite(&ok, "x").is_ok());
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let t = Tensor::new(&[1.0f32, bad, 2.0], &Device::Cpu).unwrap();
            let e = ensure_finite(&t, "--noise a.npy").unwrap_err().to_string();
            assert_eq!(e, "--noise a.npy: contains NaN or infinite values");
        }
        let f64_overflow = Tensor::new(&[1e300f64], &Device::Cpu).unwrap();
        assert!(ensure_finite(&f64_overflow, "x").is_err(), "f64 beyond f32's range");
        assert!(finite_flag(f64::NAN, "--guidance", 1e6).is_err());
        assert!(finite_flag(1e40, "--guidance", 1e6).is_err());
        assert_eq!(finite_flag(-2.5, "--guidance", 1e6).unwrap(), -2.5);
    }
}
