//! The target-horizon family read pair by pair: each horizon against the next one up, on
//! FD vs teacher and ODE error, paired by seed, so that every step along the family and
//! every disagreement between neighbouring horizons carries its intervals and sign count.

use super::finding::{difference_cells, num};
use super::sweep_report::{per_seed_at, seeds, settings, shown, SWEPT};
use crate::eval::difference::Difference;
use crate::eval::records::SweepRow;
use anyhow::Result;
use serde::Serialize;
use std::fmt::Write as _;

/// `later − earlier` between neighbouring horizons at one sampler step count; the
/// difference's `cm` holds the mean at `later` and its `direct` the mean at `earlier`.
#[derive(Clone, Debug, Serialize)]
pub struct HorizonStep {
    pub earlier: f64,
    pub later: f64,
    pub difference: Difference,
}

/// The name the sweep's rows give horizon `k` (`CM`, `k = 5`, `Direct`).
fn method_at(rows: &[SweepRow], k: f64) -> Option<&str> {
    rows.iter().find(|r| r.setting == k).map(|r| r.method.as_str())
}

/// Every neighbouring pair at every step count on both swept metrics (none with fewer
/// than 2 seeds: nothing to pair).
pub fn horizon_steps(rows: &[SweepRow], steps: &[usize], level: f64) -> Result<Vec<HorizonStep>> {
    let mut out = Vec::new();
    if seeds(rows) < 2 {
        return Ok(out);
    }
    for pair in settings(rows).windows(2) {
        let (Some(m0), Some(m1)) = (method_at(rows, pair[0]), method_at(rows, pair[1])) else {
            continue;
        };
        for &k in steps {
            for (name, get) in SWEPT {
                let (later, earlier) = (
                    per_seed_at(rows, pair[1], m1, k, get),
                    per_seed_at(rows, pair[0], m0, k, get),
                );
                if later.len() >= 2 && later.len() == earlier.len() {
                    out.push(HorizonStep {
                        earlier: pair[0],
                        later: pair[1],
                        difference: Difference::paired(k, name, &later, &earlier, level)?,
                    });
                }
            }
        }
    }
    Ok(out)
}

/// The pair starting at `earlier`, at `steps`, on `metric`.
pub fn horizon_step<'a>(all: &'a [HorizonStep], earlier: f64, steps: usize, metric: &str) -> Option<&'a HorizonStep> {
    all.iter()
        .find(|h| h.earlier == earlier && h.difference.steps == steps && h.difference.metric == metric)
}

/// The horizon a resolved pair finds lower (`k = 10`), or `not resolved`.
pub fn lower_text(h: &HorizonStep) -> String {
    let d = &h.difference;
    match (d.resolved(), d.interval.estimate < 0.0) {
        (false, _) => "not resolved".into(),
        (true, true) => format!("k = {}", shown(h.later)),
        (true, false) => format!("k = {}", shown(h.earlier)),
    }
}

/// The table of every neighbouring pair (empty without seeds to pair).
pub fn horizon_step_table(all: &[HorizonStep]) -> String {
    if all.is_empty() {
        return String::new();
    }
    let mut s = String::from(
        "\nEach horizon against the next one up, paired by seed:\n\n| k → k′ | steps | metric | at k | at k′ | k′ − k | bootstrap | t-interval | seeds with its sign | lower |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for h in all {
        let d = &h.difference;
        let _ = writeln!(
            s,
            "| {} → {} | {} | {} | {} | {} | {} | {} |",
            shown(h.earlier),
            shown(h.later),
            d.steps,
            d.metric,
            num(d.direct),
            num(d.cm),
            difference_cells(d),
            lower_text(h)
        );
    }
    s
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::eval::records::Metrics;

    fn row(k: f64, seed: u64, fd: f64) -> SweepRow {
        let method = if k == 1.0 { "CM".to_string() } else { format!("k = {k}") };
        SweepRow {
            setting: k,
            method,
            steps: 1,
            seed,
            metrics: Metrics {
                fd_teacher: fd,
                ..Metrics::default()
            },
        }
    }

    /// Three seeds of horizons 1, 2, 5 at one sampler step: k = 1 → 2 lowers FD at every
    /// seed; 2 → 5 raises it on the mean by one seed only.
    pub fn family() -> Vec<SweepRow> {
        let mut rows = Vec::new();
        for seed in 0..3 {
            let s = seed as f64;
            rows.push(row(1.0, seed, 100.0 + s));
            rows.push(row(2.0, seed, 50.0 + 2.0 * s));
            rows.push(row(5.0, seed, if seed == 0 { 90.0 } else { 49.0 + 2.0 * s }));
        }
        rows
    }

    #[test]
    fn neighbouring_horizons_are_paired_by_seed_and_judged() {
        let rows = family();
        let all = horizon_steps(&rows, &[1], 0.95).unwrap();
        let fd = |earlier| horizon_step(&all, earlier, 1, "FD vs teacher").unwrap();
        assert_eq!(fd(1.0).difference.interval.estimate, -49.0);
        assert_eq!(lower_text(fd(1.0)), "k = 2");
        assert!(fd(2.0).difference.interval.estimate > 0.0);
        assert_eq!(lower_text(fd(2.0)), "not resolved");
        let single: Vec<SweepRow> = rows.into_iter().filter(|r| r.seed == 0).collect();
        assert!(horizon_steps(&single, &[1], 0.95).unwrap().is_empty());
    }
}
