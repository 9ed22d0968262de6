//! Student's t distribution with an integer number of degrees of freedom — its quantile and
//! the t-interval of a mean — and the standard normal quantile, its limit as df → ∞.
//!
//! For integer ν the two-sided probability A(t|ν) = P(|T| ≤ t) is a finite trigonometric sum
//! in θ = atan(t/√ν) (Abramowitz & Stegun 26.7.3–4), exact to rounding, so the quantile is a
//! bisection on θ with no special function and no series truncation.

use crate::eval::bootstrap::Interval;
use anyhow::{ensure, Result};
use std::f64::consts::{FRAC_PI_2, PI};

/// A(t|ν) = P(|T| ≤ √ν·tan θ) for θ in [0, π/2].
fn two_sided(theta: f64, df: usize) -> f64 {
    let (s, c) = theta.sin_cos();
    // Odd ν: (2/π)(θ + sin θ·Σ); even ν: sin θ·Σ. Each term is the last times
    // cos²θ·(j − 1)/j, j running over odd (odd ν) or even (even ν) values up to ν − 2.
    let (first, start) = if df % 2 == 1 { (c, 3) } else { (1.0, 2) };
    let mut term = first;
    let mut sum = if df == 1 { 0.0 } else { first };
    for j in (start..=df.saturating_sub(2)).step_by(2) {
        term *= c * c * (j - 1) as f64 / j as f64;
        sum += term;
    }
    if df % 2 == 1 {
        2.0 / PI * (theta + s * sum)
    } else {
        s * sum
    }
}

/// The `p`-quantile of Student's t with `df` degrees of freedom.
pub fn t_quantile(p: f64, df: usize) -> Result<f64> {
    ensure!(p > 0.0 && p < 1.0, "t quantile: probability {p} is not in (0, 1)");
    ensure!(df >= 1, "t quantile: needs at least 1 degree of freedom");
    let target = (2.0 * p - 1.0).abs();
    if target == 0.0 {
        return Ok(0.0);
    }
    let (mut lo, mut hi) = (0.0, FRAC_PI_2);
    // A is increasing in θ; 200 halvings pass f64's resolution on [0, π/2].
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if two_sided(mid, df) < target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let t = (df as f64).sqrt() * (0.5 * (lo + hi)).tan();
    Ok(if p < 0.5 { -t } else { t })
}

/// Φ(x) = ½ + φ(x)·Σₙ x^{2n+1}/(1·3···(2n+1)): every term has x's sign, so the sum has no
/// cancellation; beyond |x| = 10 the tail is below f64's resolution of 1.
fn normal_cdf(x: f64) -> f64 {
    if x.abs() > 10.0 {
        return if x > 0.0 { 1.0 } else { 0.0 };
    }
    let (mut term, mut sum, mut n) = (x, x, 1.0);
    while term.abs() > 1e-17 * sum.abs() {
        n += 2.0;
        term *= x * x / n;
        sum += term;
    }
    0.5 + (-0.5 * x * x).exp() / (2.0 * PI).sqrt() * sum
}

/// The `p`-quantile of the standard normal.
pub fn normal_quantile(p: f64) -> Result<f64> {
    ensure!(p > 0.0 && p < 1.0, "normal quantile: probability {p} is not in (0, 1)");
    let (mut lo, mut hi) = (-10.0, 10.0);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if normal_cdf(mid) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(0.5 * (lo + hi))
}

/// The `level` t-interval of the mean of `d`: mean ± t_{(1+level)/2, n−1}·s/√n, s the
/// sample standard deviation (divisor n − 1).
pub fn t_interval(d: &[f64], level: f64) -> Result<Interval> {
    ensure!(d.len() >= 2, "a t-interval needs at least 2 values, got {}", d.len());
    ensure!(level > 0.0 && level < 1.0, "confidence level {level} is not in (0, 1)");
    let n = d.len() as f64;
    let mean = d.iter().sum::<f64>() / n;
    let s = (d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
    let half = t_quantile((1.0 + level) / 2.0, d.len() - 1)? * s / n.sqrt();
    Ok(Interval {
        estimate: mean,
        low: mean - half,
        high: mean + half,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fisher & Yates' table (and R's qt to the digits shown): two-sided 95 %, 90 % and
    /// 99 % points at small and large df, odd and even.
    #[test]
    fn quantiles_match_the_tables() {
        let table = [
            (0.975, 1, 12.706_204_736),
            (0.975, 2, 4.302_652_730),
            (0.975, 3, 3.182_446_305),
            (0.975, 4, 2.776_445_105),
            (0.975, 9, 2.262_157_163),
            (0.975, 30, 2.042_272_456),
            (0.975, 100, 1.983_971_519),
            (0.95, 4, 2.131_846_786),
            (0.995, 4, 4.604_094_871),
            (0.995, 7, 3.499_483_297),
        ];
        for (p, df, want) in table {
            let got = t_quantile(p, df).unwrap();
            assert!((got - want).abs() < 1e-8 * want, "t({p}, {df}) = {got}, table {want}");
            assert_eq!(t_quantile(1.0 - p, df).unwrap(), -got, "symmetric");
        }
        assert_eq!(t_quantile(0.5, 4).unwrap(), 0.0);
    }

    /// Closed forms: ν = 1 is Cauchy, t = tan(π(p − ½)); ν = 2 has t = (2p − 1)/√(2p(1 − p)).
    #[test]
    fn one_and_two_degrees_have_closed_forms() {
        for p in [0.6, 0.9, 0.975, 0.999] {
            let cauchy = (PI * (p - 0.5)).tan();
            assert!(
                (t_quantile(p, 1).unwrap() - cauchy).abs() < 1e-9 * cauchy,
                "ν = 1, p = {p}"
            );
            let two = (2.0 * p - 1.0) / (2.0 * p * (1.0 - p)).sqrt();
            assert!((t_quantile(p, 2).unwrap() - two).abs() < 1e-9 * two, "ν = 2, p = {p}");
        }
    }

    #[test]
    fn normal_quantiles_match_the_tables_and_bound_the_t() {
        for (p, want) in [(0.975, 1.959_963_985), (0.995, 2.575_829_304), (0.841_344_746, 1.0)] {
            assert!((normal_quantile(p).unwrap() - want).abs() < 1e-8, "Φ⁻¹({p})");
        }
        // t(0.975, 10⁴) = 1.960201: above the normal's, by under 10⁻³.
        let (z, t) = (normal_quantile(0.975).unwrap(), t_quantile(0.975, 10_000).unwrap());
        assert!(t > z && t - z < 1e-3, "{t} vs {z}");
    }

    /// d = (1, 2, 3, 4, 5): mean 3, s = √2.5, so the 95 % interval is 3 ± 2.776445·√2.5/√5.
    #[test]
    fn the_interval_is_mean_plus_minus_t_standard_errors() {
        let ci = t_interval(&[1.0, 2.0, 3.0, 4.0, 5.0], 0.95).unwrap();
        let half = 2.776_445_105 * (2.5f64 / 5.0).sqrt();
        assert_eq!(ci.estimate, 3.0);
        assert!(
            (ci.low - (3.0 - half)).abs() < 1e-8 && (ci.high - (3.0 + half)).abs() < 1e-8,
            "{ci:?}"
        );
        assert!(t_interval(&[1.0], 0.95).is_err() && t_interval(&[1.0, 2.0], 1.0).is_err());
        assert!(t_quantile(0.0, 3).is_err() && t_quantile(0.5, 0).is_err());
    }
}
