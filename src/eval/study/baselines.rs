//! The main baseline's training-length runs and the faithful baselines: the teacher judged
//! once per seed (its own N-step reference and its K-interval DDIM), each sweep seed's CM
//! and Direct run on to the longest length and judged at every kept checkpoint, and CM and
//! Direct at every seed judged at every step count at the baselines' training length.

use crate::consistency::objective::Method;
use crate::diffusion::solver::Solver;
use crate::diffusion::teacher_ode::TeacherOde;
use crate::eval::judge::Judge;
use crate::eval::model_set::Models;
use crate::eval::records::{Comparison, Metrics, Row, SweepRow, TrainingRecord};
use crate::eval::reproduce_config::ReproduceConfig;
use crate::eval::setup::Setup;
use crate::eval::students::TrainedStudent;
use crate::eval::study::units::Units;
use crate::nets::layers::Params;
use crate::train::checkpoint::load_checkpoint;
use crate::train::trainer::kept_checkpoint;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One student's run to the longest training length, its checkpoints kept at every length
/// in `dir`.
pub struct LongRun {
    pub method: Method,
    pub seed: u64,
    pub dir: PathBuf,
    pub swept: Swept,
}

/// What a training-length run measured: its rows at every kept length and step count, and
/// its training to the longest length.
#[derive(Serialize, Deserialize)]
pub struct Swept {
    pub rows: Vec<SweepRow>,
    pub losses: Vec<f32>,
    pub seconds: f64,
    pub teacher_evaluations: u64,
}

fn row(method: &str, steps: usize, seed: u64, metrics: Metrics) -> Row {
    Row {
        method: method.to_string(),
        steps,
        seed,
        metrics,
    }
}

/// The teacher at `judge`'s seed: its N-step reference itself (`teacher`: the floor of
/// every metric against the data) and its own K-interval DDIM at every step count.
pub fn teacher_rows(cfg: &ReproduceConfig, models: &Models, judge: &Judge, seed: u64) -> Result<Vec<Row>> {
    let mut rows = vec![row("teacher", cfg.intervals, seed, judge.judge(&judge.ref_latents)?.0)];
    for &k in &cfg.steps {
        let coarse =
            TeacherOde::new(Solver::Ddim, k, cfg.guidance)?.solve(&*models.teacher, &judge.noise, &judge.cond)?;
        rows.push(row("teacher DDIM", k, seed, judge.judge(&coarse)?.0));
    }
    Ok(rows)
}

/// Seeds 0 … seeds − 1 of CM and Direct, each trained once to the longest of `lengths`
/// keeping a checkpoint at each (unit `seedS/METHOD`), judged at every length and step count.
pub fn length_sweep(
    cfg: &ReproduceConfig,
    (models, setup): (&Models, &Setup),
    judges: &[Judge],
    (lengths, units): (&[usize], &Units),
    seeds: usize,
) -> Result<(Vec<SweepRow>, Vec<LongRun>)> {
    let longest = ReproduceConfig {
        distill_steps: *lengths.iter().max().context("no training lengths")?,
        ..cfg.clone()
    };
    let (mut rows, mut runs) = (Vec::new(), Vec::new());
    for (seed, judge) in judges.iter().enumerate().take(seeds) {
        for method in Method::compared() {
            let name = format!("seed{seed}/{}", method.name());
            let dir = units.dir(&name);
            let swept = units.run(&name, lengths, |ckpt| {
                let (student, losses) = setup.train(&longest, models, method, seed as u64, ckpt)?;
                eprintln!(
                    "  {} seed {seed}: {} steps in {:.0} s",
                    method.title(),
                    longest.distill_steps,
                    student.seconds
                );
                let mut rows = Vec::new();
                for &n in lengths {
                    let params = kept_params(cfg, models, &dir, n)?;
                    for &k in &cfg.steps {
                        rows.push(SweepRow {
                            setting: n as f64,
                            method: method.title().to_string(),
                            steps: k,
                            seed: seed as u64,
                            metrics: judge.judge(&judge.sample(cfg, &params, k)?)?.0,
                        });
                    }
                }
                Ok(Swept {
                    rows,
                    losses,
                    seconds: student.seconds,
                    teacher_evaluations: student.teacher_evaluations,
                })
            })?;
            rows.extend(swept.rows.iter().cloned());
            runs.push(LongRun {
                method,
                seed: seed as u64,
                dir,
                swept,
            });
        }
    }
    Ok((rows, runs))
}

/// A baseline's rows at one seed and method, and its training record.
type Judged = (Vec<Row>, TrainingRecord);

/// Where a baseline's students go as each is trained.
pub type SaveStudent<'a> = dyn Fn(&TrainedStudent) -> Result<()> + 'a;

/// CM and Direct at every seed at `cfg.distill_steps`, judged at every step count, each
/// student handed to `save` (unit `PRESET/seedS/METHOD`). A seed with a long run among
/// `runs` is read off its kept checkpoint at that length (with a constant learning rate a
/// longer run passes through exactly the shorter one); the others are trained, as is a seed
/// whose kept checkpoint is gone (a study continued from its record and its units' results
/// alone, without their training states).
pub fn baseline(
    cfg: &ReproduceConfig,
    (models, setup): (&Models, &Setup),
    judges: &[Judge],
    runs: &[LongRun],
    (units, save): (&Units, &SaveStudent),
) -> Result<Comparison> {
    let mut out = Comparison {
        preset: cfg.preset.clone(),
        rows: Vec::new(),
        training: Vec::new(),
    };
    for (seed, judge) in judges.iter().enumerate().take(cfg.seeds) {
        let seed = seed as u64;
        for method in Method::compared() {
            let name = format!("{}/seed{seed}/{}", cfg.preset, method.name());
            let (rows, record): Judged = units.run(&name, &[], |ckpt| {
                let long = runs.iter().find(|r| {
                    r.seed == seed
                        && r.method.name() == method.name()
                        && r.dir.join(kept_checkpoint(cfg.distill_steps)).is_file()
                });
                let (student, losses) = match long {
                    Some(run) => shortened(cfg, models, run)?,
                    None => setup.train(cfg, models, method, seed, ckpt)?,
                };
                let mut rows = Vec::new();
                for &k in &cfg.steps {
                    let metrics = judge.judge(&judge.sample(cfg, &student.params, k)?)?.0;
                    rows.push(row(method.title(), k, seed, metrics));
                }
                eprintln!(
                    "  {} seed {seed}: trained in {:.0} s, judged at {:?} steps",
                    method.title(),
                    student.seconds,
                    cfg.steps
                );
                save(&student)?;
                Ok((rows, student.record(losses)))
            })?;
            out.rows.extend(rows);
            out.training.push(record);
        }
    }
    Ok(out)
}

/// `run`'s student at `cfg.distill_steps` from its kept checkpoint, its losses, time and
/// teacher work those of its own steps.
fn shortened(cfg: &ReproduceConfig, models: &Models, run: &LongRun) -> Result<(TrainedStudent, Vec<f32>)> {
    let long = &run.swept;
    let fraction = cfg.distill_steps as f64 / long.losses.len() as f64;
    let student = TrainedStudent {
        method: run.method,
        seed: run.seed,
        params: kept_params(cfg, models, &run.dir, cfg.distill_steps)?,
        distill: ReproduceConfig::distill_config(cfg, run.method, run.seed),
        seconds: long.seconds * fraction,
        teacher_evaluations: (long.teacher_evaluations as f64 * fraction) as u64,
    };
    Ok((
        student,
        long.losses[..cfg.distill_steps.min(long.losses.len())].to_vec(),
    ))
}

/// The student's weights at `step` from its kept checkpoint (LoRA adapters merged in).
fn kept_params(cfg: &ReproduceConfig, models: &Models, dir: &Path, step: usize) -> Result<Params> {
    let (tensors, _) = load_checkpoint(&dir.join(kept_checkpoint(step)))?;
    let trained: Params = tensors
        .into_iter()
        .filter_map(|(k, v)| k.strip_prefix("param/").map(|n| (n.to_string(), v)))
        .collect();
    let trained = models.runtime.frozen(&trained)?;
    match cfg.lora {
        None => Ok(trained),
        Some(lora) => {
            let all: Params = models.teacher_params.clone().into_iter().chain(trained).collect();
            models.teacher_net.build(&all, Some(lora))?.merged_params()
        }
    }
}
