//! ODE solving error (the paper's "latent MSE"): mean squared error between a
//! sampler's output and the teacher's N-interval solution from the same x_T.

use anyhow::{ensure, Result};
use candle_core::{DType, Tensor};

pub fn ode_error(sample: &Tensor, reference: &Tensor) -> Result<f64> {
    Ok(squared_error(sample, reference)? / sample.elem_count().max(1) as f64)
}

/// `Σ (sample − reference)²` over every element, in float64: the ODE error's numerator, summed
/// block by block when the samples are too many to hold at once.
pub fn squared_error(sample: &Tensor, reference: &Tensor) -> Result<f64> {
    ensure!(
        sample.shape() == reference.shape(),
        "sample shape {:?} differs from reference {:?}",
        sample.dims(),
        reference.dims()
    );
    Ok(sample
        .to_dtype(DType::F64)?
        .sub(&reference.to_dtype(DType::F64)?)?
        .sqr()?
        .sum_all()?
        .to_scalar::<f64>()?)
}
