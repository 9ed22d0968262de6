//! Kernel distance (the KID estimator, Bińkowski et al. 2018): unbiased MMD² with
//! the polynomial kernel `k(x, y) = (xᵀy/d + 1)³`.

use anyhow::{ensure, Result};
use nalgebra::DMatrix;

pub fn kernel_distance(x: &DMatrix<f64>, y: &DMatrix<f64>) -> Result<f64> {
    let (m, n, d) = (x.nrows(), y.nrows(), x.ncols());
    ensure!(m >= 2 && n >= 2, "kernel distance needs at least 2 samples per set");
    ensure!(y.ncols() == d, "feature sets differ in width ({d} vs {})", y.ncols());
    let k = |g: DMatrix<f64>| g.map(|v| (v / d as f64 + 1.0).powi(3));
    let (kxx, kyy, kxy) = (k(x * x.transpose()), k(y * y.transpose()), k(x * y.transpose()));
    let off_diag = |g: &DMatrix<f64>| g.sum() - g.trace();
    Ok(
        off_diag(&kxx) / (m * (m - 1)) as f64 + off_diag(&kyy) / (n * (n - 1)) as f64
            - 2.0 * kxy.sum() / (m * n) as f64,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_distr::{Distribution, StandardNormal};

    #[test]
    fn matches_hand_computed_value() {
        // d = 1: x = {0, 1}, y = {1, 2}; k(a, b) = (ab + 1)³.
        let x = DMatrix::from_row_slice(2, 1, &[0.0, 1.0]);
        let y = DMatrix::from_row_slice(2, 1, &[1.0, 2.0]);
        let kxx = 1.0; // k(0,1)
        let kyy = 27.0; // k(1,2)
        let kxy = (1.0 + 1.0 + 8.0 + 27.0) / 4.0; // k(0,1) k(0,2) k(1,1) k(1,2)
        let want = kxx + kyy - 2.0 * kxy;
        assert!((kernel_distance(&x, &y).unwrap() - want).abs() < 1e-12);
    }

    #[test]
    fn near_zero_for_one_distribution_positive_for_two() {
        let mut rng = crate::runtime::noise::seeded(1);
        let mut draw = |shift: f64| {
            DMatrix::from_fn(1000, 8, |_, _| {
                shift + {
                    let z: f64 = StandardNormal.sample(&mut rng);
                    z
                }
            })
        };
        let (a, b, c) = (draw(0.0), draw(0.0), draw(0.5));
        let same = kernel_distance(&a, &b).unwrap();
        let diff = kernel_distance(&a, &c).unwrap();
        assert!(same.abs() < 0.02, "same distribution KD {same}");
        assert!(
            diff > 10.0 * same.abs().max(1e-3),
            "different distributions KD {diff} vs {same}"
        );
    }
}
