//! Kernel distance (the KID estimator, Bińkowski et al. 2018): unbiased MMD² with
//! the polynomial kernel `k(x, y) = (xᵀy/d + 1)³`.

use anyhow::{ensure, Result};
use nalgebra::DMatrix;

pub fn kernel_distance(x: &DMatrix<f64>, y: &DMatrix<f64>) -> Result<f64> {
    let (m, n, d) = (x.nrows(), y.nrows(), x.ncols());
    ensure!(m >= 2 && n >= 2, "kernel distance needs at least 2 samples per set");
    ensure!(y.ncols() == d, "feature sets differ in width ({d} vs {})", y.ncols());
    let k = |v: f64| (v / d as f64 + 1.0).powi(3);
    let self_terms = |a: &DMatrix<f64>| a.row_iter().map(|r| k(r.dot(&r))).sum::<f64>();
    let (sxx, syy, sxy) = (kernel_sum(x, x, k), kernel_sum(y, y, k), kernel_sum(x, y, k));
    Ok(
        (sxx - self_terms(x)) / (m * (m - 1)) as f64 + (syy - self_terms(y)) / (n * (n - 1)) as f64
            - 2.0 * sxy / (m * n) as f64,
    )
}

/// Rows of `a` per block of the kernel sum: a block's Gram matrix against all of `b` is
/// `BLOCK × n` values (4 MB at n = 1,000), never the whole `m × n`, so paper-sized sets
/// (10,000 samples: 800 MB per Gram matrix) stay small.
const BLOCK: usize = 512;

/// `Σ_ij k(a_iᵀ b_j)` a block of rows of `a` at a time.
fn kernel_sum(a: &DMatrix<f64>, b: &DMatrix<f64>, k: impl Fn(f64) -> f64) -> f64 {
    let bt = b.transpose();
    (0..a.nrows())
        .step_by(BLOCK)
        .map(|start| {
            let rows = a.rows(start, BLOCK.min(a.nrows() - start));
            (rows * &bt).iter().map(|&v| k(v)).sum::<f64>()
        })
        .sum()
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

    /// Sets larger than a block give the value of the whole-matrix formula.
    #[test]
    fn blocks_equal_the_whole_gram_matrices() {
        let mut rng = crate::runtime::noise::seeded(4);
        let mut draw = |rows: usize| DMatrix::from_fn(rows, 5, |_, _| StandardNormal.sample(&mut rng));
        let (x, y) = (draw(2 * BLOCK + 7), draw(BLOCK + 1));
        let (m, n) = (x.nrows() as f64, y.nrows() as f64);
        let k = |g: DMatrix<f64>| g.map(|v| (v / 5.0 + 1.0).powi(3));
        let (kxx, kyy, kxy) = (k(&x * x.transpose()), k(&y * y.transpose()), k(&x * y.transpose()));
        let want = (kxx.sum() - kxx.trace()) / (m * (m - 1.0)) + (kyy.sum() - kyy.trace()) / (n * (n - 1.0))
            - 2.0 * kxy.sum() / (m * n);
        let got = kernel_distance(&x, &y).unwrap();
        assert!((got - want).abs() <= 1e-9 * want.abs().max(1.0), "{got} vs {want}");
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
