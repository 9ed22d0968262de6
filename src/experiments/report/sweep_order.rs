//! Which method a CM-against-Direct sweep favours at each of its settings: by the means
//! over its seeds and, when the sweep has seeds to pair, by the resolved differences only
//! (the bootstrap interval, the t-interval and the sign count agree), so that no sentence
//! reads an order into a difference the seeds do not settle.

use super::finding::{leaning, verdict, Better, Verdict};
use super::sweep_report::{mean_at, settings, SWEPT};
use crate::eval::difference::Difference;
use crate::eval::records::SweepRow;

/// The settings at which each method has the lower value of a metric.
#[derive(Debug, PartialEq)]
pub struct Order {
    /// By the means over the seeds.
    pub cm: Vec<f64>,
    pub direct: Vec<f64>,
    /// By the resolved differences; `None` for a sweep with nothing to pair (one seed).
    pub resolved: Option<(Vec<f64>, Vec<f64>)>,
}

impl Order {
    /// Whether the means favour CM at some setting and Direct at another.
    pub fn means_change(&self) -> bool {
        !self.cm.is_empty() && !self.direct.is_empty()
    }

    /// Whether the resolved differences do (the means', for a sweep without pairs).
    pub fn resolved_change(&self) -> bool {
        match &self.resolved {
            Some((cm, direct)) => !cm.is_empty() && !direct.is_empty(),
            None => self.means_change(),
        }
    }
}

/// The sweep's CM − Direct difference on `metric` at (`setting`, `steps`), if it has one.
pub fn paired<'a>(diffs: &'a [(f64, Difference)], setting: f64, steps: usize, metric: &str) -> Option<&'a Difference> {
    diffs
        .iter()
        .find(|(s, d)| *s == setting && d.steps == steps && d.metric == metric)
        .map(|(_, d)| d)
}

/// Along the sweep's settings, at `steps` sampler steps, on the swept metric `SWEPT[metric]`
/// (lower is better for both).
pub fn order(rows: &[SweepRow], diffs: &[(f64, Difference)], steps: usize, metric: usize) -> Order {
    let (name, get) = SWEPT[metric];
    let mut o = Order {
        cm: Vec::new(),
        direct: Vec::new(),
        resolved: None,
    };
    for s in settings(rows) {
        let (Some(c), Some(d)) = (
            mean_at(rows, s, "CM", steps, get),
            mean_at(rows, s, "Direct", steps, get),
        ) else {
            continue;
        };
        push(&mut o.cm, &mut o.direct, leaning(c - d, Better::Lower), s);
        if let Some(diff) = paired(diffs, s, steps, name) {
            let (cm, direct) = o.resolved.get_or_insert_with(Default::default);
            push(cm, direct, verdict(diff, Better::Lower), s);
        }
    }
    o
}

fn push(cm: &mut Vec<f64>, direct: &mut Vec<f64>, v: Verdict, s: f64) {
    match v {
        Verdict::Cm => cm.push(s),
        Verdict::Direct => direct.push(s),
        Verdict::Unresolved => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::records::Metrics;

    /// One seed's row of a sweep with FD vs teacher `fd` (the other metrics zero).
    fn row(setting: f64, method: &str, seed: u64, fd: f64) -> SweepRow {
        let metrics = Metrics {
            fd_teacher: fd,
            ..Metrics::default()
        };
        SweepRow {
            setting,
            method: method.into(),
            steps: 1,
            seed,
            metrics,
        }
    }

    /// Setting 1: CM lower at every seed; setting 2: Direct lower on the mean, by one seed's
    /// outlier only, so that the seeds do not settle it.
    fn sweep() -> Vec<SweepRow> {
        let mut rows = Vec::new();
        for seed in 0..3 {
            rows.push(row(1.0, "CM", seed, 10.0 + seed as f64));
            rows.push(row(1.0, "Direct", seed, 20.0 + 2.0 * seed as f64));
            rows.push(row(2.0, "CM", seed, 30.0));
            rows.push(row(2.0, "Direct", seed, if seed == 0 { 0.0 } else { 31.0 }));
        }
        rows
    }

    #[test]
    fn an_order_change_the_seeds_do_not_settle_is_one_of_the_means_only() {
        let rows = sweep();
        let diffs = crate::experiments::report::sweep_report::sweep_differences(&rows, &[1], 0.95).unwrap();
        let o = order(&rows, &diffs, 1, 0);
        assert_eq!((o.cm.clone(), o.direct.clone()), (vec![1.0], vec![2.0]));
        assert_eq!(o.resolved, Some((vec![1.0], vec![])));
        assert!(o.means_change() && !o.resolved_change());
    }

    #[test]
    fn a_single_seed_sweep_has_only_the_means_order() {
        let rows: Vec<SweepRow> = sweep().into_iter().filter(|r| r.seed == 0).collect();
        let o = order(&rows, &[], 1, 0);
        assert_eq!(o.resolved, None);
        assert!(o.means_change() && o.resolved_change());
    }
}
