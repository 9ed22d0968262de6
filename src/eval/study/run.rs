//! The study's stages in order — references and the teacher's own solves, the main
//! baseline's training-length runs (which set the baselines' length), the two baselines,
//! the analytic control, the target horizon and guidance sweeps — saving the baselines'
//! students beside the report.

use crate::eval::judge::Judge;
use crate::eval::model_set::Models;
use crate::eval::records::Comparison;
use crate::eval::reproduce_config::ReproduceConfig;
use crate::eval::setup::Setup;
use crate::eval::students::{save_students, StudentSource};
use crate::eval::study::analytic_control;
use crate::eval::study::baselines::{baseline, length_sweep, teacher_rows};
use crate::eval::study::config::StudyConfig;
use crate::eval::study::outcome::StudyOutcome;
use crate::eval::study::sweeps::{guidance_sweep, horizon_sweep};
use anyhow::Result;
use std::path::Path;
use std::time::Instant;

const STAGES: usize = 7;

/// Prints a stage's start and returns its clock.
fn stage(n: usize, what: &str, started: Instant) -> Instant {
    eprintln!(
        "[study {n}/{STAGES}] {what} (study elapsed {:.1} min)",
        started.elapsed().as_secs_f64() / 60.0
    );
    Instant::now()
}

/// The outcome before any stage has run.
fn nothing_yet(cfg: &StudyConfig, classes: usize) -> StudyOutcome {
    let empty = |c: &ReproduceConfig| Comparison {
        preset: c.preset.clone(),
        rows: Vec::new(),
        training: Vec::new(),
    };
    StudyOutcome {
        classes,
        main: empty(&cfg.main),
        other: empty(&cfg.other),
        lengths: Vec::new(),
        horizons: Vec::new(),
        guidance: Vec::new(),
        analytic: Vec::new(),
        analytic_samples: 0,
        stages: Vec::new(),
    }
}

/// Each seed's judge — its evaluation noise and the teacher's reference solve from it — with
/// the teacher's own rows added to the main baseline's.
fn references<'a>(
    cfg: &StudyConfig,
    models: &'a Models,
    setup: &Setup,
    o: &mut StudyOutcome,
) -> Result<Vec<Judge<'a>>> {
    let judges: Vec<Judge> = (0..cfg.main.seeds as u64)
        .map(|seed| Judge::new(setup, &cfg.main, models, seed, cfg.main.guidance))
        .collect::<Result<_>>()?;
    for (seed, judge) in judges.iter().enumerate() {
        o.main.rows.extend(teacher_rows(&cfg.main, models, judge, seed as u64)?);
    }
    Ok(judges)
}

/// Runs every stage into `out` (checkpoints and students), handing the outcome so far and
/// the study's seconds to `report` after each, so that a run stopped part-way leaves the
/// report of the stages it finished.
pub fn run(
    cfg: &StudyConfig,
    models: &Models,
    source: &StudentSource,
    out: &Path,
    mut report: impl FnMut(&StudyOutcome, f64) -> Result<()>,
) -> Result<StudyOutcome> {
    cfg.validate()?;
    let started = Instant::now();
    let setup = Setup::new(&cfg.main, models)?;
    let mut o = nothing_yet(cfg, setup.classes);
    let mut done = |o: &mut StudyOutcome, name: String, clock: Instant| -> Result<()> {
        o.stages.push((name, clock.elapsed().as_secs_f64()));
        report(o, started.elapsed().as_secs_f64())
    };
    let mut clock = stage(
        1,
        "references: the teacher's own solves from each seed's noise",
        started,
    );
    let judges = references(cfg, models, &setup, &mut o)?;
    done(&mut o, "references".into(), clock)?;
    let seeds = cfg.sweep_seeds;
    clock = stage(
        2,
        &format!("training length: {seeds} seed(s), one run each to the longest"),
        started,
    );
    let dir = out.join("checkpoints");
    let (rows, runs) = length_sweep(&cfg.main, models, &setup, &judges, (&cfg.lengths, &dir), seeds)?;
    o.lengths = rows;
    done(&mut o, "training length".into(), clock)?;
    let steps = o.baseline_steps(cfg)?;
    let (main_cfg, other_cfg) = cfg.baselines_at(steps);
    clock = stage(3, &format!("main baseline at {steps} training steps"), started);
    let main = baseline(&main_cfg, models, &setup, &judges, &runs)?;
    save_students(&out.join("students").join(&cfg.main.preset), source, &main.students)?;
    o.main.rows.extend(main.comparison.rows);
    o.main.training = main.comparison.training;
    done(&mut o, format!("{} baseline", cfg.main.preset), clock)?;
    clock = stage(4, "the other baseline", started);
    let other = baseline(&other_cfg, models, &setup, &judges, &[])?;
    save_students(&out.join("students").join(&cfg.other.preset), source, &other.students)?;
    o.other = other.comparison;
    done(&mut o, format!("{} baseline", cfg.other.preset), clock)?;
    clock = stage(5, "analytic control", started);
    (o.analytic, o.analytic_samples) = analytic_control::run(&cfg.analytic, &cfg.main, &models.runtime)?;
    done(&mut o, "analytic control".into(), clock)?;
    let sweep = cfg.sweep_length(steps);
    clock = stage(6, "target horizon", started);
    o.horizons = horizon_sweep(cfg, models, &setup, &judges, (&o.lengths, sweep))?;
    done(&mut o, "target horizon".into(), clock)?;
    clock = stage(7, "guidance", started);
    o.guidance = guidance_sweep(cfg, models, &setup, (&o.lengths, sweep))?;
    done(&mut o, "guidance".into(), clock)?;
    Ok(o)
}
