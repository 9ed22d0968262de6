//! CM − Direct per metric and step count, paired by seed, with its bootstrap interval.

use crate::eval::bootstrap::{paired_interval, Interval};
use crate::eval::records::{Getter, Row, COLUMNS};
use crate::eval::study::analytic_control::AnalyticRow;
use anyhow::{Context, Result};
use serde::Serialize;

/// CM − Direct at one step count for one metric, paired by seed.
#[derive(Clone, Debug, Serialize)]
pub struct Difference {
    pub steps: usize,
    pub metric: String,
    pub cm: f64,
    pub direct: f64,
    pub interval: Interval,
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

/// Every metric's paired interval at every step count of a comparison's rows
/// (none before the comparison has run).
pub fn differences(rows: &[Row], steps: &[usize], level: f64) -> Result<Vec<Difference>> {
    let mut out = Vec::new();
    if rows.is_empty() {
        return Ok(out);
    }
    for &k in steps {
        for (name, get) in COLUMNS {
            let (cm, direct) = (per_seed(rows, "CM", k, get), per_seed(rows, "Direct", k, get));
            out.push(Difference {
                steps: k,
                metric: name.to_string(),
                cm: mean(&cm),
                direct: mean(&direct),
                interval: paired_interval(&cm, &direct, level).with_context(|| format!("{name} at {k} steps"))?,
            });
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

/// The analytic control's paired intervals per step count and metric.
pub fn analytic_differences(rows: &[AnalyticRow], steps: &[usize], level: f64) -> Result<Vec<Difference>> {
    let mut out = Vec::new();
    for &k in steps {
        for (name, get) in ANALYTIC_METRICS {
            let (cm, direct) = (
                analytic_per_seed(rows, "CM", k, get),
                analytic_per_seed(rows, "Direct", k, get),
            );
            out.push(Difference {
                steps: k,
                metric: name.to_string(),
                cm: mean(&cm),
                direct: mean(&direct),
                interval: paired_interval(&cm, &direct, level)?,
            });
        }
    }
    Ok(out)
}
