//! Sample-quality metrics on features (docs/MATHEMATICS.md, "Metrics of sample quality").
//! Feature sets are `n × d` float64 matrices, one row per sample.

pub mod fd;
pub mod kd;
pub mod prdc;

use anyhow::Result;
use candle_core::{DType, Tensor};
use nalgebra::DMatrix;

/// A `[n, …]` tensor as an `n × d` float64 matrix.
pub fn to_matrix(x: &Tensor) -> Result<DMatrix<f64>> {
    let n = x.dim(0)?;
    let flat = x.flatten_from(1)?.to_dtype(DType::F64)?;
    let d = flat.dim(1)?;
    Ok(DMatrix::from_row_slice(n, d, &flat.flatten_all()?.to_vec1::<f64>()?))
}
