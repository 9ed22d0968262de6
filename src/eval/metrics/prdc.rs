//! Precision, recall, density and coverage on k-nearest-neighbour manifolds
//! (Kynkäänniemi et al. 2019; Naeem et al. 2020), k = 5 by default.

use anyhow::{ensure, Result};
use nalgebra::DMatrix;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Prdc {
    pub precision: f64,
    pub recall: f64,
    pub density: f64,
    pub coverage: f64,
}

/// Pairwise Euclidean distances between the rows of `a` and of `b`.
fn distances(a: &DMatrix<f64>, b: &DMatrix<f64>) -> DMatrix<f64> {
    let (na, nb) = (
        a.row_iter().map(|r| r.norm_squared()).collect::<Vec<_>>(),
        b.row_iter().map(|r| r.norm_squared()).collect::<Vec<_>>(),
    );
    let g = a * b.transpose();
    DMatrix::from_fn(a.nrows(), b.nrows(), |i, j| {
        (na[i] + nb[j] - 2.0 * g[(i, j)]).max(0.0).sqrt()
    })
}

/// Distance from each row to its k-th nearest other row of the same set.
fn knn_radii(x: &DMatrix<f64>, k: usize) -> Vec<f64> {
    let d = distances(x, x);
    d.row_iter()
        .map(|r| {
            let mut v: Vec<f64> = r.iter().copied().collect();
            v.sort_by(f64::total_cmp);
            v[k] // v[0] is the point itself
        })
        .collect()
}

pub fn prdc(real: &DMatrix<f64>, fake: &DMatrix<f64>, k: usize) -> Result<Prdc> {
    ensure!(
        k >= 1 && real.nrows() > k && fake.nrows() > k,
        "precision/recall with k = {k} needs more than {k} samples per set"
    );
    ensure!(real.ncols() == fake.ncols(), "feature sets differ in width");
    let (r_real, r_fake) = (knn_radii(real, k), knn_radii(fake, k));
    let d = distances(real, fake); // real × fake
    let (n, m) = (real.nrows(), fake.nrows());
    // Strict inequalities, as dgm-eval (and Naeem et al.'s reference code).
    let inside_real = |i: usize, j: usize| d[(i, j)] < r_real[i];
    let precision = (0..m).filter(|&j| (0..n).any(|i| inside_real(i, j))).count() as f64 / m as f64;
    let recall = (0..n).filter(|&i| (0..m).any(|j| d[(i, j)] < r_fake[j])).count() as f64 / n as f64;
    let density = (0..m)
        .map(|j| (0..n).filter(|&i| inside_real(i, j)).count())
        .sum::<usize>() as f64
        / (k * m) as f64;
    let coverage = (0..n).filter(|&i| (0..m).any(|j| inside_real(i, j))).count() as f64 / n as f64;
    Ok(Prdc {
        precision,
        recall,
        density,
        coverage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(points: &[f64]) -> DMatrix<f64> {
        DMatrix::from_row_slice(points.len(), 1, points)
    }

    #[test]
    fn constructed_point_sets() {
        // Real: 0..=9 on a line; with k = 2 every radius is 1 (2 for the two ends).
        let real = line(&(0..10).map(f64::from).collect::<Vec<_>>());
        // Fake: three points on the real manifold, three far away.
        let fake = line(&[0.5, 4.0, 8.5, 100.0, 101.0, 102.0]);
        let p = prdc(&real, &fake, 2).unwrap();
        assert_eq!(p.precision, 0.5);
        // Fake radii (k = 2): 0.5→4.0: [3.5, 8.0] → r=8.0; 4.0: [3.5, 4.5] → 4.5; 8.5: [4.5, 8.0] → 8.0; far ones → 2, 1, 2.
        // Real points within a fake ball: all of 0..=9 (the 8.0 balls around 0.5 and 8.5 cover them).
        assert_eq!(p.recall, 1.0);
        // Balls are open (dgm-eval's `<`): fake 0.5 lies in the balls of reals 0 (r=2) and
        // 1 (r=1); 4.0 only in 4's (3 and 5 are exactly at distance r = 1: a tie, outside);
        // 8.5 in 8's and 9's (r=2).
        assert!(
            (p.density - (2.0 + 1.0 + 2.0) / (2.0 * 6.0)).abs() < 1e-12,
            "{}",
            p.density
        );
        // Reals whose nearest fake is strictly within their radius: 0, 1, 4, 8, 9.
        assert!((p.coverage - 0.5).abs() < 1e-12, "{}", p.coverage);
        let same = prdc(&real, &real, 2).unwrap();
        assert_eq!((same.precision, same.recall, same.coverage), (1.0, 1.0, 1.0));
    }
}
