//! The study's folder (`docs/study/`): README.md — every table and sentence generated from
//! the record — with CSV and JSON beside it, the charts, and the Results block of the
//! repository's README (`summary.md`, `study_summary`). The text is a function of
//! `study.json` alone, so `--rewrite-report` rewrites it without retraining.

use super::chart::{write_chart, Series};
use super::finding::{bounds, difference_cells, favours, num};
use super::horizon_steps::horizon_step_table;
use super::length_criterion::criterion_section;
use super::rank_correlation::rank_section;
use super::study_findings::{
    analytic_claims, baseline_claims, baseline_name, bullets, disagreements, horizon_sentences, length_caveats,
    length_order,
};
use super::study_record::{part_way, Differences, StudyRecord};
use super::study_summary::summary;
use super::sweep_report::{
    mean_at, seed_note, seeds, settings, shown, sweep_csv, sweep_difference_table, sweep_table, SWEPT,
};
use super::teacher_kd::teacher_section;
use crate::eval::difference::{analytic_per_seed, mean, per_seed, Difference};
use crate::eval::records::{Comparison, Metrics, Row, SweepRow, COLUMNS};
use crate::eval::reproduce_config::ReproduceConfig;
use crate::eval::spearman::{fisher_interval, spearman};
use crate::eval::study::analytic_control::AnalyticRow;
use crate::eval::study::config::StudyConfig;
use crate::eval::study::outcome::StudyOutcome;
use crate::runtime::files::write_atomic;
use anyhow::{Context, Result};
use std::fmt::Write as _;
use std::path::Path;

/// The texts of the study's folder.
pub struct Rendered {
    pub readme: String,
    /// The Results block of the repository's README.
    pub summary: String,
    pub intervals_csv: String,
    pub results_csv: String,
}

/// One table per step count: both means, CM − Direct with both intervals and the sign
/// count, and the verdict.
fn comparison_tables(diffs: &[Difference], steps: &[usize], teacher: &[Row]) -> String {
    let mut s = String::new();
    for &k in steps {
        let fd = mean(&per_seed(teacher, "teacher DDIM", k, |m| m.fd_teacher));
        let _ = writeln!(
            s,
            "\n**{k} step{}** (teacher's own {k}-interval DDIM: FD vs teacher {})\n\n\
             | metric | CM | Direct | CM − Direct | bootstrap | t-interval | seeds with its sign | verdict |\n|---|---|---|---|---|---|---|---|",
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
                difference_cells(d),
                favours(d)
            );
        }
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

const NOT_RUN: &str = "Not run yet.\n";

fn baseline_section(
    cfg: &ReproduceConfig,
    c: &Comparison,
    diffs: &[Difference],
    length: usize,
    teacher: &[Row],
) -> String {
    let name = baseline_name(cfg);
    let title = format!(
        "{}{} (`--preset {}`, {length} training steps)",
        name[..1].to_uppercase(),
        &name[1..],
        c.preset
    );
    if diffs.is_empty() {
        return format!("## {title}\n\n{NOT_RUN}\n");
    }
    format!(
        "## {title}\n\n### The paper's claim, step count by step count\n\n{}\n### Every metric\n{}\n### Training\n\n{}\n",
        bullets(&baseline_claims(diffs, &cfg.steps)),
        comparison_tables(diffs, &cfg.steps, teacher),
        training_table(c)
    )
}

fn disagreement_section(cfg: &StudyConfig, out: &StudyOutcome, d: &Differences) -> String {
    let v = disagreements(cfg, out, d);
    let intro = "Points where the method (along the horizon family: the neighbouring horizon) with the lower ODE error has the higher FD vs teacher — the paper's pattern or its reverse. Baselines and the analytic control compare means over seeds with their intervals; the sweeps compare means over their seeds, each side marked resolved or not where the sweep has seeds to pair.";
    if v.is_empty() {
        format!("{intro}\n\nNone.\n")
    } else {
        format!("{intro} {} points:\n\n{}", v.len(), bullets(&v))
    }
}

/// One curve per (method, step count) of `get` (mean over seeds) against log₂ training steps.
fn length_curves(rows: &[SweepRow], steps: &[usize], get: fn(&Metrics) -> f64) -> Vec<Series> {
    ["CM", "Direct"]
        .iter()
        .flat_map(|m| {
            steps.iter().map(move |&k| Series {
                name: format!("{m}, {k} step{}", if k == 1 { "" } else { "s" }),
                points: settings(rows)
                    .into_iter()
                    .filter_map(|s| Some((s.log2(), mean_at(rows, s, m, k, get)?, String::new())))
                    .collect(),
            })
        })
        .collect()
}

/// Charts of the training-length sweep: FD and ODE error against length, and ODE error
/// against FD over every checkpoint and seed.
fn length_charts(dir: &Path, rows: &[SweepRow], steps: &[usize]) -> Result<()> {
    let all = settings(rows);
    let x = format!(
        "log₂ training steps ({:.0} = {}, {:.0} = {})",
        all[0].log2(),
        shown(all[0]),
        all[all.len() - 1].log2(),
        shown(all[all.len() - 1])
    );
    let means = format!("({})", seed_note(rows));
    write_chart(
        &dir.join("training_length_fd.svg"),
        &format!("FD vs teacher against training length {means}"),
        &x,
        "FD vs teacher",
        &length_curves(rows, steps, |m| m.fd_teacher),
        true,
        true,
    )?;
    write_chart(
        &dir.join("training_length_ode_error.svg"),
        &format!("ODE error against training length {means}"),
        &x,
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

fn horizon_chart(dir: &Path, rows: &[SweepRow], steps: &[usize]) -> Result<()> {
    let series: Vec<Series> = steps
        .iter()
        .map(|&k| Series {
            name: format!("{k} step{}", if k == 1 { "" } else { "s" }),
            points: settings(rows)
                .into_iter()
                .filter_map(|h| {
                    let method = &rows.iter().find(|r| r.setting == h)?.method;
                    Some((h.log10(), mean_at(rows, h, method, k, SWEPT[0].1)?, shown(h)))
                })
                .collect(),
        })
        .collect();
    write_chart(
        &dir.join("horizon.svg"),
        &format!("FD vs teacher against the target horizon k ({})", seed_note(rows)),
        "log₁₀ k (k = 1: CM; k = N: Direct)",
        "FD vs teacher",
        &series,
        true,
        true,
    )
}

fn length_section(dir: Option<&Path>, cfg: &StudyConfig, out: &StudyOutcome, d: &Differences) -> Result<String> {
    let rows = &out.lengths;
    if rows.is_empty() {
        return Ok(NOT_RUN.to_string());
    }
    if let Some(dir) = dir {
        length_charts(dir, rows, &cfg.main.steps)?;
    }
    Ok(format!(
        "{}:\n\n{}{}\n{}\n{}\n\
         ![FD against training length](training_length_fd.svg)\n\n![ODE error against training length](training_length_ode_error.svg)\n\n\
         ![ODE error against FD](ode_error_vs_fd.svg)\n",
        match seeds(rows) {
            1 => "One seed".to_string(),
            n => format!("Means over {n} seeds"),
        },
        sweep_table(rows, "training steps", &cfg.main.steps),
        sweep_difference_table(&d.lengths, "training steps"),
        bullets(&length_order(rows, &d.lengths, &cfg.main.steps)),
        rank_section(rows, &cfg.main.steps, cfg.level)?
    ))
}

fn horizon_section(dir: Option<&Path>, cfg: &StudyConfig, out: &StudyOutcome, d: &Differences) -> Result<String> {
    let rows = &out.horizons;
    if rows.is_empty() {
        return Ok(NOT_RUN.to_string());
    }
    if let Some(dir) = dir {
        horizon_chart(dir, rows, &cfg.main.steps)?;
    }
    Ok(format!(
        "{}\n{}{}\n![horizon](horizon.svg)\n",
        sweep_table(rows, "k", &cfg.main.steps),
        bullets(&horizon_sentences(rows, &d.horizons, &cfg.main.steps)),
        horizon_step_table(&d.horizons)
    ))
}

fn guidance_section(cfg: &StudyConfig, out: &StudyOutcome, d: &Differences) -> String {
    if out.guidance.is_empty() {
        return NOT_RUN.to_string();
    }
    format!(
        "{}{}",
        sweep_table(&out.guidance, "w", &cfg.main.steps),
        sweep_difference_table(&d.guidance, "w")
    )
}

/// ρ of exact ODE error against FD per method and step count over the control's seeds
/// (independent points: Fisher's z), and pooled beside them.
fn analytic_rho(rows: &[AnalyticRow], steps: &[usize], level: f64) -> Result<String> {
    let mut s = format!(
        "Spearman's ρ of exact ODE error against FD vs exact samples over the seeds, per method and step count ({} % interval by Fisher's z):\n\n| method | steps | ρ [interval] |\n|---|---|---|\n",
        level * 100.0
    );
    for m in ["CM", "Direct"] {
        for &k in steps {
            let x = analytic_per_seed(rows, m, k, |r| r.exact_ode_error);
            let y = analytic_per_seed(rows, m, k, |r| r.fd_exact);
            let cell = match spearman(&x, &y) {
                Ok(r) => match fisher_interval(r, x.len(), level)? {
                    Some(ci) => format!("{} {}", num(r), bounds(&ci)),
                    None => num(r),
                },
                Err(_) => "undefined".into(),
            };
            let _ = writeln!(s, "| {m} | {k} | {cell} |");
        }
    }
    let students: Vec<&AnalyticRow> = rows.iter().filter(|r| r.method != "teacher").collect();
    let x: Vec<f64> = students.iter().map(|r| r.exact_ode_error).collect();
    let y: Vec<f64> = students.iter().map(|r| r.fd_exact).collect();
    if let Ok(r) = spearman(&x, &y) {
        let _ = writeln!(
            s,
            "\nBeside them only, pooled over both students, every seed and step count ({} points): ρ = {}.",
            x.len(),
            num(r)
        );
    }
    Ok(s)
}

/// The analytic control's differences per step count and metric, its claims and ρ.
fn analytic_section(cfg: &StudyConfig, rows: &[AnalyticRow], diffs: &[Difference]) -> Result<String> {
    if rows.is_empty() {
        return Ok(NOT_RUN.to_string());
    }
    let mut s = String::from(
        "| steps | metric | CM | Direct | CM − Direct | bootstrap | t-interval | seeds with its sign | verdict |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for d in diffs {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            d.steps,
            d.metric,
            num(d.cm),
            num(d.direct),
            difference_cells(d),
            favours(d)
        );
    }
    let teacher_steps = rows.iter().find(|r| r.method == "teacher").map_or(0, |r| r.steps);
    let teacher = analytic_per_seed(rows, "teacher", teacher_steps, |r| r.exact_ode_error);
    let _ = writeln!(
        s,
        "\nThe teacher's own N-step solve: ODE error against the exact solution {} (mean over seeds).\n\n{}\n{}",
        num(mean(&teacher)),
        bullets(&analytic_claims(cfg, diffs)),
        analytic_rho(rows, &cfg.main.steps, cfg.level)?
    );
    Ok(s)
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

fn intervals_csv(sets: &[(&str, &[Difference])], sweeps: &[(&str, &[(f64, Difference)])]) -> String {
    let mut s = String::from(
        "comparison,setting,steps,metric,cm_mean,direct_mean,difference,low,high,t_low,t_high,seeds_with_sign,seeds,resolved\n",
    );
    let mut line = |name: &str, setting: String, d: &Difference| {
        let (i, t) = (&d.interval, &d.t_interval);
        let _ = writeln!(
            s,
            "{name},{setting},{},{},{},{},{},{},{},{},{},{},{},{}",
            d.steps,
            d.metric,
            d.cm,
            d.direct,
            i.estimate,
            i.low,
            i.high,
            t.low,
            t.high,
            d.signs.with_sign_of(i.estimate),
            d.signs.pairs,
            d.resolved()
        );
    };
    for (name, diffs) in sets {
        for d in diffs.iter() {
            line(name, String::new(), d);
        }
    }
    for (name, diffs) in sweeps {
        for (v, d) in diffs.iter() {
            line(name, shown(*v), d);
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

/// How the numbers are made, and each stage's time.
fn preamble(r: &StudyRecord) -> String {
    let (cfg, out) = (r.config, r.outcome);
    let stages: String = out
        .stages
        .iter()
        .map(|(s, t)| format!("| {s} | {:.1} |\n", t / 60.0))
        .collect();
    format!(
        "# The study: CM against Direct CM on MNIST latents\n\n\
         Generated by `dcm reproduce --preset study` ({:.0} min on {}); `dcm reproduce --preset study \
         --rewrite-report --out DIR` rewrites it from `DIR/study.json` alone. Every number and sentence \
         below is generated from that file.\n\n\
         **How the numbers are made.** Seeds are the resampled unit: each seed trains both students and \
         draws its own evaluation noise ({} samples, {} per class), so its CM − Direct difference carries \
         training and evaluation randomness alike. Every difference is shown with three checks at {:.0} %: \
         the percentile bootstrap interval over seeds (all resamples enumerated when there are at most \
         10⁶), the t-interval (df = seeds − 1), and the sign count — the seeds whose difference has the \
         mean's sign, against the count an exact two-sided sign test needs (all of them when no count of \
         so few seeds can reach the level). A verdict names a method only when all three agree; otherwise \
         it says *not resolved*. **FD vs teacher** is the Fréchet distance between a model's samples and \
         the teacher's from the same noise on the features of the shipped MNIST classifier: an analogue \
         of the paper's FD (Inception or DINOv2 features of SDXL images), not the paper's metric itself. \
         The sweeps are {}.\n\n\
         {}| stage | minutes |\n|---|---|\n{stages}\n",
        r.seconds / 60.0,
        r.machine,
        cfg.main.per_class * out.classes,
        cfg.main.per_class,
        cfg.level * 100.0,
        match cfg.sweep_seeds {
            1 => "on one seed: descriptive, with no interval".to_string(),
            n => format!("on {n} seeds"),
        },
        part_way(&out.stages)
    )
}

/// README.md: the preamble, the training length, the teacher's own solves, both
/// baselines, the disagreements, the sweeps and the analytic control.
fn readme(dir: Option<&Path>, r: &StudyRecord, d: &Differences) -> Result<String> {
    let (cfg, out) = (r.config, r.outcome);
    let length = out.baseline_steps(cfg)?;
    let sweep_length = cfg.sweep_length(length);
    let longest = cfg.lengths.iter().max().copied().unwrap_or(0);
    let (main_cfg, other_cfg) = cfg.baselines_at(length);
    Ok(format!(
        "{}## Training length\n\n{}\n{}\
         ## The teacher's own solves, and KD\n\n{}\n\
         {}\n{}\n\
         ## Where ODE error and FD vs teacher disagree\n\n{}\n\
         ## Training length sweep ({}: `{}`, one run each to {longest} steps)\n\n{}\n\
         ## Target horizon ({}, {sweep_length} training steps): k teacher steps, then the target network\n\n{}\n\
         ## Guidance ({}, {sweep_length} training steps, each w judged against its own teacher solve)\n\n{}\n\
         ## Analytic control: `{}` mixture, exact ODE solution ({} seeds, {} samples each)\n\n{}",
        preamble(r),
        criterion_section(cfg, out)?,
        match bullets(&length_caveats(&out.lengths, &d.lengths, &cfg.main.steps)) {
            b if b.is_empty() => b,
            b => b + "\n",
        },
        teacher_section(&out.main.rows, &cfg.main.steps),
        baseline_section(&main_cfg, &out.main, &d.main, length, &out.main.rows),
        baseline_section(&other_cfg, &out.other, &d.other, length, &out.main.rows),
        disagreement_section(cfg, out, d),
        seed_note(&out.lengths),
        cfg.main.preset,
        length_section(dir, cfg, out, d)?,
        seed_note(&out.horizons),
        horizon_section(dir, cfg, out, d)?,
        seed_note(&out.guidance),
        guidance_section(cfg, out, d),
        cfg.analytic.toy,
        cfg.analytic.seeds,
        out.analytic_samples,
        analytic_section(cfg, &out.analytic, &d.analytic)?,
    ))
}

/// The texts of the study's folder; with `charts`, the charts are written there too.
pub fn render(r: &StudyRecord, charts: Option<&Path>) -> Result<Rendered> {
    let (cfg, out) = (r.config, r.outcome);
    let d = Differences::of(cfg, out)?;
    let sets: [(&str, &[Difference]); 3] = [
        (&out.main.preset, &d.main),
        (&out.other.preset, &d.other),
        ("analytic", &d.analytic),
    ];
    let sweeps: [(&str, &[(f64, Difference)]); 2] = [("training length", &d.lengths), ("guidance", &d.guidance)];
    Ok(Rendered {
        readme: readme(charts, r, &d)?,
        summary: summary(r, &d)?,
        intervals_csv: intervals_csv(&sets, &sweeps),
        results_csv: rows_csv(&[&out.main, &out.other]),
    })
}

/// Writes the study's folder from its record; returns README.md's text.
pub fn write_study(dir: &Path, r: &StudyRecord) -> Result<String> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create folder", dir.display()))?;
    let (cfg, out) = (r.config, r.outcome);
    let text = render(r, Some(dir))?;
    write_atomic(&dir.join("README.md"), text.readme.as_bytes())?;
    write_atomic(&dir.join("summary.md"), text.summary.as_bytes())?;
    write_atomic(&dir.join("results.csv"), text.results_csv.as_bytes())?;
    write_atomic(&dir.join("intervals.csv"), text.intervals_csv.as_bytes())?;
    write_atomic(
        &dir.join("training_length.csv"),
        sweep_csv(&out.lengths, "training_steps").as_bytes(),
    )?;
    write_atomic(&dir.join("horizon.csv"), sweep_csv(&out.horizons, "k").as_bytes())?;
    write_atomic(&dir.join("guidance.csv"), sweep_csv(&out.guidance, "w").as_bytes())?;
    write_atomic(&dir.join("analytic.csv"), analytic_csv(&out.analytic).as_bytes())?;
    let d = Differences::of(cfg, out)?;
    let json = serde_json::json!({"config": cfg, "seconds": r.seconds, "machine": r.machine,
        "intervals": {"main": d.main, "other": d.other, "analytic": d.analytic,
            "training_length": d.lengths, "guidance": d.guidance, "horizon": d.horizons}, "outcome": out});
    write_atomic(&dir.join("study.json"), serde_json::to_string_pretty(&json)?.as_bytes())?;
    Ok(text.readme)
}
