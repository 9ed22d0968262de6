//! Fréchet distance between Gaussians fitted to two feature sets (Heusel et al. 2017):
//! `‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁^½ Σ₂ Σ₁^½)^½`. Both square roots come
//! from symmetric eigendecompositions (negative round-off eigenvalues clamped to 0),
//! which stays stable where a general `sqrtm(Σ₁ Σ₂)` does not.

use anyhow::{ensure, Result};
use nalgebra::{DMatrix, DVector, SymmetricEigen};

/// Mean and unbiased covariance of the rows.
pub fn gaussian_fit(x: &DMatrix<f64>) -> Result<(DVector<f64>, DMatrix<f64>)> {
    let n = x.nrows();
    ensure!(n >= 2, "a Gaussian fit needs at least 2 samples, got {n}");
    let mean = x.row_mean().transpose();
    let centred = DMatrix::from_fn(n, x.ncols(), |i, j| x[(i, j)] - mean[j]);
    Ok((mean, centred.transpose() * &centred / (n - 1) as f64))
}

fn psd_sqrt(a: &DMatrix<f64>) -> DMatrix<f64> {
    let eig = SymmetricEigen::new((a + a.transpose()) * 0.5);
    let roots = eig.eigenvalues.map(|l| l.max(0.0).sqrt());
    &eig.eigenvectors * DMatrix::from_diagonal(&roots) * eig.eigenvectors.transpose()
}

pub fn frechet_distance_of_stats(mu1: &DVector<f64>, s1: &DMatrix<f64>, mu2: &DVector<f64>, s2: &DMatrix<f64>) -> f64 {
    let r1 = psd_sqrt(s1);
    let m = &r1 * s2 * &r1;
    let cross: f64 = SymmetricEigen::new((&m + m.transpose()) * 0.5)
        .eigenvalues
        .iter()
        .map(|l| l.max(0.0).sqrt())
        .sum();
    ((mu1 - mu2).norm_squared() + s1.trace() + s2.trace() - 2.0 * cross).max(0.0)
}

pub fn frechet_distance(a: &DMatrix<f64>, b: &DMatrix<f64>) -> Result<f64> {
    ensure!(
        a.ncols() == b.ncols(),
        "feature sets differ in width ({} vs {})",
        a.ncols(),
        b.ncols()
    );
    let (m1, s1) = gaussian_fit(a)?;
    let (m2, s2) = gaussian_fit(b)?;
    Ok(frechet_distance_of_stats(&m1, &s1, &m2, &s2))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_distr::{Distribution, StandardNormal};

    #[test]
    fn non_commuting_2x2_matches_closed_form() {
        // For 2×2 PSD M: tr √M = √(tr M + 2√det M).
        let s1 = DMatrix::from_row_slice(2, 2, &[2.0, 0.7, 0.7, 1.0]);
        let s2 = DMatrix::from_row_slice(2, 2, &[0.5, -0.3, -0.3, 1.5]);
        let (mu1, mu2) = (DVector::from_vec(vec![1.0, -1.0]), DVector::from_vec(vec![0.0, 0.5]));
        let m: DMatrix<f64> = &s1 * &s2;
        let tr_sqrt: f64 = (m.trace() + 2.0 * m.determinant().sqrt()).sqrt();
        let want = (&mu1 - &mu2).norm_squared() + s1.trace() + s2.trace() - 2.0 * tr_sqrt;
        let got = frechet_distance_of_stats(&mu1, &s1, &mu2, &s2);
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    }

    #[test]
    fn known_gaussians_and_self_distance() {
        let mut rng = crate::runtime::noise::seeded(0);
        let (n, d) = (20_000, 4);
        let mut draw = |mean: f64, std: f64| {
            DMatrix::from_fn(n, d, |_, _| {
                mean + std * {
                    let z: f64 = StandardNormal.sample(&mut rng);
                    z
                }
            })
        };
        let a = draw(0.0, 1.0);
        let b = draw(0.5, 2.0);
        // Isotropic: FD = d·Δμ² + d·(σ₁ − σ₂)² = 4·0.25 + 4·1 = 5, exactly from the true statistics …
        let exact = frechet_distance_of_stats(
            &DVector::zeros(d),
            &DMatrix::identity(d, d),
            &DVector::repeat(d, 0.5),
            &(DMatrix::identity(d, d) * 4.0),
        );
        assert!((exact - 5.0).abs() < 1e-12, "FD {exact}");
        // … and within sampling error (a few %) from 20,000 samples each.
        let fd = frechet_distance(&a, &b).unwrap();
        assert!((fd - 5.0).abs() < 0.25, "FD {fd}");
        assert!(frechet_distance(&a, &a).unwrap() < 1e-9);
        // A singular covariance (rank-deficient features) must not produce NaN.
        let flat = DMatrix::from_fn(100, 3, |i, j| if j == 2 { 0.0 } else { (i * (j + 1)) as f64 });
        assert!(frechet_distance(&flat, &flat).unwrap() < 1e-6);
    }
}
