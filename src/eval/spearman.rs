//! Spearman's rank correlation: Pearson's correlation of the ranks, ties given their
//! average rank (so it measures whether two quantities order the same models alike).

use crate::eval::bootstrap::Interval;
use crate::eval::student_t::normal_quantile;
use anyhow::{ensure, Result};

/// Ranks from 1, ties averaged.
fn ranks(v: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && v[order[j + 1]] == v[order[i]] {
            j += 1;
        }
        let average = (i + j) as f64 / 2.0 + 1.0;
        for &o in &order[i..=j] {
            r[o] = average;
        }
        i = j + 1;
    }
    r
}

pub fn spearman(x: &[f64], y: &[f64]) -> Result<f64> {
    ensure!(
        x.len() == y.len(),
        "rank correlation of {} and {} values",
        x.len(),
        y.len()
    );
    ensure!(x.len() >= 2, "rank correlation needs at least 2 points");
    ensure!(
        x.iter().chain(y).all(|v| v.is_finite()),
        "rank correlation of non-finite values"
    );
    let (rx, ry) = (ranks(x), ranks(y));
    let mean = (x.len() as f64 + 1.0) / 2.0;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in rx.iter().zip(&ry) {
        sxy += (a - mean) * (b - mean);
        sxx += (a - mean).powi(2);
        syy += (b - mean).powi(2);
    }
    ensure!(sxx > 0.0 && syy > 0.0, "rank correlation of a constant");
    Ok(sxy / (sxx * syy).sqrt())
}

/// The `level` interval of a Spearman ρ from `n` independent pairs by Fisher's z:
/// atanh ρ is near normal with variance 1.06/(n − 3) (Fieller, Hartley & Pearson 1957);
/// None for n ≤ 3.
pub fn fisher_interval(rho: f64, n: usize, level: f64) -> Result<Option<Interval>> {
    if n <= 3 {
        return Ok(None);
    }
    let half = normal_quantile((1.0 + level) / 2.0)? * (1.06 / (n - 3) as f64).sqrt();
    let z = rho.atanh();
    Ok(Some(Interval {
        estimate: rho,
        low: (z - half).tanh(),
        high: (z + half).tanh(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ρ = 0.5 from 28 pairs: z = atanh 0.5 = 0.549306, half-width 1.959964·√(1.06/25) =
    /// 0.403581, so [tanh 0.145725, tanh 0.952887] = [0.144702, 0.741087].
    #[test]
    fn fisher_interval_by_hand() {
        let ci = fisher_interval(0.5, 28, 0.95).unwrap().unwrap();
        assert!(
            (ci.low - 0.144_702).abs() < 1e-6 && (ci.high - 0.741_087).abs() < 1e-6,
            "{ci:?}"
        );
        assert!(fisher_interval(0.5, 3, 0.95).unwrap().is_none());
    }

    /// Without ties ρ = 1 − 6 Σd²/(n(n² − 1)): ranks (1,2,3,4,5) against (2,1,4,3,5) give
    /// Σd² = 4, ρ = 1 − 24/120 = 0.8.
    #[test]
    fn matches_the_textbook_formula() {
        let x = [0.1, 0.5, 0.7, 2.0, 9.0];
        let y = [20.0, 10.0, 40.0, 30.0, 50.0];
        assert!((spearman(&x, &y).unwrap() - 0.8).abs() < 1e-12);
        assert_eq!(spearman(&x, &x.map(|v| -v.exp())).unwrap(), -1.0);
    }

    /// Ties take their average rank: x ranks (1.5, 1.5, 3), y ranks (1, 2, 3);
    /// Pearson of those is 1.5/√(1.5·2) = √3/2.
    #[test]
    fn ties_take_the_average_rank() {
        let r = spearman(&[1.0, 1.0, 2.0], &[1.0, 2.0, 3.0]).unwrap();
        assert!((r - 3f64.sqrt() / 2.0).abs() < 1e-12, "{r}");
        assert!(spearman(&[1.0, 1.0], &[1.0, 2.0]).is_err());
    }
}
