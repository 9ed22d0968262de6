//! One faithful baseline of the study: CM and Direct at every seed, judged at every step
//! count beside the teacher's own K-interval DDIM, and (for the main baseline) seed 0
//! run on to the longest training length, judged at each kept checkpoint.

use crate::consistency::objective::Method;
use crate::diffusion::solver::Solver;
use crate::diffusion::teacher_ode::TeacherOde;
use crate::eval::judge::Judge;
use crate::eval::model_set::Models;
use crate::eval::records::{Comparison, Metrics, Row, SweepRow};
use crate::eval::reproduce_config::ReproduceConfig;
use crate::eval::setup::Setup;
use crate::eval::students::TrainedStudent;
use crate::nets::layers::Params;
use crate::train::checkpoint::load_checkpoint;
use crate::train::trainer::{kept_checkpoint, Checkpointing};
use anyhow::{Context, Result};
use candle_core::Tensor;
use std::path::Path;

/// Training lengths of seed 0 and the folder their checkpoints are kept in.
pub type Lengths<'a> = (&'a [usize], &'a Path);

/// What a baseline produced: its comparison, the training-length rows (with `Lengths`)
/// and its students.
pub struct Baseline {
    pub comparison: Comparison,
    pub lengths: Vec<SweepRow>,
    pub students: Vec<TrainedStudent>,
}

fn row(method: &str, steps: usize, seed: u64, metrics: Metrics) -> Row {
    Row {
        method: method.to_string(),
        steps,
        seed,
        metrics,
    }
}

/// CM and Direct at every seed, judged at every step count beside the teacher's own
/// K-interval DDIM. With `lengths`, seed 0 trains on to the longest length keeping a
/// checkpoint at each (its main student is the one at `distill_steps`: with a constant
/// learning rate a longer run passes through exactly the shorter one).
pub fn baseline(
    cfg: &ReproduceConfig,
    models: &Models,
    setup: &Setup,
    judges: &[Judge],
    lengths: Option<Lengths>,
) -> Result<Baseline> {
    let mut out = Baseline {
        comparison: Comparison {
            preset: cfg.preset.clone(),
            rows: Vec::new(),
            training: Vec::new(),
        },
        lengths: Vec::new(),
        students: Vec::new(),
    };
    for (seed, judge) in judges.iter().enumerate().take(cfg.seeds) {
        let seed = seed as u64;
        // The teacher's own K-interval solve depends only on the reference: judged once.
        if lengths.is_some() {
            for &k in &cfg.steps {
                let coarse = teacher_ddim(cfg, models, judge, k)?;
                out.comparison
                    .rows
                    .push(row("teacher DDIM", k, seed, judge.judge(&coarse)?.0));
            }
        }
        for method in Method::compared() {
            let (student, losses) = match lengths.filter(|_| seed == 0) {
                Some(lengths) => train_lengths(cfg, models, setup, judge, method, lengths, &mut out.lengths)?,
                None => setup.train(cfg, models, method, seed, Default::default())?,
            };
            for &k in &cfg.steps {
                let metrics = judge.judge(&judge.sample(cfg, &student.params, k)?)?.0;
                out.comparison.rows.push(row(method.title(), k, seed, metrics));
            }
            eprintln!(
                "  {} seed {seed}: trained in {:.0} s, judged at {:?} steps",
                method.title(),
                student.seconds,
                cfg.steps
            );
            out.comparison.training.push(student.record(losses));
            out.students.push(student);
        }
    }
    Ok(out)
}

/// Seed 0 of `method` trained through every length, its rows at each added to `rows`.
fn train_lengths(
    cfg: &ReproduceConfig,
    models: &Models,
    setup: &Setup,
    judge: &Judge,
    method: Method,
    (lengths, dir): Lengths,
    rows: &mut Vec<SweepRow>,
) -> Result<(TrainedStudent, Vec<f32>)> {
    let dir = dir.join(method.name());
    let trained = train_through(cfg, models, setup, method, lengths, &dir)?;
    rows.extend(length_rows(cfg, models, judge, method, lengths, &dir)?);
    Ok(trained)
}

/// The teacher's own `k`-interval DDIM from the judge's noise.
fn teacher_ddim(cfg: &ReproduceConfig, models: &Models, judge: &Judge, k: usize) -> Result<Tensor> {
    TeacherOde::new(Solver::Ddim, k, cfg.guidance)?.solve(&*models.teacher, &judge.noise, &judge.cond)
}

/// `method`'s student at each training length, judged at every step count.
fn length_rows(
    cfg: &ReproduceConfig,
    models: &Models,
    judge: &Judge,
    method: Method,
    lengths: &[usize],
    dir: &Path,
) -> Result<Vec<SweepRow>> {
    let mut rows = Vec::new();
    for &n in lengths {
        let params = kept_params(cfg, models, dir, n)?;
        for &k in &cfg.steps {
            rows.push(SweepRow {
                setting: n as f64,
                method: method.title().to_string(),
                steps: k,
                metrics: judge.judge(&judge.sample(cfg, &params, k)?)?.0,
            });
        }
    }
    Ok(rows)
}

/// Seed 0 trained to the longest length, keeping a checkpoint at each; the returned
/// student is the one at `cfg.distill_steps`, its losses those of its own steps.
fn train_through(
    cfg: &ReproduceConfig,
    models: &Models,
    setup: &Setup,
    method: Method,
    lengths: &[usize],
    dir: &Path,
) -> Result<(TrainedStudent, Vec<f32>)> {
    let longest = ReproduceConfig {
        distill_steps: *lengths.iter().max().context("no training lengths")?,
        ..cfg.clone()
    };
    let ckpt = Checkpointing {
        dir: Some(dir.to_path_buf()),
        keep: lengths.to_vec(),
        ..Default::default()
    };
    let (long, mut losses) = setup.train(&longest, models, method, 0, ckpt)?;
    let fraction = cfg.distill_steps as f64 / longest.distill_steps as f64;
    losses.truncate(cfg.distill_steps);
    let student = TrainedStudent {
        params: kept_params(cfg, models, dir, cfg.distill_steps)?,
        distill: ReproduceConfig::distill_config(cfg, method, 0),
        seconds: long.seconds * fraction,
        teacher_evaluations: (long.teacher_evaluations as f64 * fraction) as u64,
        ..long
    };
    Ok((student, losses))
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
