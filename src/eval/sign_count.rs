//! The per-seed sign count of a paired difference: how many seeds have CM − Direct on the
//! side of the mean, and whether that many is enough — the exact two-sided sign test at the
//! report's level, or every seed when no count of so few pairs can reach that level
//! (n ≤ 5 at 95 %: even 5/5 has p = 2/2⁵ = 0.0625).

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SignCount {
    /// Pairs with a positive difference.
    pub above: usize,
    /// Pairs with a negative difference (ties are on neither side).
    pub below: usize,
    pub pairs: usize,
}

/// P(X ≥ c) for X ~ Binomial(n, ½).
fn upper_tail(c: usize, n: usize) -> f64 {
    let mut choose = 1.0;
    let mut total = 0.0;
    for i in 0..=n {
        if i >= c {
            total += choose;
        }
        choose *= (n - i) as f64 / (i + 1) as f64;
    }
    total / 2f64.powi(n as i32)
}

/// The smallest count of `n` pairs on one side that the exact two-sided sign test accepts
/// at `level`; `n` (unanimity) when none does.
pub fn needed(n: usize, level: f64) -> usize {
    (n / 2 + 1..=n)
        .find(|&c| 2.0 * upper_tail(c, n) <= 1.0 - level)
        .unwrap_or(n)
}

impl SignCount {
    pub fn of(d: &[f64]) -> Self {
        Self {
            above: d.iter().filter(|&&x| x > 0.0).count(),
            below: d.iter().filter(|&&x| x < 0.0).count(),
            pairs: d.len(),
        }
    }

    /// Pairs on the side of `estimate`'s sign (none for an estimate of 0).
    pub fn with_sign_of(&self, estimate: f64) -> usize {
        if estimate > 0.0 {
            self.above
        } else if estimate < 0.0 {
            self.below
        } else {
            0
        }
    }

    /// Enough pairs share `estimate`'s sign (see the module's rule).
    pub fn supports(&self, estimate: f64, level: f64) -> bool {
        self.pairs > 0 && self.with_sign_of(estimate) >= needed(self.pairs, level)
    }

    /// `4/5`: pairs with the sign of `estimate`, of all pairs.
    pub fn text(&self, estimate: f64) -> String {
        format!("{}/{}", self.with_sign_of(estimate), self.pairs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Binomial(n, ½) tails by hand: n = 6, 6/6 has p = 2/64 ≈ 0.031; n = 9, 8/9 has
    /// p = 2·10/512 ≈ 0.039 but 7/9 has 2·46/512 ≈ 0.18; n = 20, 15/20 has p ≈ 0.041 and
    /// 14/20 ≈ 0.115. Up to 5 pairs nothing reaches 5 %, so every pair is asked for.
    #[test]
    fn the_needed_count_is_the_exact_sign_test() {
        assert_eq!(upper_tail(5, 5), 1.0 / 32.0);
        assert_eq!(upper_tail(8, 9), 10.0 / 512.0);
        assert_eq!(needed(5, 0.95), 5);
        assert_eq!(needed(3, 0.95), 3);
        assert_eq!(needed(6, 0.95), 6);
        assert_eq!(needed(9, 0.95), 8);
        assert_eq!(needed(20, 0.95), 15);
        assert_eq!(needed(5, 0.90), 5, "5/5: p = 0.0625 ≤ 0.10");
        assert_eq!(needed(7, 0.80), 6, "6/7: p = 2·8/128 = 0.125 ≤ 0.20");
    }

    #[test]
    fn counts_follow_the_estimate_side() {
        let s = SignCount::of(&[1.0, 2.0, -0.5, 3.0, 0.0]);
        assert_eq!((s.above, s.below, s.pairs), (3, 1, 5));
        assert_eq!(s.text(1.1), "3/5");
        assert_eq!(s.text(-1.0), "1/5");
        assert!(!s.supports(1.1, 0.95));
        let all = SignCount::of(&[-1.0, -2.0, -0.5, -3.0, -0.1]);
        assert!(all.supports(-1.4, 0.95) && !all.supports(1.0, 0.95) && !all.supports(0.0, 0.95));
    }
}
