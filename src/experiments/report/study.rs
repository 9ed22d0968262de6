//! Writes the study's folder (`docs/study/`): README.md with every table and the finding
//! sentences (generated from the paired intervals), CSV and JSON beside it, and the
//! charts — training length, ODE error against FD over all checkpoints, target horizon.

use super::chart::{write_chart, Series};
use super::finding::{claim, interval_text, num, sentence, verdict, Better, Verdict};
use super::table::{Getter, COLUMNS};
use crate::eval::bootstrap::{paired_interval, Interval};
use crate::eval::spearman::spearman;
use crate::experiments::analytic_control::AnalyticRow;
use crate::experiments::reproduce::{Metrics, Row};
use crate::experiments::study::{Comparison, StudyConfig, StudyOutcome, SweepRow};
use crate::runtime::files::write_atomic;
use anyhow::{Context, Result};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;

/// FD, KD and ODE errors are better low; precision, recall, density, coverage and
/// class accuracy high.
pub fn better(column: &str) -> Better {
    if column.starts_with("FD") || column.starts_with("KD") || column.starts_with("ODE") {
        Better::Lower
    } else {
        Better::Higher
    }
}

/// CM − Direct at one step count for one metric, paired by seed.
#[derive(Clone, Debug, Serialize)]
pub struct Difference {
    pub steps: usize,
    pub metric: String,
    pub cm: f64,
    pub direct: f64,
    pub interval: Interval,
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// The per-seed values of `get` for `method` at `steps`, in seed order.
fn per_seed(rows: &[Row], method: &str, steps: usize, get: Getter) -> Vec<f64> {
    let mut r: Vec<&Row> = rows.iter().filter(|r| r.method == method && r.steps == steps).collect();
    r.sort_by_key(|r| r.seed);
    r.iter().map(|r| get(&r.metrics)).collect()
}

/// Every metric's paired interval at every step count of a comparison.
/// (None before the comparison has run.)
pub fn differences(c: &Comparison, steps: &[usize], level: f64) -> Result<Vec<Difference>> {
    let mut out = Vec::new();
    if c.rows.is_empty() {
        return Ok(out);
    }
    for &k in steps {
        for (name, get) in COLUMNS {
            let (cm, direct) = (per_seed(&c.rows, "CM", k, get), per_seed(&c.rows, "Direct", k, get));
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

fn favours(d: &Difference) -> &'static str {
    match verdict(&d.interval, better(&d.metric)) {
        Verdict::Cm => "CM",
        Verdict::Direct => "Direct",
        Verdict::Unresolved => "neither (CI includes 0)",
    }
}

/// One table per step count: both means, CM − Direct with its interval, and which it favours.
fn comparison_tables(diffs: &[Difference], steps: &[usize], teacher: &[Row]) -> String {
    let mut s = String::new();
    for &k in steps {
        let fd = mean(&per_seed(teacher, "teacher DDIM", k, |m| m.fd_teacher));
        let _ = writeln!(
            s,
            "\n**{k} step{}** (teacher's own {k}-interval DDIM: FD vs teacher {})\n\n| metric | CM | Direct | CM − Direct [95 % CI] | better |\n|---|---|---|---|---|",
            if k == 1 { "" } else { "s" },
            num(fd)
        );
        for d in diffs.iter().filter(|d| d.steps == k) {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} |",
                d.metric,
                num(d.cm),
                num(d.direct),
                interval_text(&d.interval),
                favours(d)
            );
        }
    }
    s
}

fn find<'a>(diffs: &'a [Difference], metric: &str, steps: usize) -> Option<&'a Difference> {
    diffs.iter().find(|d| d.metric == metric && d.steps == steps)
}

/// The claim per step count, then the paper's metric and ODE error, then every other metric.
fn findings(diffs: &[Difference], steps: &[usize]) -> String {
    let mut s = String::new();
    for &k in steps {
        if let (Some(ode), Some(fd)) = (find(diffs, "ODE error (latent)", k), find(diffs, "FD vs teacher", k)) {
            let _ = writeln!(s, "- {}", claim(k, &ode.interval, &fd.interval, "the teacher"));
        }
    }
    s.push_str("\nMetric by metric:\n\n");
    for d in diffs {
        let _ = writeln!(s, "- {}", sentence(&d.metric, d.steps, better(&d.metric), &d.interval));
    }
    s
}

fn training_table(c: &Comparison) -> String {
    let mut s = String::from(
        "| method | seed | seconds | teacher evaluations (per sample) | final loss |\n|---|---|---|---|---|\n",
    );
    for t in &c.training {
        let last = t.losses.last().copied().unwrap_or(f32::NAN) as f64;
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {} | {} |",
            t.method,
            t.seed,
            t.seconds,
            t.teacher_evaluations,
            num(last)
        );
    }
    s
}

/// The (ODE error, FD vs teacher) table of a sweep: one row per (setting, method), one
/// column pair per step count.
fn sweep_table(rows: &[SweepRow], setting: &str, steps: &[usize]) -> String {
    if rows.is_empty() {
        return NOT_RUN.to_string();
    }
    let mut s = format!("| {setting} | method |");
    for k in steps {
        let _ = write!(s, " FD vs teacher, {k} | ODE error, {k} |");
    }
    s.push_str(&format!("\n|---|---|{}\n", "---|---|".repeat(steps.len())));
    let mut keys: Vec<(f64, String)> = Vec::new();
    for r in rows {
        if !keys.iter().any(|k| k.0 == r.setting && k.1 == r.method) {
            keys.push((r.setting, r.method.clone()));
        }
    }
    for (setting, method) in keys {
        let shown = if setting.fract() == 0.0 {
            format!("{setting:.0}")
        } else {
            num(setting)
        };
        let _ = write!(s, "| {shown} | {method} |");
        for &k in steps {
            match rows
                .iter()
                .find(|r| r.setting == setting && r.method == method && r.steps == k)
            {
                Some(r) => {
                    let _ = write!(
                        s,
                        " {} | {} |",
                        num(r.metrics.fd_teacher),
                        num(r.metrics.ode_error_latent)
                    );
                }
                None => s.push_str(" – | – |"),
            }
        }
        s.push('\n');
    }
    s
}

fn sweep_csv(rows: &[SweepRow], setting: &str) -> String {
    let mut s = format!("{setting},method,steps");
    for (name, _) in COLUMNS {
        let _ = write!(s, ",{}", name.replace(' ', "_").replace(['(', ')'], ""));
    }
    s.push('\n');
    for r in rows {
        let _ = write!(s, "{},{},{}", r.setting, r.method, r.steps);
        for (_, get) in COLUMNS {
            let _ = write!(s, ",{}", get(&r.metrics));
        }
        s.push('\n');
    }
    s
}

/// Spearman's ρ of ODE error against FD vs teacher over `rows` (None when undefined).
fn rho(rows: &[&SweepRow]) -> Option<f64> {
    let x: Vec<f64> = rows.iter().map(|r| r.metrics.ode_error_latent).collect();
    let y: Vec<f64> = rows.iter().map(|r| r.metrics.fd_teacher).collect();
    spearman(&x, &y).ok()
}

/// Charts of the training-length sweep; returns the rank-correlation sentences.
fn length_charts(dir: &Path, rows: &[SweepRow], steps: &[usize]) -> Result<String> {
    if rows.is_empty() {
        return Ok(NOT_RUN.to_string());
    }
    let curve = |get: fn(&Metrics) -> f64| -> Vec<Series> {
        ["CM", "Direct"]
            .iter()
            .flat_map(|m| {
                steps.iter().map(move |&k| Series {
                    name: format!("{m}, {k} step{}", if k == 1 { "" } else { "s" }),
                    points: rows
                        .iter()
                        .filter(|r| r.method == *m && r.steps == k)
                        .map(|r| (r.setting.log2(), get(&r.metrics), String::new()))
                        .collect(),
                })
            })
            .collect()
    };
    let x = "log₂ training steps (8 = 250, 13 = 8,000)";
    write_chart(
        &dir.join("training_length_fd.svg"),
        "FD vs teacher against training length",
        x,
        "FD vs teacher",
        &curve(|m| m.fd_teacher),
        true,
        true,
    )?;
    write_chart(
        &dir.join("training_length_ode_error.svg"),
        "ODE error against training length",
        x,
        "ODE error (latent MSE)",
        &curve(|m| m.ode_error_latent),
        true,
        true,
    )?;
    let scatter: Vec<Series> = ["CM", "Direct"]
        .iter()
        .map(|m| Series {
            name: m.to_string(),
            points: rows
                .iter()
                .filter(|r| r.method == *m)
                .map(|r| (r.metrics.fd_teacher, r.metrics.ode_error_latent, format!("{}", r.steps)))
                .collect(),
        })
        .collect();
    write_chart(
        &dir.join("ode_error_vs_fd.svg"),
        "ODE error against FD vs teacher, every checkpoint (labels: sampler steps)",
        "FD vs teacher",
        "ODE error (latent MSE)",
        &scatter,
        false,
        true,
    )?;
    let mut s = String::new();
    let all: Vec<&SweepRow> = rows.iter().collect();
    let fmt = |r: Option<f64>| r.map_or("undefined".to_string(), |v| format!("{v:.2}"));
    let _ = writeln!(
        s,
        "- every checkpoint, method and step count ({} points): ρ = {}",
        all.len(),
        fmt(rho(&all))
    );
    for m in ["CM", "Direct"] {
        let sub: Vec<&SweepRow> = rows.iter().filter(|r| r.method == m).collect();
        let _ = writeln!(s, "- {m} alone ({} points): ρ = {}", sub.len(), fmt(rho(&sub)));
    }
    for &k in steps {
        let sub: Vec<&SweepRow> = rows.iter().filter(|r| r.steps == k).collect();
        let _ = writeln!(
            s,
            "- {k}-step samples of both methods ({} points): ρ = {}",
            sub.len(),
            fmt(rho(&sub))
        );
    }
    Ok(s)
}

fn horizon_chart(dir: &Path, rows: &[SweepRow], steps: &[usize]) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let series: Vec<Series> = steps
        .iter()
        .map(|&k| Series {
            name: format!("{k} step{}", if k == 1 { "" } else { "s" }),
            points: rows
                .iter()
                .filter(|r| r.steps == k)
                .map(|r| (r.setting.log10(), r.metrics.fd_teacher, format!("{}", r.setting)))
                .collect(),
        })
        .collect();
    write_chart(
        &dir.join("horizon.svg"),
        "FD vs teacher against the target horizon k (labels: k)",
        "log₁₀ k (k = 1: CM; k = N: Direct)",
        "FD vs teacher",
        &series,
        true,
        true,
    )
}

/// The analytic control's intervals (paired by seed) per step count and metric.
fn analytic_section(rows: &[AnalyticRow], steps: &[usize], level: f64) -> Result<(String, Vec<Difference>)> {
    if rows.is_empty() {
        return Ok((NOT_RUN.to_string(), Vec::new()));
    }
    type Get = fn(&AnalyticRow) -> f64;
    let metrics: [(&str, Get); 3] = [
        ("FD vs exact samples", |r| r.fd_exact),
        ("ODE error (exact)", |r| r.exact_ode_error),
        ("ODE error (vs N-step solve)", |r| r.solver_ode_error),
    ];
    let values = |method: &str, k: usize, get: Get| -> Vec<f64> {
        let mut r: Vec<&AnalyticRow> = rows.iter().filter(|r| r.method == method && r.steps == k).collect();
        r.sort_by_key(|r| r.seed);
        r.iter().map(|r| get(r)).collect()
    };
    let mut diffs = Vec::new();
    let mut s =
        String::from("| steps | metric | CM | Direct | CM − Direct [95 % CI] | better |\n|---|---|---|---|---|---|\n");
    for &k in steps {
        for (name, get) in metrics {
            let (cm, direct) = (values("CM", k, get), values("Direct", k, get));
            let d = Difference {
                steps: k,
                metric: name.to_string(),
                cm: mean(&cm),
                direct: mean(&direct),
                interval: paired_interval(&cm, &direct, level)?,
            };
            let _ = writeln!(
                s,
                "| {k} | {name} | {} | {} | {} | {} |",
                num(d.cm),
                num(d.direct),
                interval_text(&d.interval),
                favours(&d)
            );
            diffs.push(d);
        }
    }
    let teacher = values(
        "teacher",
        rows.iter().find(|r| r.method == "teacher").map_or(0, |r| r.steps),
        |r| r.exact_ode_error,
    );
    let _ = writeln!(
        s,
        "\nThe teacher's own N-step solve: ODE error against the exact solution {} (mean over seeds).\n",
        num(mean(&teacher))
    );
    for &k in steps {
        if let (Some(ode), Some(fd)) = (
            find(&diffs, "ODE error (exact)", k),
            find(&diffs, "FD vs exact samples", k),
        ) {
            let _ = writeln!(s, "- {}", claim(k, &ode.interval, &fd.interval, "the exact samples"));
        }
    }
    let students: Vec<&AnalyticRow> = rows.iter().filter(|r| r.method != "teacher").collect();
    let x: Vec<f64> = students.iter().map(|r| r.exact_ode_error).collect();
    let y: Vec<f64> = students.iter().map(|r| r.fd_exact).collect();
    if let Ok(r) = spearman(&x, &y) {
        let _ = writeln!(
            s,
            "\nSpearman's ρ of exact ODE error against FD over every student, seed and step count ({} points): {r:.2}.",
            x.len()
        );
    }
    Ok((s, diffs))
}

fn analytic_csv(rows: &[AnalyticRow]) -> String {
    let mut s = String::from("method,seed,steps,exact_ode_error,solver_ode_error,fd_exact\n");
    for r in rows {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{}",
            r.method, r.seed, r.steps, r.exact_ode_error, r.solver_ode_error, r.fd_exact
        );
    }
    s
}

fn intervals_csv(sets: &[(&str, &[Difference])]) -> String {
    let mut s = String::from("comparison,steps,metric,cm_mean,direct_mean,difference,low,high,excludes_zero\n");
    for (name, diffs) in sets {
        for d in diffs.iter() {
            let i = &d.interval;
            let _ = writeln!(
                s,
                "{name},{},{},{},{},{},{},{},{}",
                d.steps,
                d.metric,
                d.cm,
                d.direct,
                i.estimate,
                i.low,
                i.high,
                i.excludes_zero()
            );
        }
    }
    s
}

fn rows_csv(comparisons: &[&Comparison]) -> String {
    let mut s = String::from("baseline,method,steps,seed");
    for (name, _) in COLUMNS {
        let _ = write!(s, ",{}", name.replace(' ', "_").replace(['(', ')'], ""));
    }
    s.push('\n');
    for c in comparisons {
        for r in &c.rows {
            let _ = write!(s, "{},{},{},{}", c.preset, r.method, r.steps, r.seed);
            for (_, get) in COLUMNS {
                let _ = write!(s, ",{}", get(&r.metrics));
            }
            s.push('\n');
        }
    }
    s
}

const NOT_RUN: &str = "Not run yet.\n";

fn baseline_section(title: &str, c: &Comparison, diffs: &[Difference], steps: &[usize], teacher: &[Row]) -> String {
    if c.rows.is_empty() {
        return format!("## {title}\n\n{NOT_RUN}\n");
    }
    format!(
        "## {title} (`--preset {}`)\n\n### Findings (generated from the intervals)\n\n{}\n### Tables\n{}\n### Training\n\n{}\n",
        c.preset,
        findings(diffs, steps),
        comparison_tables(diffs, steps, teacher),
        training_table(c)
    )
}

pub fn write_study(dir: &Path, cfg: &StudyConfig, out: &StudyOutcome, seconds: f64) -> Result<String> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create folder", dir.display()))?;
    let steps = &cfg.main.steps;
    let main = differences(&out.main, steps, cfg.level)?;
    let other = differences(&out.other, steps, cfg.level)?;
    let rho = length_charts(dir, &out.lengths, steps)?;
    horizon_chart(dir, &out.horizons, steps)?;
    let (analytic, analytic_diffs) = analytic_section(&out.analytic, steps, cfg.level)?;
    let stages: String = out
        .stages
        .iter()
        .map(|(s, t)| format!("| {s} | {:.1} |\n", t / 60.0))
        .collect();
    let report = format!(
        "# The study: CM against Direct CM on MNIST latents\n\n\
         Generated by `dcm reproduce --preset study` ({:.0} min on {}). Every number below is from \
         `study.json`; the finding sentences are generated from the paired bootstrap intervals \
         (CM − Direct per seed, {} seeds, exact enumeration of all resamples, {:.0} % percentile \
         interval). Seeds are the resampled unit: each seed trains both students and draws its \
         own evaluation noise, so its difference carries training and evaluation randomness alike. \
         {} evaluation samples per seed ({} per class). FD against the teacher's samples (the paper's \
         metric) heads every table.\n\n\
         | stage | minutes |\n|---|---|\n{stages}\n{}\n{}\n\
         ## Training length (seed 0 of `{}`, one run to {} steps)\n\n{}\n\
         Spearman's ρ between ODE error and FD vs teacher:\n\n{rho}\n\
         ![FD against training length](training_length_fd.svg)\n\n![ODE error against training length](training_length_ode_error.svg)\n\n\
         ![ODE error against FD](ode_error_vs_fd.svg)\n\n\
         ## Target horizon (seed 0, {} training steps): k teacher steps, then the target network\n\n{}\n![horizon](horizon.svg)\n\n\
         ## Guidance (seed 0, {} training steps, each w judged against its own teacher solve)\n\n{}\n\
         ## Analytic control: `{}` mixture, exact ODE solution ({} seeds, {} samples each)\n\n{analytic}\n",
        seconds / 60.0,
        super::run::machine(),
        cfg.main.seeds,
        cfg.level * 100.0,
        cfg.main.per_class * out.classes,
        cfg.main.per_class,
        baseline_section("Faithful baseline chosen by CM's stability: full fine-tuning, EMA target 0.95", &out.main, &main, steps, &out.main.rows),
        baseline_section("The paper's code: LoRA students, θ⁻ = θ", &out.other, &other, steps, &out.main.rows),
        cfg.main.preset,
        cfg.lengths.iter().max().copied().unwrap_or(0),
        sweep_table(&out.lengths, "training steps", steps),
        cfg.sweep_steps,
        sweep_table(&out.horizons, "k", steps),
        cfg.sweep_steps,
        sweep_table(&out.guidance, "w", steps),
        cfg.analytic.toy,
        cfg.analytic.seeds,
        out.analytic_samples,
    );
    write_atomic(&dir.join("README.md"), report.as_bytes())?;
    write_atomic(&dir.join("results.csv"), rows_csv(&[&out.main, &out.other]).as_bytes())?;
    let sets: [(&str, &[Difference]); 3] = [
        (&out.main.preset, &main),
        (&out.other.preset, &other),
        ("analytic", &analytic_diffs),
    ];
    write_atomic(&dir.join("intervals.csv"), intervals_csv(&sets).as_bytes())?;
    write_atomic(
        &dir.join("training_length.csv"),
        sweep_csv(&out.lengths, "training_steps").as_bytes(),
    )?;
    write_atomic(&dir.join("horizon.csv"), sweep_csv(&out.horizons, "k").as_bytes())?;
    write_atomic(&dir.join("guidance.csv"), sweep_csv(&out.guidance, "w").as_bytes())?;
    write_atomic(&dir.join("analytic.csv"), analytic_csv(&out.analytic).as_bytes())?;
    let json = serde_json::json!({"config": cfg, "seconds": seconds, "machine": super::run::machine(),
        "intervals": {"main": main, "other": other, "analytic": analytic_diffs}, "outcome": out});
    write_atomic(&dir.join("study.json"), serde_json::to_string_pretty(&json)?.as_bytes())?;
    Ok(report)
}
