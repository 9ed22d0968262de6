//! The sentences the study's report and its README summary share, generated from the
//! record: each baseline by its settings, the paper's claim step count by step count,
//! every point where ODE error and FD vs teacher disagree, and the sweeps read along
//! their settings.

use super::disagreement::{in_differences, in_horizons, in_sweep};
use super::finding::{claim, num, settled};
use super::horizon_steps::{horizon_step, HorizonStep};
use super::length_criterion::steps_text;
use super::study_record::Differences;
use super::sweep_order::{order, Order};
use super::sweep_report::{mean_at, seed_note, settings, shown, SWEPT};
use crate::eval::difference::Difference;
use crate::eval::records::SweepRow;
use crate::eval::reproduce_config::ReproduceConfig;
use crate::eval::study::config::StudyConfig;
use crate::eval::study::outcome::StudyOutcome;

/// `EMA 0.95, full fine-tuning` / `LoRA rank 64, θ⁻ = θ`: a baseline by its settings.
pub fn baseline_name(c: &ReproduceConfig) -> String {
    match (c.lora, c.ema_decay) {
        (Some(l), _) => format!("LoRA rank {}, α {}, θ⁻ = θ", l.rank, l.alpha),
        (None, Some(d)) => format!("full fine-tuning, EMA target {d}"),
        (None, None) => "full fine-tuning, θ⁻ = θ".into(),
    }
}

fn find<'a>(diffs: &'a [Difference], metric: &str, steps: usize) -> Option<&'a Difference> {
    diffs.iter().find(|d| d.metric == metric && d.steps == steps)
}

/// The paper's claim at each step count, judged on `ode` and `fd` metrics.
pub fn claims(diffs: &[Difference], steps: &[usize], (ode, fd): (&str, &str), reference: &str) -> Vec<String> {
    steps
        .iter()
        .filter_map(|&k| Some(claim(find(diffs, ode, k)?, find(diffs, fd, k)?, reference)))
        .collect()
}

/// The paper's claim on the baselines' metrics.
pub fn baseline_claims(diffs: &[Difference], steps: &[usize]) -> Vec<String> {
    claims(diffs, steps, ("ODE error (latent)", "FD vs teacher"), "the teacher")
}

/// Markdown bullets, one per line.
pub fn bullets(lines: &[String]) -> String {
    lines.iter().map(|l| format!("- {l}\n")).collect()
}

/// Every point where ODE error and FD vs teacher disagree, grouped by where it is.
pub fn disagreements(cfg: &StudyConfig, out: &StudyOutcome, d: &Differences) -> Vec<String> {
    let steps = &cfg.main.steps;
    let (ode, fd) = ("ODE error (latent)", "FD vs teacher");
    let mut v = in_differences(&format!("`{}` baseline", out.main.preset), &d.main, ode, fd);
    v.extend(in_differences(
        &format!("`{}` baseline", out.other.preset),
        &d.other,
        ode,
        fd,
    ));
    v.extend(in_sweep(
        "training length",
        |l| format!("{} training steps", shown(l)),
        &out.lengths,
        &d.lengths,
        steps,
    ));
    v.extend(in_horizons(&out.horizons, &d.horizons, steps));
    v.extend(in_sweep(
        "guidance",
        |w| format!("w = {}", shown(w)),
        &out.guidance,
        &d.guidance,
        steps,
    ));
    v.extend(in_differences(
        "analytic control",
        &d.analytic,
        "ODE error (exact)",
        "FD vs exact samples",
    ));
    v
}

/// Per sampler step count, FD vs teacher and ODE error along the horizon family, where
/// each is lowest, and whether FD falls monotonically from CM to Direct.
pub fn horizon_sentences(rows: &[SweepRow], pairs: &[HorizonStep], steps: &[usize]) -> Vec<String> {
    let ks = settings(rows);
    let names: Vec<String> = ks.iter().map(|&k| shown(k)).collect();
    steps
        .iter()
        .filter_map(|&k| {
            let along = |get| -> Option<Vec<f64>> {
                ks.iter()
                    .map(|&h| mean_at(rows, h, &rows.iter().find(|r| r.setting == h)?.method, k, get))
                    .collect()
            };
            let (fd, ode) = (along(SWEPT[0].1)?, along(SWEPT[1].1)?);
            let lowest = |v: &[f64], metric: &str| {
                let i = (0..v.len()).fold(0, |b, i| if v[i] < v[b] { i } else { b });
                format!("{}{}", names[i], lead(pairs, &ks, i, k, metric))
            };
            let monotone = fd.windows(2).all(|w| w[1] <= w[0]);
            let path = |v: &[f64]| v.iter().map(|&x| num(x)).collect::<Vec<_>>().join(", ");
            Some(format!(
                "At {k} sampler step{}, along k = {}: FD vs teacher {} (lowest at k = {}; {}), ODE error {} (lowest at k = {}).",
                if k == 1 { "" } else { "s" },
                names.join(", "),
                path(&fd),
                lowest(&fd, SWEPT[0].0),
                if monotone { "falling monotonically" } else { "not monotone" },
                path(&ode),
                lowest(&ode, SWEPT[1].0)
            ))
        })
        .collect()
}

/// `: its lead over k = 2 resolved, over k = 10 not resolved`: whether the seeds settle the
/// lowest horizon `ks[i]` against each neighbour (nothing without seeds to pair).
fn lead(pairs: &[HorizonStep], ks: &[f64], i: usize, steps: usize, metric: &str) -> String {
    let mut against = Vec::new();
    let neighbours = [
        (i.checked_sub(1), i.checked_sub(1)),
        ((i + 1 < ks.len()).then_some(i + 1), Some(i)),
    ];
    for (other, earlier) in neighbours {
        let (Some(o), Some(e)) = (other, earlier) else {
            continue;
        };
        if let Some(h) = horizon_step(pairs, ks[e], steps, metric) {
            against.push(format!("over k = {} {}", shown(ks[o]), settled(&h.difference)));
        }
    }
    match against.is_empty() {
        true => String::new(),
        false => format!(": its lead {}", against.join(", ")),
    }
}

/// The paper's claim in the analytic control, against the exact samples.
pub fn analytic_claims(cfg: &StudyConfig, diffs: &[Difference]) -> Vec<String> {
    claims(
        diffs,
        &cfg.main.steps,
        ("ODE error (exact)", "FD vs exact samples"),
        "the exact samples",
    )
}

/// How a mean metric runs along the training lengths: falling throughout, or where it is
/// lowest and how many times that the longest length's value is (a run that comes apart
/// late shows as a large factor).
fn path_shape(v: &[f64], lengths: &[f64]) -> String {
    if v.windows(2).all(|w| w[1] <= w[0]) {
        return "falling monotonically".into();
    }
    let low = (0..v.len()).fold(0, |b, i| if v[i] < v[b] { i } else { b });
    let last = v.len() - 1;
    if low == last {
        return "not monotone, lowest at the longest".into();
    }
    format!(
        "not monotone; lowest at {} training steps, and {}× that at {}",
        shown(lengths[low]),
        num(v[last] / v[low]),
        shown(lengths[last])
    )
}

/// Per method at each sampler step count, the mean FD vs teacher and ODE error along the
/// training lengths, each with its shape.
pub fn length_paths(rows: &[SweepRow], steps: &[usize]) -> Vec<String> {
    let lengths = settings(rows);
    let path = |v: &[f64]| v.iter().map(|&x| num(x)).collect::<Vec<_>>().join(", ");
    let mut out = Vec::new();
    for m in ["CM", "Direct"] {
        for &k in steps {
            let along = |get| -> Option<Vec<f64>> { lengths.iter().map(|&l| mean_at(rows, l, m, k, get)).collect() };
            let (Some(fd), Some(ode)) = (along(SWEPT[0].1), along(SWEPT[1].1)) else {
                continue;
            };
            out.push(format!(
                "{m} at {k} step{} over {} training steps: FD vs teacher {} ({}); ODE error {} ({}).",
                if k == 1 { "" } else { "s" },
                lengths.iter().map(|&l| shown(l)).collect::<Vec<_>>().join(", "),
                path(&fd),
                path_shape(&fd, &lengths),
                path(&ode),
                path_shape(&ode, &lengths)
            ));
        }
    }
    out
}

fn at_lengths(v: &[f64]) -> String {
    if v.is_empty() {
        "no length".to_string()
    } else {
        steps_text(&v.iter().map(|&l| l as usize).collect::<Vec<_>>())
    }
}

/// Per sampler step count, the training lengths at which CM and at which Direct has the
/// lower FD vs teacher, by the means and by the resolved differences, and whether that
/// order depends on the length.
pub fn length_order(rows: &[SweepRow], diffs: &[(f64, Difference)], steps: &[usize]) -> Vec<String> {
    steps
        .iter()
        .map(|&k| {
            let o = order(rows, diffs, k, 0);
            format!(
                "At {k} step{}, the lower mean FD vs teacher is CM's at {} and Direct's at {} training steps{}: {}.",
                if k == 1 { "" } else { "s" },
                at_lengths(&o.cm),
                at_lengths(&o.direct),
                resolved_clause(&o),
                dependence(&o)
            )
        })
        .collect()
}

/// For the headline: the step counts at which the CM-vs-Direct order on FD vs teacher
/// changes along the training-length sweep, with where the curve is.
pub fn length_caveats(rows: &[SweepRow], diffs: &[(f64, Difference)], steps: &[usize]) -> Vec<String> {
    steps
        .iter()
        .filter_map(|&k| {
            let o = order(rows, diffs, k, 0);
            o.means_change().then(|| {
                format!(
                    "At {k} step{} {}: in the training-length sweep ({}) CM has the lower mean FD vs teacher at {} and Direct at {} training steps{} (the curve: `docs/study/training_length_fd.svg`).",
                    if k == 1 { "" } else { "s" },
                    dependence(&o),
                    seed_note(rows),
                    at_lengths(&o.cm),
                    at_lengths(&o.direct),
                    resolved_clause(&o)
                )
            })
        })
        .collect()
}

/// `; resolved for CM at no length and for Direct at 250 and 500` (nothing without pairs).
fn resolved_clause(o: &Order) -> String {
    match &o.resolved {
        Some((cm, direct)) => format!(
            "; resolved for CM at {} and for Direct at {}",
            at_lengths(cm),
            at_lengths(direct)
        ),
        None => String::new(),
    }
}

fn dependence(o: &Order) -> &'static str {
    match (o.means_change(), o.resolved_change()) {
        (_, true) => "the order depends on the training length",
        (true, false) => {
            "the order of the means depends on the training length, that of the resolved differences does not"
        }
        (false, false) => "the same order at every length",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiments::report::horizon_steps::{horizon_steps, tests::family};

    /// The lowest horizon's lead is called resolved only over the neighbour the seeds settle.
    #[test]
    fn the_lowest_horizon_names_which_leads_the_seeds_settle() {
        let rows = family();
        let pairs = horizon_steps(&rows, &[1], 0.95).unwrap();
        let sentence = &horizon_sentences(&rows, &pairs, &[1])[0];
        assert!(
            sentence.contains(
                "FD vs teacher 101, 52.0, 64.7 (lowest at k = 2: its lead over k = 1 resolved, over k = 5 not resolved;"
            ),
            "{sentence}"
        );
    }
}
