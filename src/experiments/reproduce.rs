//! `dcm reproduce`: the paper's comparison end to end on the shipped MNIST latent
//! setting — teacher reference samples, CM and Direct CM distilled with identical
//! hyper-parameters, every model judged at 1, 2, 4, 8 steps on the same noise — and
//! `--preset study`, the study built on it (docs/study/).

use super::args::refuse;
use super::report::machine::machine;
use super::report::run::write_run;
use super::report::study::write_study;
use super::report::study_record::{StoredStudy, StudyRecord};
use super::reproduce_args::ReproduceArgs;
use crate::data::Dataset;
use crate::eval::comparison;
use crate::eval::model_set::Models;
use crate::eval::reproduce_config::{ReproduceConfig, PAPER_RENAMED};
use crate::eval::students::{save_students, StudentSource};
use crate::eval::study::config::StudyConfig;
use crate::eval::study::run::run as run_study;
use crate::runtime::assets;
use crate::runtime::files::check_output_dir;
use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};

pub fn command(a: ReproduceArgs) -> Result<()> {
    if a.preset == "sd" {
        return super::reproduce_sd::command(a);
    }
    refuse(&a.sd.given(), "applies to --preset sd only")?;
    if a.preset.starts_with("study") {
        return study_command(&a);
    }
    ensure!(!a.rewrite_report, "--rewrite-report: only with --preset study");
    let cfg = config(&a)?;
    let (out_dir, models, source) = open_run(&a, &format!("reproduce-{}", cfg.preset))?;
    let start = std::time::Instant::now();
    let outcome = comparison::run(&cfg, &models)?;
    save_students(&out_dir.join("students"), &source, &outcome.students)?;
    let table = write_run(&out_dir, &cfg, &outcome, start.elapsed().as_secs_f64())?;
    println!("{table}");
    eprintln!(
        "finished in {:.0} s; report in {}",
        start.elapsed().as_secs_f64(),
        out_dir.join("report.md").display()
    );
    Ok(())
}

/// The preset's settings with the flags' overrides, validated. `paper`, the old name of
/// `large`, still runs it, saying why it was renamed.
fn config(a: &ReproduceArgs) -> Result<ReproduceConfig> {
    let preset = if a.preset == "paper" {
        eprintln!("note: {PAPER_RENAMED}");
        "large"
    } else {
        &a.preset
    };
    let mut cfg = ReproduceConfig::preset(preset).context("--preset")?;
    cfg.seeds = a.seeds.unwrap_or(cfg.seeds);
    cfg.intervals = a.intervals.unwrap_or(cfg.intervals);
    cfg.solver = a.solver.unwrap_or(cfg.solver);
    cfg.guidance = a.guidance.unwrap_or(cfg.guidance);
    cfg.distill_steps = a.distill_steps.unwrap_or(cfg.distill_steps);
    cfg.batch = a.batch.unwrap_or(cfg.batch);
    cfg.lr = a.lr.unwrap_or(cfg.lr);
    cfg.per_class = a.per_class.unwrap_or(cfg.per_class);
    cfg.loss = a.loss.unwrap_or(cfg.loss);
    cfg.ema_decay = a.ema_decay.or(cfg.ema_decay);
    cfg.lora = a.lora.lora()?.or(cfg.lora);
    cfg.cosine_decay |= a.cosine_decay;
    cfg.validate()?;
    Ok(cfg)
}

/// The run folder (checked writable; default `runs/NAME`), the shipped or given models with
/// `--data`, and where the run's students come from.
fn open_run(a: &ReproduceArgs, name: &str) -> Result<(PathBuf, Models, StudentSource)> {
    let rt = a.runtime.runtime()?;
    let models_dir = a.models.clone().unwrap_or_else(|| assets::home().join("models"));
    let out_dir = a.out.clone().unwrap_or_else(|| PathBuf::from("runs").join(name));
    check_output_dir(&out_dir, "--out")?;
    let data = Dataset::load(&a.data, 0).with_context(|| format!("--data {}", a.data))?;
    let models = Models::load(&models_dir, data, &rt)?;
    let source = StudentSource {
        teacher: models_dir.join("teacher"),
        data: a.data.clone(),
        net: models.teacher_net.clone(),
    };
    Ok((out_dir, models, source))
}

/// `--preset study` (or `study-smoke`): the whole study into `--out` (default
/// `runs/PRESET`); its settings are fixed so that its results can be compared, so other
/// overrides are refused.
fn study_command(a: &ReproduceArgs) -> Result<()> {
    let overrides = [
        ("--seeds", a.seeds.is_some()),
        ("--solver", a.solver.is_some()),
        ("--intervals", a.intervals.is_some()),
        ("--guidance", a.guidance.is_some()),
        ("--distill-steps", a.distill_steps.is_some()),
        ("--batch", a.batch.is_some()),
        ("--lr", a.lr.is_some()),
        ("--per-class", a.per_class.is_some()),
        ("--loss", a.loss.is_some()),
        ("--ema-decay", a.ema_decay.is_some()),
        ("--cosine-decay", a.cosine_decay),
        ("--lora-rank", a.lora.lora()?.is_some()),
    ];
    if let Some((flag, _)) = overrides.iter().find(|o| o.1) {
        bail!("{flag}: --preset study has fixed settings (only --out, --models and --data apply)");
    }
    if a.rewrite_report {
        let dir = a
            .out
            .as_deref()
            .context("--rewrite-report needs --out DIR (the study's run folder)")?;
        return rewrite_report(dir);
    }
    let cfg = StudyConfig::named(&a.preset)?;
    cfg.validate()?;
    let (out_dir, models, source) = open_run(a, &a.preset)?;
    let start = std::time::Instant::now();
    let machine = machine();
    run_study(&cfg, &models, &source, &out_dir, |o, seconds| {
        let record = StudyRecord {
            config: &cfg,
            outcome: o,
            seconds,
            machine: machine.clone(),
        };
        write_study(&out_dir, &record).map(drop)
    })?;
    eprintln!(
        "study finished in {:.1} min; report in {}",
        start.elapsed().as_secs_f64() / 60.0,
        out_dir.join("README.md").display()
    );
    Ok(())
}

/// Rewrites `dir`'s report from its `study.json` (what `write_study` saved), training nothing.
fn rewrite_report(dir: &Path) -> Result<()> {
    let stored = StoredStudy::load(&dir.join("study.json")).context("--rewrite-report")?;
    write_study(dir, &stored.record())?;
    eprintln!("rewrote {}", dir.join("README.md").display());
    Ok(())
}
