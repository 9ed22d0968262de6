//! Writes the study's folder (`docs/study/`): README.md with every table and the finding
//! sentences (generated from the paired intervals), CSV and JSON beside it, and the
//! charts — training length, ODE error against FD over all checkpoints, target horizon.

use super::chart::{write_chart, Series};
use super::finding::{claim, interval_text, num, sentence, verdict, Better, Verdict};
use super::machine::machine;
use crate::eval::difference::{analytic_differences, analytic_per_seed, differences, mean, per_seed, Difference};
use crate::eval::records::{Comparison, Metrics, Row, SweepRow, COLUMNS};
use crate::eval::spearman::spearman;
use crate::eval::study::analytic_control::AnalyticRow;
use crate::eval::study::config::StudyConfig;
use crate::eval::study::outcome::StudyOutcome;
use crate::runtime::files::write_atomic;
use anyhow::{Context, Result};
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

/// One curve per (method, step count) of `get` against log₂ training steps.
fn length_curves(rows: &[SweepRow], steps: &[usize], get: fn(&Metrics) -> f64) -> Vec<Series> {
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
}

/// Charts of the training-length sweep: FD and ODE error against length, and ODE error
/// against FD over every checkpoint.
fn length_charts(dir: &Path, rows: &[SweepRow], steps: &[usize]) -> Result<()> {
    let x = "log₂ training steps (8 = 250, 13 = 8,000)";
    write_chart(
        &dir.join("training_length_fd.svg"),
        "FD vs teacher against training length",
        x,
        "FD vs teacher",
        &length_curves(rows, steps, |m| m.fd_teacher),
        true,
        true,
    )?;
    write_chart(
        &dir.join("training_length_ode_error.svg"),
        "ODE error against training length",
        x,
        "ODE error (latent MSE)",
        &length_curves(rows, steps, |m| m.ode_error_latent),
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
    )
}

/// The rank correlations of the training-length sweep: over everything, per method and
/// per step count.
fn rho_sentences(rows: &[SweepRow], steps: &[usize]) -> String {
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
    s
}

/// The training-length charts and the rank-correlation sentences.
fn length_section(dir: &Path, rows: &[SweepRow], steps: &[usize]) -> Result<String> {
    if rows.is_empty() {
        return Ok(NOT_RUN.to_string());
    }
    length_charts(dir, rows, steps)?;
    Ok(rho_sentences(rows, steps))
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
    let diffs = analytic_differences(rows, steps, level)?;
    let mut s =
        String::from("| steps | metric | CM | Direct | CM − Direct [95 % CI] | better |\n|---|---|---|---|---|---|\n");
    for d in &diffs {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            d.steps,
            d.metric,
            num(d.cm),
            num(d.direct),
            interval_text(&d.interval),
            favours(d)
        );
    }
    let teacher_steps = rows.iter().find(|r| r.method == "teacher").map_or(0, |r| r.steps);
    let teacher = analytic_per_seed(rows, "teacher", teacher_steps, |r| r.exact_ode_error);
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

/// The title, how the numbers were made, and each stage's time.
fn preamble(cfg: &StudyConfig, out: &StudyOutcome, seconds: f64) -> String {
    let stages: String = out
        .stages
        .iter()
        .map(|(s, t)| format!("| {s} | {:.1} |\n", t / 60.0))
        .collect();
    format!(
        "# The study: CM against Direct CM on MNIST latents\n\n\
         Generated by `dcm reproduce --preset study` ({:.0} min on {}). Every number below is from \
         `study.json`; the finding sentences are generated from the paired bootstrap intervals \
         (CM − Direct per seed, {} seeds, exact enumeration of all resamples, {:.0} % percentile \
         interval). Seeds are the resampled unit: each seed trains both students and draws its \
         own evaluation noise, so its difference carries training and evaluation randomness alike. \
         {} evaluation samples per seed ({} per class). FD against the teacher's samples (the paper's \
         metric) heads every table.\n\n\
         | stage | minutes |\n|---|---|\n{stages}\n",
        seconds / 60.0,
        machine(),
        cfg.main.seeds,
        cfg.level * 100.0,
        cfg.main.per_class * out.classes,
        cfg.main.per_class,
    )
}

/// README.md: the preamble, both baselines, the sweeps and the analytic control.
fn readme(
    cfg: &StudyConfig,
    out: &StudyOutcome,
    seconds: f64,
    diffs: [&[Difference]; 2],
    rho: &str,
    analytic: &str,
) -> String {
    let steps = &cfg.main.steps;
    format!(
        "{}{}\n{}\n\
         ## Training length (seed 0 of `{}`, one run to {} steps)\n\n{}\n\
         Spearman's ρ between ODE error and FD vs teacher:\n\n{rho}\n\
         ![FD against training length](training_length_fd.svg)\n\n![ODE error against training length](training_length_ode_error.svg)\n\n\
         ![ODE error against FD](ode_error_vs_fd.svg)\n\n\
         ## Target horizon (seed 0, {} training steps): k teacher steps, then the target network\n\n{}\n![horizon](horizon.svg)\n\n\
         ## Guidance (seed 0, {} training steps, each w judged against its own teacher solve)\n\n{}\n\
         ## Analytic control: `{}` mixture, exact ODE solution ({} seeds, {} samples each)\n\n{analytic}\n",
        preamble(cfg, out, seconds),
        baseline_section("Faithful baseline chosen by CM's stability: full fine-tuning, EMA target 0.95", &out.main, diffs[0], steps, &out.main.rows),
        baseline_section("The paper's code: LoRA students, θ⁻ = θ", &out.other, diffs[1], steps, &out.main.rows),
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
    )
}

/// The CSV files and `study.json` (everything, from which `--rewrite-report` rewrites).
fn write_data(
    dir: &Path,
    cfg: &StudyConfig,
    out: &StudyOutcome,
    seconds: f64,
    diffs: [&[Difference]; 3],
) -> Result<()> {
    write_atomic(&dir.join("results.csv"), rows_csv(&[&out.main, &out.other]).as_bytes())?;
    let sets: [(&str, &[Difference]); 3] = [
        (&out.main.preset, diffs[0]),
        (&out.other.preset, diffs[1]),
        ("analytic", diffs[2]),
    ];
    write_atomic(&dir.join("intervals.csv"), intervals_csv(&sets).as_bytes())?;
    write_atomic(
        &dir.join("training_length.csv"),
        sweep_csv(&out.lengths, "training_steps").as_bytes(),
    )?;
    write_atomic(&dir.join("horizon.csv"), sweep_csv(&out.horizons, "k").as_bytes())?;
    write_atomic(&dir.join("guidance.csv"), sweep_csv(&out.guidance, "w").as_bytes())?;
    write_atomic(&dir.join("analytic.csv"), analytic_csv(&out.analytic).as_bytes())?;
    let json = serde_json::json!({"config": cfg, "seconds": seconds, "machine": machine(),
        "intervals": {"main": diffs[0], "other": diffs[1], "analytic": diffs[2]}, "outcome": out});
    write_atomic(&dir.join("study.json"), serde_json::to_string_pretty(&json)?.as_bytes())
}

/// Writes the study's folder; returns README.md's text.
pub fn write_study(dir: &Path, cfg: &StudyConfig, out: &StudyOutcome, seconds: f64) -> Result<String> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create folder", dir.display()))?;
    let steps = &cfg.main.steps;
    let main = differences(&out.main.rows, steps, cfg.level)?;
    let other = differences(&out.other.rows, steps, cfg.level)?;
    let rho = length_section(dir, &out.lengths, steps)?;
    horizon_chart(dir, &out.horizons, steps)?;
    let (analytic, analytic_diffs) = analytic_section(&out.analytic, steps, cfg.level)?;
    let report = readme(cfg, out, seconds, [&main, &other], &rho, &analytic);
    write_atomic(&dir.join("README.md"), report.as_bytes())?;
    write_data(dir, cfg, out, seconds, [&main, &other, &analytic_diffs])?;
    Ok(report)
}
