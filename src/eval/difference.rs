//! CM − Direct per metric and step count, paired by seed: the percentile bootstrap
//! interval, the t-interval (df = seeds − 1) and the per-seed sign count.

use crate::eval::bootstrap::{paired_interval, Interval};
use crate::eval::records::{Getter, Row, COLUMNS};
use crate::eval::sign_count::SignCount;
use crate::eval::student_t::t_interval;
use crate::eval::study::analytic_control::AnalyticRow;
use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};

/// CM − Direct at one step count for one metric, paired by seed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Difference {
    pub steps: usize,
    pub metric: String,
    pub cm: f64,
    pub direct: f64,
    /// The percentile bootstrap interval over seeds.
    pub interval: Interval,
    /// mean ± t_{(1+level)/2, seeds−1}·s/√seeds.
    pub t_interval: Interval,
    pub signs: SignCount,
    /// The confidence level of both intervals and of the sign count's test.
    pub level: f64,
}

impl Difference {
    /// `cm − direct` paired by position (seed), at `level`.
    pub fn paired(steps: usize, metric: &str, cm: &[f64], direct: &[f64], level: f64) -> Result<Self> {
        ensure!(
            cm.len() >= 2,
            "{metric} at {steps} steps: {} seeds, an interval needs 2",
            cm.len()
        );
        let d: Vec<f64> = cm.iter().zip(direct).map(|(a, b)| a - b).collect();
        Ok(Self {
            steps,
            metric: metric.to_string(),
            cm: mean(cm),
            direct: mean(direct),
            interval: paired_interval(cm, direct, level)?,
            t_interval: t_interval(&d, level)?,
            signs: SignCount::of(&d),
            level,
        })
    }

    /// The two intervals exclude 0 and enough seeds share the mean's sign: the
    /// difference's direction is resolved.
    pub fn resolved(&self) -> bool {
        self.interval.excludes_zero()
            && self.t_interval.excludes_zero()
            && self.signs.supports(self.interval.estimate, self.level)
    }
}

pub fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// The per-seed values of `get` for `method` at `steps`, in seed order.
pub fn per_seed(rows: &[Row], method: &str, steps: usize, get: Getter) -> Vec<f64> {
    let mut r: Vec<&Row> = rows.iter().filter(|r| r.method == method && r.steps == steps).collect();
    r.sort_by_key(|r| r.seed);
    r.iter().map(|r| get(&r.metrics)).collect()
}

/// Every metric's paired difference at every step count of a comparison's rows
/// (none before the comparison has run).
pub fn differences(rows: &[Row], steps: &[usize], level: f64) -> Result<Vec<Difference>> {
    let mut out = Vec::new();
    if !rows.iter().any(|r| r.method == "CM") {
        return Ok(out);
    }
    for &k in steps {
        for (name, get) in COLUMNS {
            let (cm, direct) = (per_seed(rows, "CM", k, get), per_seed(rows, "Direct", k, get));
            out.push(Difference::paired(k, name, &cm, &direct, level).with_context(|| format!("{name} at {k} steps"))?);
        }
    }
    Ok(out)
}

/// Reads one metric from a row of the analytic control.
pub type AnalyticGetter = fn(&AnalyticRow) -> f64;

/// The analytic control's metrics: FD and ODE error against the exact solution, and ODE
/// error against the teacher's N-step solve.
pub const ANALYTIC_METRICS: [(&str, AnalyticGetter); 3] = [
    ("FD vs exact samples", |r| r.fd_exact),
    ("ODE error (exact)", |r| r.exact_ode_error),
    ("ODE error (vs N-step solve)", |r| r.solver_ode_error),
];

/// The per-seed values of `get` for `method` at `steps` of the analytic control, in seed order.
pub fn analytic_per_seed(rows: &[AnalyticRow], method: &str, steps: usize, get: AnalyticGetter) -> Vec<f64> {
    let mut r: Vec<&AnalyticRow> = rows.iter().filter(|r| r.method == method && r.steps == steps).collect();
    r.sort_by_key(|r| r.seed);
    r.iter().map(|r| get(r)).collect()
}

/// The analytic control's paired differences per step count and metric.
pub fn analytic_differences(rows: &[AnalyticRow], steps: &[usize], level: f64) -> Result<Vec<Difference>> {
    let mut out = Vec::new();
    for &k in steps {
        for (name, get) in ANALYTIC_METRICS {
            let (cm, direct) = (
                analytic_per_seed(rows, "CM", k, get),
                analytic_per_seed(rows, "Direct", k, get),
            );
            out.push(Difference::paired(k, name, &cm, &direct, level)?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CM − Direct = (1, 2, 3, 4, 5): every check agrees; (−1, 2, 3, 4, 5): the bootstrap
    /// and the t-interval may still exclude 0, but 4/5 seeds cannot resolve it.
    #[test]
    fn resolved_needs_both_intervals_and_the_sign_count() {
        let direct = [0.0; 5];
        let d = Difference::paired(1, "FD vs teacher", &[1.0, 2.0, 3.0, 4.0, 5.0], &direct, 0.95).unwrap();
        assert!(d.resolved());
        assert_eq!(d.signs.text(d.interval.estimate), "5/5");
        let d = Difference::paired(1, "FD vs teacher", &[-1.0, 20.0, 30.0, 40.0, 50.0], &direct, 0.95).unwrap();
        assert!(d.interval.excludes_zero(), "{:?}", d.interval);
        assert!(!d.resolved(), "4/5 seeds");
        assert!(Difference::paired(1, "x", &[1.0], &[0.0], 0.95).is_err());
    }
}
