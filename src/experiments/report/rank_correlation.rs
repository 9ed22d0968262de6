//! Spearman's ρ between ODE error and FD vs teacher over the training-length checkpoints,
//! per method and sampler step count — each seed's run ranks its own checkpoints — with
//! its interval: with one seed, Fisher's z over the checkpoints (which, being one run,
//! are not independent: the interval is descriptive); with several, the percentile
//! bootstrap of the mean ρ over seeds. The ρ pooled over methods and step counts is shown
//! beside them only: it mixes differences between methods and step counts into the ranking.

use super::finding::{bounds, num};
use super::sweep_report::{per_seed_at, settings, SWEPT};
use crate::eval::bootstrap::{paired_interval, Interval};
use crate::eval::records::SweepRow;
use crate::eval::spearman::{fisher_interval, spearman};
use anyhow::Result;
use std::collections::BTreeSet;
use std::fmt::Write as _;

/// ρ of one method at one step count.
pub struct Rank {
    pub method: String,
    pub steps: usize,
    /// ρ per seed over its checkpoints, in seed order (seeds where ρ is defined).
    pub per_seed: Vec<f64>,
    /// The mean over seeds with its interval (None when undefined).
    pub interval: Option<Interval>,
    pub checkpoints: usize,
}

/// ρ of one seed's checkpoints of `method` at `steps`.
fn seed_rho(rows: &[SweepRow], seed: u64, method: &str, steps: usize) -> Option<f64> {
    let mine: Vec<SweepRow> = rows.iter().filter(|r| r.seed == seed).cloned().collect();
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for s in settings(&mine) {
        x.extend(per_seed_at(&mine, s, method, steps, SWEPT[1].1));
        y.extend(per_seed_at(&mine, s, method, steps, SWEPT[0].1));
    }
    spearman(&x, &y).ok()
}

/// ρ per method and step count at `level`.
pub fn ranks(rows: &[SweepRow], steps: &[usize], level: f64) -> Result<Vec<Rank>> {
    let seeds: BTreeSet<u64> = rows.iter().map(|r| r.seed).collect();
    let checkpoints = settings(rows).len();
    let mut out = Vec::new();
    for method in ["CM", "Direct"] {
        for &k in steps {
            let per_seed: Vec<f64> = seeds.iter().filter_map(|&s| seed_rho(rows, s, method, k)).collect();
            let interval = match per_seed.len() {
                0 => None,
                1 => fisher_interval(per_seed[0], checkpoints, level)?,
                _ => Some(paired_interval(&per_seed, &vec![0.0; per_seed.len()], level)?),
            };
            out.push(Rank {
                method: method.to_string(),
                steps: k,
                per_seed,
                interval,
                checkpoints,
            });
        }
    }
    Ok(out)
}

/// ρ over every row (method, step count, checkpoint and seed together).
pub fn pooled(rows: &[SweepRow]) -> Option<f64> {
    let x: Vec<f64> = rows.iter().map(|r| r.metrics.ode_error_latent).collect();
    let y: Vec<f64> = rows.iter().map(|r| r.metrics.fd_teacher).collect();
    spearman(&x, &y).ok()
}

/// `0.77 [−0.14, 0.98]` or `undefined`.
pub fn rho_text(r: &Rank) -> String {
    match r.interval {
        Some(ci) => format!("{} {}", num(ci.estimate), bounds(&ci)),
        None => "undefined".into(),
    }
}

/// The per-method table and the pooled value beside it.
pub fn rank_section(rows: &[SweepRow], steps: &[usize], level: f64) -> Result<String> {
    let ranks = ranks(rows, steps, level)?;
    let Some(first) = ranks.first() else {
        return Ok(String::new());
    };
    let mut s = format!(
        "Spearman's ρ between ODE error and FD vs teacher over each run's {} checkpoints, per method and sampler step count ({} % interval: {}):\n\n| method | steps | ρ [interval] | per seed |\n|---|---|---|---|\n",
        first.checkpoints,
        level * 100.0,
        if first.per_seed.len() > 1 {
            "percentile bootstrap of the mean ρ over seeds".to_string()
        } else {
            "Fisher's z with variance 1.06/(n − 3), n the checkpoints of one run — not independent, so descriptive".to_string()
        }
    );
    for r in &ranks {
        let seeds: Vec<String> = r.per_seed.iter().map(|&v| num(v)).collect();
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            r.method,
            r.steps,
            rho_text(r),
            seeds.join(", ")
        );
    }
    let _ = writeln!(
        s,
        "\nBeside them only, pooled over both methods, every step count and checkpoint ({} points, mixing differences between methods and step counts into one ranking): ρ = {}.",
        rows.len(),
        pooled(rows).map_or("undefined".into(), num)
    );
    Ok(s)
}
