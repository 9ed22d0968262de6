//! Writes a reproduce run folder: report.md, report.json, results.csv, config.json,
//! sample grids, the ODE-error-against-FD chart and the training-loss curves.

use super::chart::{write_chart, Series};
use super::finding::{claim, sentence};
use super::grid::write_grid;
use super::machine::machine;
use super::table::{csv, markdown, summarise, Summary};
use crate::eval::comparison::Outcome;
use crate::eval::difference::differences;
use crate::eval::records::TrainingRecord;
use crate::eval::reproduce_config::ReproduceConfig;
use crate::runtime::files::write_atomic;
use anyhow::{Context, Result};
use std::path::Path;

/// Moving average over `w` steps, as (step, loss) points.
fn smoothed(losses: &[f32], w: usize) -> Vec<(f64, f64, String)> {
    losses
        .windows(w.min(losses.len()).max(1))
        .enumerate()
        .map(|(i, win)| {
            (
                (i + win.len()) as f64,
                win.iter().map(|&l| l as f64).sum::<f64>() / win.len() as f64,
                String::new(),
            )
        })
        .collect()
}

/// The finding sentences, generated from the paired differences over seeds (bootstrap and
/// t-intervals, sign count); one seed has no interval, so it states none.
fn finding(cfg: &ReproduceConfig, out: &Outcome) -> Result<String> {
    if cfg.seeds < 2 {
        return Ok(
            "One seed has no confidence interval, so this report states no finding: `--seeds 5` \
             (or `--preset study`) gives paired bootstrap intervals and the sentences they support.\n"
                .to_string(),
        );
    }
    let diffs = differences(&out.rows, &cfg.steps, 0.95)?;
    let mut s = String::new();
    for &k in &cfg.steps {
        let at = |m: &str| diffs.iter().find(|d| d.steps == k && d.metric == m);
        if let (Some(ode), Some(fd)) = (at("ODE error (latent)"), at("FD vs teacher")) {
            s.push_str(&format!("- {}\n", claim(ode, fd, "the teacher")));
            s.push_str(&format!("- {}\n", sentence(fd)));
        }
    }
    Ok(s)
}

/// The grid's file name of a (method, steps).
fn grid_name(method: &str, steps: usize) -> String {
    format!("samples_{}_{steps}.png", method.to_lowercase().replace(' ', "_"))
}

/// ODE error against FD vs teacher of every (method, steps) mean, and seed 0's loss curves.
fn write_charts(dir: &Path, summary: &[Summary], training: &[TrainingRecord]) -> Result<()> {
    let scatter: Vec<Series> = ["teacher DDIM", "CM", "Direct"]
        .iter()
        .map(|m| Series {
            name: m.to_string(),
            points: summary
                .iter()
                .filter(|s| s.method == *m)
                .map(|s| {
                    (
                        s.mean("FD vs teacher"),
                        s.mean("ODE error (latent)"),
                        format!("{}", s.steps),
                    )
                })
                .collect(),
        })
        .collect();
    write_chart(
        &dir.join("ode_error_vs_fd.svg"),
        "ODE error against FD (labels: steps)",
        "FD vs teacher (lower is better)",
        "ODE error, latent MSE",
        &scatter,
        false,
        true,
    )?;
    let curves: Vec<Series> = training
        .iter()
        .filter(|t| t.seed == 0)
        .map(|t| Series {
            name: t.method.clone(),
            points: smoothed(&t.losses, 20),
        })
        .collect();
    write_chart(
        &dir.join("loss_curves.svg"),
        "Distillation loss (moving average of 20 steps)",
        "step",
        "loss",
        &curves,
        true,
        true,
    )
}

/// One line per trained student: its time, teacher work and final loss.
fn training_rows(training: &[TrainingRecord]) -> String {
    training
        .iter()
        .map(|t| {
            format!(
                "| {} | {} | {:.0} | {} | {:.3e} |\n",
                t.method,
                t.seed,
                t.seconds,
                t.teacher_evaluations,
                t.losses.last().copied().unwrap_or(f32::NAN)
            )
        })
        .collect()
}

/// report.md: the settings, the table, the findings, the training and the figures.
fn report(cfg: &ReproduceConfig, out: &Outcome, table: &str, seconds: f64) -> Result<String> {
    Ok(format!(
        "# dcm reproduce — preset `{}`\n\nMachine: {}. Wall time: {seconds:.0} s. Seeds: {}. {} samples ({} per class), teacher {:?} with N = {} intervals, guidance w = {}.\n\n{table}\n{}\n\
         ## Training\n\n| method | seed | seconds | teacher evaluations (per sample) | final loss |\n|---|---|---|---|---|\n{}\n\
         ## Figures\n\n![ODE error against FD](ode_error_vs_fd.svg)\n\n![loss curves](loss_curves.svg)\n\nSample grids (one row per class, same noise for every model): {}.\n",
        cfg.preset,
        machine(),
        cfg.seeds,
        cfg.per_class * out.classes,
        cfg.per_class,
        cfg.solver,
        cfg.intervals,
        cfg.guidance,
        finding(cfg, out)?,
        training_rows(&out.training),
        out.grids.iter().map(|(m, k, _)| format!("`{}`", grid_name(m, *k))).collect::<Vec<_>>().join(", ")
    ))
}

/// Writes the run folder; returns the Markdown table.
pub fn write_run(dir: &Path, cfg: &ReproduceConfig, out: &Outcome, seconds: f64) -> Result<String> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create folder", dir.display()))?;
    let summary = summarise(&out.rows);
    let table = markdown(&summary);
    for (method, steps, images) in &out.grids {
        write_grid(
            &dir.join(grid_name(method, *steps)),
            images,
            out.classes,
            cfg.grid_columns,
        )?;
    }
    write_charts(dir, &summary, &out.training)?;
    let report = report(cfg, out, &table, seconds)?;
    write_atomic(&dir.join("report.md"), report.as_bytes())?;
    write_atomic(&dir.join("results.csv"), csv(&out.rows).as_bytes())?;
    write_atomic(&dir.join("config.json"), serde_json::to_string_pretty(cfg)?.as_bytes())?;
    let json = serde_json::json!({"config": cfg, "seconds": seconds, "machine": machine(), "summary": summary, "rows": out.rows, "training": out.training});
    write_atomic(
        &dir.join("report.json"),
        serde_json::to_string_pretty(&json)?.as_bytes(),
    )?;
    Ok(table)
}
