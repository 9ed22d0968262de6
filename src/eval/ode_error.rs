//! ODE solving error (the paper's "latent MSE"): mean squared error between a
//! sampler's output and the teacher's N-interval solution from the same x_T.

use anyhow::{ensure, Result};
use candle_core::{DType, Tensor};

pub fn ode_error(sample: &Tensor, reference: &Tensor) -> Result<f64> {
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
        .mean_all()?
        .to_scalar::<f64>()?)
}
