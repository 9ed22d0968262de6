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
use super::study_resume::{self, StudyInputs};
use crate::data::Dataset;
use crate::eval::comparison;
use crate::eval::model_set::Models;
use crate::eval::reproduce_config::{ReproduceConfig, PAPER_RENAMED};
use crate::eval::students::{save_students, StudentSource};
use crate::eval::study::config::StudyConfig;
use crate::eval::study::outcome::StudyOutcome;
use crate::eval::study::run::{run as run_study, Resumed};
use crate::runtime::assets;
use crate::runtime::files::check_output_dir;
use crate::runtime::signals::{self, Interrupted, Stopped};
use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};

pub fn command(a: ReproduceArgs) -> Result<()> {
    ensure!(
        a.resume.is_none() || a.preset.starts_with("study"),
        "--resume: only with --preset study (its run folder)"
    );
    if a.preset == "sd" {
        return super::reproduce_sd::command(a);
    }
    refuse(&a.sd.given(), "applies to --preset sd only")?;
    if a.preset.starts_with("study") {
        return study_command(&a);
    }
    ensure!(!a.rewrite_report, "--rewrite-report: only with --preset study");
    let cfg = config(&a)?;
    let out_dir = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(format!("reproduce-{}", cfg.preset)));
    check_output_dir(&out_dir, "--out")?;
    let (models, source) = open_models(&a)?;
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

/// The shipped or given models with `--data`, and where the run's students come from.
fn open_models(a: &ReproduceArgs) -> Result<(Models, StudentSource)> {
    let rt = a.runtime.runtime()?;
    let data = Dataset::load(&a.data, 0).with_context(|| format!("--data {}", a.data))?;
    let models = Models::load(&models_dir(a), data, &rt)?;
    let source = StudentSource {
        teacher: models_dir(a).join("teacher"),
        data: a.data.clone(),
        net: models.teacher_net.clone(),
    };
    Ok((models, source))
}

fn models_dir(a: &ReproduceArgs) -> PathBuf {
    a.models.clone().unwrap_or_else(|| assets::home().join("models"))
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
        ensure!(
            a.resume.is_none(),
            "--resume: not with --rewrite-report (give --out DIR)"
        );
        let dir = a
            .out
            .as_deref()
            .context("--rewrite-report needs --out DIR (the study's run folder)")?;
        return rewrite_report(dir);
    }
    let cfg = StudyConfig::named(&a.preset)?;
    cfg.validate()?;
    let (out_dir, resumed) = study_folder(a, &cfg)?;
    let (models, source) = open_models(a)?;
    let start = std::time::Instant::now();
    let machine = machine();
    let report = |o: &StudyOutcome, seconds| {
        let record = StudyRecord {
            config: &cfg,
            outcome: o,
            seconds,
            machine: machine.clone(),
        };
        write_study(&out_dir, &record).map(drop)
    };
    signals::continue_with(format!(
        "dcm reproduce --preset {} --resume {}",
        a.preset,
        out_dir.display()
    ));
    run_study(&cfg, (&models, &source), &out_dir, resumed, report).map_err(|e| resumable(e, a, &out_dir))?;
    eprintln!(
        "study finished in {:.1} min; report in {}",
        start.elapsed().as_secs_f64() / 60.0,
        out_dir.join("README.md").display()
    );
    Ok(())
}

/// The study's folder — `--resume DIR` (the study recorded there, checked to be this one),
/// or a new study's `--out` (default `runs/PRESET`), whose inputs are recorded for a resume.
fn study_folder(a: &ReproduceArgs, cfg: &StudyConfig) -> Result<(PathBuf, Option<Resumed>)> {
    let inputs = StudyInputs::of(&models_dir(a), &a.data).context("--models")?;
    match (&a.out, &a.resume) {
        (Some(o), Some(r)) => ensure!(
            o == r,
            "--out {} and --resume {} name different folders",
            o.display(),
            r.display()
        ),
        (_, Some(dir)) => {
            check_output_dir(dir, "--resume")?;
            let resumed = study_resume::resumed(dir, cfg, &inputs)?;
            return Ok((dir.clone(), Some(resumed)));
        }
        _ => {}
    }
    let dir = a.out.clone().unwrap_or_else(|| PathBuf::from("runs").join(&a.preset));
    check_output_dir(&dir, "--out")?;
    study_resume::check_new(&dir)?;
    inputs.save(&dir)?;
    Ok((dir, None))
}

/// A study stopped by a signal: its message names the study's folder to resume (or, before
/// its first stage ended, to start again), not the training run's inside it.
fn resumable(e: anyhow::Error, a: &ReproduceArgs, dir: &Path) -> anyhow::Error {
    let interrupted = e.downcast_ref::<Interrupted>().map(|i| Interrupted {
        dir: dir.to_path_buf(),
        ..*i
    });
    if interrupted.is_some() || e.downcast_ref::<Stopped>().is_some() {
        let (how, flag) = match dir.join(study_resume::RECORD).is_file() {
            true => ("continue the study with", "--resume"),
            false => ("the study finished no stage; start it again with", "--out"),
        };
        eprintln!("{how}: dcm reproduce --preset {} {flag} {}", a.preset, dir.display());
    }
    interrupted.map_or(e, Into::into)
}

/// Rewrites `dir`'s report from its `study.json` (what `write_study` saved), training nothing.
fn rewrite_report(dir: &Path) -> Result<()> {
    let stored = StoredStudy::load(&dir.join("study.json")).context("--rewrite-report")?;
    write_study(dir, &stored.record())?;
    eprintln!("rewrote {}", dir.join("README.md").display());
    Ok(())
}
