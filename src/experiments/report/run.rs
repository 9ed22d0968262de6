//! Writes a reproduce run folder: report.md, report.json, results.csv, config.json,
//! sample grids, the ODE-error-against-FD chart and the training-loss curves.

use super::chart::{write_chart, Series};
use super::finding::{claim, sentence, Better};
use super::grid::write_grid;
use super::study::differences;
use super::table::{csv, markdown, summarise};
use crate::experiments::reproduce::{Outcome, ReproduceConfig};
use crate::experiments::study::Comparison;
use crate::runtime::files::write_atomic;
use anyhow::{Context, Result};
use std::path::Path;

/// Machine facts for the report header.
pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{cpu}, {threads} threads, {}", std::env::consts::OS)
}

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

/// The finding sentences, generated from paired bootstrap intervals over seeds; one seed
/// has no interval, so it states none.
fn finding(cfg: &ReproduceConfig, out: &Outcome) -> Result<String> {
    if cfg.seeds < 2 {
        return Ok(
            "One seed has no confidence interval, so this report states no finding: `--seeds 5` \
             (or `--preset study`) gives paired bootstrap intervals and the sentences they support.\n"
                .to_string(),
        );
    }
    let comparison = Comparison {
        preset: cfg.preset.clone(),
        rows: out.rows.clone(),
        training: Vec::new(),
    };
    let diffs = differences(&comparison, &cfg.steps, 0.95)?;
    let mut s = String::new();
    for &k in &cfg.steps {
        let at = |m: &str| diffs.iter().find(|d| d.steps == k && d.metric == m);
        if let (Some(ode), Some(fd)) = (at("ODE error (latent)"), at("FD vs teacher")) {
            s.push_str(&format!("- {}\n", claim(k, &ode.interval, &fd.interval, "the teacher")));
            s.push_str(&format!("- {}\n", sentence(&fd.metric, k, Better::Lower, &fd.interval)));
        }
    }
    Ok(s)
}

pub fn write_run(dir: &Path, cfg: &ReproduceConfig, out: &Outcome, seconds: f64) -> Result<String> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create folder", dir.display()))?;
    let summary = summarise(&out.rows);
    let table = markdown(&summary);
    for (method, steps, images) in &out.grids {
        let name = format!("samples_{}_{steps}.png", method.to_lowercase().replace(' ', "_"));
        write_grid(&dir.join(name), images, out.classes, cfg.grid_columns)?;
    }
    let methods = ["teacher DDIM", "CM", "Direct"];
    let scatter: Vec<Series> = methods
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
    let curves: Vec<Series> = out
        .training
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
    )?;
    let training: String = out
        .training
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
        .collect();
    let report = format!(
        "# dcm reproduce — preset `{}`\n\nMachine: {}. Wall time: {seconds:.0} s. Seeds: {}. {} samples ({} per class), teacher {:?} with N = {} intervals, guidance w = {}.\n\n{table}\n{}\n\
         ## Training\n\n| method | seed | seconds | teacher evaluations (per sample) | final loss |\n|---|---|---|---|---|\n{training}\n\
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
        out.grids.iter().map(|(m, k, _)| format!("`samples_{}_{k}.png`", m.to_lowercase().replace(' ', "_"))).collect::<Vec<_>>().join(", ")
    );
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
