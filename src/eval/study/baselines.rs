//! The main baseline's training-length runs and the faithful baselines: the teacher judged
//! once per seed (its own N-step reference and its K-interval DDIM), each sweep seed's CM
//! and Direct run on to the longest length and judged at every kept checkpoint, and CM and
//! Direct at every seed judged at every step count at the baselines' training length.

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
use std::path::{Path, PathBuf};

/// What a baseline produced: its comparison and its students.
pub struct Baseline {
    pub comparison: Comparison,
    pub students: Vec<TrainedStudent>,
}

/// One student's run to the longest training length, its checkpoints kept at every length.
pub struct LongRun {
    pub student: TrainedStudent,
    pub losses: Vec<f32>,
    pub dir: PathBuf,
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
/// keeping a checkpoint at each (under `dir/seedS/METHOD`), judged at every length and
/// step count.
pub fn length_sweep(
    cfg: &ReproduceConfig,
    models: &Models,
    setup: &Setup,
    judges: &[Judge],
    (lengths, dir): (&[usize], &Path),
    seeds: usize,
) -> Result<(Vec<SweepRow>, Vec<LongRun>)> {
    let longest = ReproduceConfig {
        distill_steps: *lengths.iter().max().context("no training lengths")?,
        ..cfg.clone()
    };
    let (mut rows, mut runs) = (Vec::new(), Vec::new());
    for (seed, judge) in judges.iter().enumerate().take(seeds) {
        for method in Method::compared() {
            let dir = dir.join(format!("seed{seed}")).join(method.name());
            let ckpt = Checkpointing {
                dir: Some(dir.clone()),
                keep: lengths.to_vec(),
                ..Default::default()
            };
            let (student, losses) = setup.train(&longest, models, method, seed as u64, ckpt)?;
            eprintln!(
                "  {} seed {seed}: {} steps in {:.0} s",
                method.title(),
                longest.distill_steps,
                student.seconds
            );
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
            runs.push(LongRun { student, losses, dir });
        }
    }
    Ok((rows, runs))
}

/// CM and Direct at every seed at `cfg.distill_steps`, judged at every step count. A seed
/// with a long run among `runs` is read off its kept checkpoint at that length (with a
/// constant learning rate a longer run passes through exactly the shorter one); the others
/// are trained.
pub fn baseline(
    cfg: &ReproduceConfig,
    models: &Models,
    setup: &Setup,
    judges: &[Judge],
    runs: &[LongRun],
) -> Result<Baseline> {
    let mut out = Baseline {
        comparison: Comparison {
            preset: cfg.preset.clone(),
            rows: Vec::new(),
            training: Vec::new(),
        },
        students: Vec::new(),
    };
    for (seed, judge) in judges.iter().enumerate().take(cfg.seeds) {
        let seed = seed as u64;
        for method in Method::compared() {
            let (student, losses) = match runs
                .iter()
                .find(|r| r.student.seed == seed && r.student.method.name() == method.name())
            {
                Some(run) => shortened(cfg, models, run)?,
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

/// `run`'s student at `cfg.distill_steps` from its kept checkpoint, its losses, time and
/// teacher work those of its own steps.
fn shortened(cfg: &ReproduceConfig, models: &Models, run: &LongRun) -> Result<(TrainedStudent, Vec<f32>)> {
    let long = &run.student;
    let fraction = cfg.distill_steps as f64 / long.distill.steps as f64;
    let student = TrainedStudent {
        method: long.method,
        seed: long.seed,
        params: kept_params(cfg, models, &run.dir, cfg.distill_steps)?,
        distill: ReproduceConfig::distill_config(cfg, long.method, long.seed),
        seconds: long.seconds * fraction,
        teacher_evaluations: (long.teacher_evaluations as f64 * fraction) as u64,
    };
    Ok((student, run.losses[..cfg.distill_steps.min(run.losses.len())].to_vec()))
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
