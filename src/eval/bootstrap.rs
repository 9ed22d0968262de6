//! Paired bootstrap confidence intervals for a mean difference (Efron & Tibshirani
//! 1993, ch. 13, percentile method). The pairs are seeds: each seed trains both
//! students and draws one evaluation noise, so the per-seed difference already carries
//! both training and evaluation randomness, and resampling seeds covers both.

use crate::runtime::noise::seeded;
use anyhow::{ensure, Result};
use rand::Rng as _;
use serde::{Deserialize, Serialize};

/// Up to this many resamples the bootstrap distribution is enumerated exactly (every
/// one of the nⁿ index tuples; n ≤ 7), so the interval has no Monte-Carlo error.
const EXACT_LIMIT: usize = 1_000_000;
/// Monte-Carlo resamples beyond `EXACT_LIMIT`.
const DRAWS: usize = 20_000;

/// A mean (of differences `a − b`) with an interval around it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    pub estimate: f64,
    pub low: f64,
    pub high: f64,
}

impl Interval {
    /// The interval lies entirely above or below 0.
    pub fn excludes_zero(&self) -> bool {
        self.low > 0.0 || self.high < 0.0
    }
}

/// The `level` (e.g. 0.95) percentile interval of mean(a − b) over paired rows.
pub fn paired_interval(a: &[f64], b: &[f64], level: f64) -> Result<Interval> {
    ensure!(
        a.len() == b.len(),
        "paired samples differ in length: {} vs {}",
        a.len(),
        b.len()
    );
    ensure!(!a.is_empty(), "no pairs to bootstrap");
    ensure!(level > 0.0 && level < 1.0, "confidence level {level} is not in (0, 1)");
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let mut means = resampled_means(&d);
    means.sort_by(f64::total_cmp);
    // Lower end: the smallest value with at least (1 − level)/2 of the mass at or below
    // it; upper end: the largest with at least that much at or above it.
    let tail = (((1.0 - level) / 2.0) * means.len() as f64 - 1e-9).ceil().max(1.0) as usize;
    Ok(Interval {
        estimate: d.iter().sum::<f64>() / d.len() as f64,
        low: means[tail - 1],
        high: means[means.len() - tail],
    })
}

/// The bootstrap distribution of the mean of `d`: exact when nⁿ ≤ `EXACT_LIMIT`.
fn resampled_means(d: &[f64]) -> Vec<f64> {
    let n = d.len();
    let total = (0..n).try_fold(1usize, |acc, _| acc.checked_mul(n).filter(|&v| v <= EXACT_LIMIT));
    match total {
        Some(total) => {
            let mut idx = vec![0usize; n];
            (0..total)
                .map(|_| {
                    let mean = idx.iter().map(|&i| d[i]).sum::<f64>() / n as f64;
                    // Odometer over all index tuples.
                    for digit in idx.iter_mut() {
                        *digit += 1;
                        if *digit < n {
                            break;
                        }
                        *digit = 0;
                    }
                    mean
                })
                .collect()
        }
        None => {
            let mut rng = seeded(0xb007);
            (0..DRAWS)
                .map(|_| (0..n).map(|_| d[rng.random_range(0..n)]).sum::<f64>() / n as f64)
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// d = (0, 0, 0, 4): the resampled mean is the number J of picks of the 4, J ~ Bin(4, ¼):
    /// P(J ≥ 3) = 13/256 ≥ 2.5 % > P(J = 4) = 1/256, P(J = 0) = 81/256, so the 95 %
    /// interval is [0, 3]; at 80 % the upper end is 2 (P(J ≥ 2) = 67/256, P(J ≥ 3) < 10 %).
    #[test]
    fn exact_enumeration_matches_the_binomial_by_hand() {
        let a = [1.0, 2.0, 3.0, 9.0];
        let b = [1.0, 2.0, 3.0, 5.0];
        let ci = paired_interval(&a, &b, 0.95).unwrap();
        assert_eq!((ci.estimate, ci.low, ci.high), (1.0, 0.0, 3.0));
        assert!(!ci.excludes_zero());
        let ci80 = paired_interval(&a, &b, 0.80).unwrap();
        assert_eq!((ci80.low, ci80.high), (0.0, 2.0));
    }

    /// Many pairs: the percentile interval approaches the normal one,
    /// mean ± 1.96 s/√n (s with divisor n, the bootstrap's own variance).
    #[test]
    fn large_samples_give_the_normal_interval() {
        let n = 400;
        // A deterministic, skew-free spread: the quantiles of a uniform on [−1, 3].
        let d: Vec<f64> = (0..n).map(|i| -1.0 + 4.0 * (i as f64 + 0.5) / n as f64).collect();
        let zeros = vec![0.0; n];
        let ci = paired_interval(&d, &zeros, 0.95).unwrap();
        let mean = 1.0;
        let sd = (d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64).sqrt();
        let half = 1.959964 * sd / (n as f64).sqrt();
        assert!((ci.estimate - mean).abs() < 1e-12);
        assert!((ci.low - (mean - half)).abs() < 0.05 * half, "{ci:?} vs ±{half}");
        assert!((ci.high - (mean + half)).abs() < 0.05 * half, "{ci:?} vs ±{half}");
        assert!(ci.excludes_zero());
    }

    #[test]
    fn mismatched_or_empty_samples_are_refused() {
        assert!(paired_interval(&[1.0], &[1.0, 2.0], 0.95).is_err());
        assert!(paired_interval(&[], &[], 0.95).is_err());
        assert!(paired_interval(&[1.0], &[0.0], 1.0).is_err());
    }
}
