//! Every point where ODE error and FD vs teacher disagree — where the method (or, along
//! the horizon family, the neighbouring horizon) with the lower ODE error has the higher
//! FD — in the baselines, the sweeps and the analytic control. Listed, none omitted.

use super::finding::{difference_text, num, settled};
use super::horizon_steps::{horizon_step, HorizonStep};
use super::sweep_order::paired;
use super::sweep_report::{mean_at, seed_note, settings, shown, SWEPT};
use crate::eval::difference::Difference;
use crate::eval::records::SweepRow;

fn at(steps: usize) -> String {
    format!("{steps} step{}", if steps == 1 { "" } else { "s" })
}

/// Opposite strict signs.
fn opposite(a: f64, b: f64) -> bool {
    a * b < 0.0
}

/// The lower of CM and Direct on a metric, by its CM − Direct.
fn lower(diff: f64) -> &'static str {
    if diff < 0.0 {
        "CM"
    } else {
        "Direct"
    }
}

/// A baseline's step counts where CM − Direct has opposite signs on ODE error and FD
/// (`ode_metric`, `fd_metric` name the pair; the analytic control's are exact).
pub fn in_differences(name: &str, diffs: &[Difference], ode_metric: &str, fd_metric: &str) -> Vec<String> {
    let find = |m: &str, k: usize| diffs.iter().find(|d| d.metric == m && d.steps == k);
    let mut steps: Vec<usize> = diffs.iter().map(|d| d.steps).collect();
    steps.dedup();
    steps
        .into_iter()
        .filter_map(|k| {
            let (ode, fd) = (find(ode_metric, k)?, find(fd_metric, k)?);
            opposite(ode.interval.estimate, fd.interval.estimate).then(|| {
                format!(
                    "{name}, {} ({} seeds): {} has the lower {ode_metric}, CM − Direct = {}; {} the lower {fd_metric}, {}.",
                    at(k),
                    ode.signs.pairs,
                    lower(ode.interval.estimate),
                    difference_text(ode),
                    lower(fd.interval.estimate),
                    difference_text(fd)
                )
            })
        })
        .collect()
}

/// A CM-against-Direct sweep's (setting, step count) points where the means over its seeds
/// favour different methods on ODE error and FD vs teacher, each side marked resolved or
/// not when the sweep has seeds to pair; `label` names a setting.
pub fn in_sweep(
    name: &str,
    label: fn(f64) -> String,
    rows: &[SweepRow],
    diffs: &[(f64, Difference)],
    steps: &[usize],
) -> Vec<String> {
    let (fd, ode) = (SWEPT[0].1, SWEPT[1].1);
    let mut out = Vec::new();
    for s in settings(rows) {
        for &k in steps {
            let (Some(cf), Some(df), Some(co), Some(dn)) = (
                mean_at(rows, s, "CM", k, fd),
                mean_at(rows, s, "Direct", k, fd),
                mean_at(rows, s, "CM", k, ode),
                mean_at(rows, s, "Direct", k, ode),
            ) else {
                continue;
            };
            let side = |diff: f64, metric: &str| match paired(diffs, s, k, metric) {
                Some(d) => format!("{} lower, {}", lower(diff), settled(d)),
                None => format!("{} lower", lower(diff)),
            };
            if opposite(co - dn, cf - df) {
                out.push(format!(
                    "{name}, {}, {} ({}): ODE error CM {}, Direct {} ({}); FD vs teacher CM {}, Direct {} ({}).",
                    label(s),
                    at(k),
                    seed_note(rows),
                    num(co),
                    num(dn),
                    side(co - dn, SWEPT[1].0),
                    num(cf),
                    num(df),
                    side(cf - df, SWEPT[0].0)
                ));
            }
        }
    }
    out
}

/// Neighbouring horizons (k and the next k, at one sampler step count) where the one with
/// the lower ODE error has the higher FD vs teacher, each side marked resolved or not when
/// the sweep has seeds to pair.
pub fn in_horizons(rows: &[SweepRow], pairs: &[HorizonStep], steps: &[usize]) -> Vec<String> {
    let (fd, ode) = (SWEPT[0].1, SWEPT[1].1);
    let ks = settings(rows);
    let mut out = Vec::new();
    for &k in steps {
        let value = |h: f64, get| {
            rows.iter()
                .find(|r| r.setting == h)
                .and_then(|r| mean_at(rows, h, &r.method, k, get))
        };
        for pair in ks.windows(2) {
            let (Some(o0), Some(o1), Some(f0), Some(f1)) = (
                value(pair[0], ode),
                value(pair[1], ode),
                value(pair[0], fd),
                value(pair[1], fd),
            ) else {
                continue;
            };
            let mark = |metric: &str| {
                horizon_step(pairs, pair[0], k, metric)
                    .map_or(String::new(), |h| format!(" ({})", settled(&h.difference)))
            };
            if opposite(o1 - o0, f1 - f0) {
                out.push(format!(
                    "target horizon k = {} → {}, {} ({}): ODE error {} → {}{}, FD vs teacher {} → {}{}.",
                    shown(pair[0]),
                    shown(pair[1]),
                    at(k),
                    seed_note(rows),
                    num(o0),
                    num(o1),
                    mark(SWEPT[1].0),
                    num(f0),
                    num(f1),
                    mark(SWEPT[0].0)
                ));
            }
        }
    }
    out
}
