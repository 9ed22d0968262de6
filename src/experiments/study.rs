//! `dcm reproduce --preset study`: the paper's claim on MNIST with power — both faithful
//! baselines at 5 seeds and 5,000 evaluation samples — and the sweeps that explain it:
//! training length, target horizon, guidance, and an analytic control (issue #13).

use super::analytic_control::{self, AnalyticConfig, AnalyticRow};
use super::report::study::write_study;
use super::reproduce::{
    save_students, Judge, Metrics, Models, ReproduceConfig, Row, Setup, StudentSource, TrainedStudent, TrainingRecord,
};
use crate::consistency::objective::Method;
use crate::diffusion::discretization::Discretization;
use crate::diffusion::guidance::Guided;
use crate::diffusion::schedule::T;
use crate::diffusion::solver::{solve, Solver};
use crate::nets::layers::Params;
use crate::train::checkpoint::load_checkpoint;
use crate::train::trainer::{kept_checkpoint, Checkpointing};
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StudyConfig {
    /// The baseline the default preset uses (chosen by CM's stability).
    pub main: ReproduceConfig,
    /// The other faithful baseline.
    pub other: ReproduceConfig,
    /// Training-length checkpoints of seed 0 of the main baseline (one run to the last).
    pub lengths: Vec<usize>,
    /// Training steps of the horizon and guidance sweeps (one of `lengths`: their CM and
    /// Direct at the main settings are seed 0's checkpoints there).
    pub sweep_steps: usize,
    /// Target horizons k trained besides k = 1 (CM) and k = N (Direct).
    pub horizons: Vec<usize>,
    /// Guidance scales trained besides the main one.
    pub guidances: Vec<f64>,
    pub analytic: AnalyticConfig,
    /// Confidence level of the paired bootstrap intervals.
    pub level: f64,
}

impl StudyConfig {
    /// `study`: the full study (≈ 1.5 h on 2 cores); `study-smoke`: every stage at toy
    /// size, for tests (seconds).
    pub fn named(name: &str) -> Result<Self> {
        let sized = |preset: &str, per_class: usize, seeds: usize| -> Result<ReproduceConfig> {
            Ok(ReproduceConfig {
                preset: preset.to_string(),
                per_class,
                seeds,
                ..ReproduceConfig::preset(preset)?
            })
        };
        Ok(match name {
            "study" => Self {
                main: sized("default", 500, 5)?,
                other: sized("lora", 500, 5)?,
                lengths: vec![250, 500, 1000, 2000, 4000, 8000],
                sweep_steps: 1000,
                horizons: vec![2, 5, 10, 25],
                guidances: vec![1.0, 4.0, 8.0],
                analytic: AnalyticConfig::study(),
                level: 0.95,
            },
            "study-smoke" => {
                let smoke = |lora: bool| -> Result<ReproduceConfig> {
                    let s = sized("smoke", 8, 2)?;
                    Ok(match lora {
                        false => s,
                        true => ReproduceConfig {
                            preset: "smoke-lora".into(),
                            ema_decay: None,
                            lora: ReproduceConfig::preset("lora")?.lora,
                            ..s
                        },
                    })
                };
                Self {
                    main: smoke(false)?,
                    other: smoke(true)?,
                    lengths: vec![5, 10, 20],
                    sweep_steps: 10,
                    horizons: vec![2, 5],
                    guidances: vec![1.0],
                    analytic: AnalyticConfig {
                        per_class: 10,
                        seeds: 2,
                        train_samples: 500,
                        distill_steps: 20,
                        ..AnalyticConfig::study()
                    },
                    level: 0.95,
                }
            }
            _ => bail!("unknown study '{name}'"),
        })
    }

    pub fn validate(&self) -> Result<()> {
        self.main.validate()?;
        self.other.validate()?;
        ensure!(
            !self.main.cosine_decay,
            "the training-length sweep reads the main students off one long run, which needs a constant learning rate"
        );
        ensure!(
            self.lengths.contains(&self.main.distill_steps),
            "the training lengths must include the main run's {} steps",
            self.main.distill_steps
        );
        ensure!(
            self.lengths.contains(&self.sweep_steps),
            "the training lengths must include the sweeps' {} steps",
            self.sweep_steps
        );
        for &k in &self.horizons {
            horizon_method(k)?;
        }
        Ok(())
    }
}

/// A trained model's metrics in a sweep: `setting` is the training length, horizon k or w.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SweepRow {
    pub setting: f64,
    pub method: String,
    pub steps: usize,
    pub metrics: Metrics,
}

/// One baseline's comparison: every (model, steps, seed) row and the students' training.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Comparison {
    pub preset: String,
    pub rows: Vec<Row>,
    pub training: Vec<TrainingRecord>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct StudyOutcome {
    /// Classes of the MNIST teacher (evaluation samples are `per_class` of each).
    pub classes: usize,
    pub main: Comparison,
    pub other: Comparison,
    pub lengths: Vec<SweepRow>,
    pub horizons: Vec<SweepRow>,
    pub guidance: Vec<SweepRow>,
    pub analytic: Vec<AnalyticRow>,
    /// Evaluation samples per seed of the analytic control.
    pub analytic_samples: usize,
    /// Wall time of each stage.
    pub stages: Vec<(String, f64)>,
}

fn horizon_method(k: usize) -> Result<Method> {
    let name = format!("horizon-{k}");
    Method::all()
        .find(|m| m.name() == name)
        .with_context(|| format!("no registered objective {name}"))
}

/// Prints a stage's start and returns its clock.
fn stage(n: usize, of: usize, what: &str, started: Instant) -> Instant {
    eprintln!(
        "[study {n}/{of}] {what} (study elapsed {:.1} min)",
        started.elapsed().as_secs_f64() / 60.0
    );
    Instant::now()
}

/// Runs every stage, writing the report into `out` after each (a run stopped part-way
/// leaves the report of the stages it finished).
pub fn run(cfg: &StudyConfig, models: &Models, source: &StudentSource, out: &Path) -> Result<StudyOutcome> {
    cfg.validate()?;
    let started = Instant::now();
    let setup = Setup::new(&cfg.main, models)?;
    let empty = |c: &ReproduceConfig| Comparison {
        preset: c.preset.clone(),
        rows: Vec::new(),
        training: Vec::new(),
    };
    let mut o = StudyOutcome {
        classes: setup.classes,
        main: empty(&cfg.main),
        other: empty(&cfg.other),
        lengths: Vec::new(),
        horizons: Vec::new(),
        guidance: Vec::new(),
        analytic: Vec::new(),
        analytic_samples: 0,
        stages: Vec::new(),
    };
    let mut clock = stage(
        1,
        6,
        "references: the teacher's solve from each seed's evaluation noise",
        started,
    );
    let judges: Vec<Judge> = (0..cfg.main.seeds as u64)
        .map(|seed| setup.judge(&cfg.main, models, seed, cfg.main.guidance))
        .collect::<Result<_>>()?;
    let done = |o: &mut StudyOutcome, name: String, clock: Instant| -> Result<()> {
        o.stages.push((name, clock.elapsed().as_secs_f64()));
        write_study(out, cfg, o, started.elapsed().as_secs_f64())?;
        Ok(())
    };
    done(&mut o, "references".into(), clock)?;
    clock = stage(
        2,
        6,
        "main baseline (seed 0 runs on to the longest training length)",
        started,
    );
    let ckpt_dir = out.join("checkpoints");
    let (main, lengths, students) = comparison(&cfg.main, models, &setup, &judges, Some((&cfg.lengths, &ckpt_dir)))?;
    save_students(&out.join("students").join(&cfg.main.preset), source, &students)?;
    (o.main, o.lengths) = (main, lengths);
    done(
        &mut o,
        format!("{} baseline and training length", cfg.main.preset),
        clock,
    )?;
    clock = stage(3, 6, "the other baseline", started);
    let (other, _, students) = comparison(&cfg.other, models, &setup, &judges, None)?;
    save_students(&out.join("students").join(&cfg.other.preset), source, &students)?;
    o.other = other;
    done(&mut o, format!("{} baseline", cfg.other.preset), clock)?;
    clock = stage(4, 6, "analytic control", started);
    (o.analytic, o.analytic_samples) = analytic_control::run(&cfg.analytic, &cfg.main, &models.runtime)?;
    done(&mut o, "analytic control".into(), clock)?;
    clock = stage(5, 6, "target horizon", started);
    o.horizons = horizon_sweep(cfg, models, &setup, &judges[0], &o.lengths)?;
    done(&mut o, "target horizon".into(), clock)?;
    clock = stage(6, 6, "guidance", started);
    o.guidance = guidance_sweep(cfg, models, &setup, &o.lengths)?;
    done(&mut o, "guidance".into(), clock)?;
    Ok(o)
}

/// Rewrites `dir`'s report from its `study.json` (what `write_study` saved).
pub fn rewrite_report(dir: &Path) -> Result<()> {
    let path = dir.join("study.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("--out: cannot read {}", path.display()))?;
    let bad = || format!("{}: not a study report", path.display());
    let mut json: serde_json::Value = serde_json::from_str(&text).with_context(bad)?;
    let cfg: StudyConfig = serde_json::from_value(json["config"].take()).with_context(bad)?;
    let outcome: StudyOutcome = serde_json::from_value(json["outcome"].take()).with_context(bad)?;
    let seconds = json["seconds"].as_f64().with_context(bad)?;
    write_study(dir, &cfg, &outcome, seconds)?;
    eprintln!("rewrote {}", dir.join("README.md").display());
    Ok(())
}

/// CM and Direct at every seed, judged at every step count beside the teacher's own
/// K-interval DDIM. With `lengths`, seed 0 trains on to the longest length keeping a
/// checkpoint at each (its main student is the one at `distill_steps`: with a constant
/// learning rate a longer run passes through exactly the shorter one).
fn comparison(
    cfg: &ReproduceConfig,
    models: &Models,
    setup: &Setup,
    judges: &[Judge],
    lengths: Option<(&Vec<usize>, &Path)>,
) -> Result<(Comparison, Vec<SweepRow>, Vec<TrainedStudent>)> {
    let mut rows = Vec::new();
    let mut training = Vec::new();
    let mut students = Vec::new();
    let mut length_rows = Vec::new();
    let guided = Guided::new(&*models.teacher, cfg.guidance);
    for (seed, judge) in judges.iter().enumerate().take(cfg.seeds) {
        let seed = seed as u64;
        let mut record = |method: &str, steps: usize, metrics: Metrics| {
            rows.push(Row {
                method: method.to_string(),
                steps,
                seed,
                metrics,
            })
        };
        // The teacher's own K-interval solve depends only on the reference: judged once.
        for &k in cfg.steps.iter().filter(|_| lengths.is_some()) {
            let coarse = solve(
                Solver::Ddim,
                &guided,
                &judge.noise,
                Discretization::new(k)?,
                T,
                &judge.cond,
            )?;
            record("teacher DDIM", k, judge.judge(&coarse)?.0);
        }
        for method in Method::compared() {
            let long = lengths.filter(|_| seed == 0);
            let (student, losses) = match long {
                Some((lengths, dir)) => {
                    let (s, losses) = train_through(cfg, models, setup, method, lengths, &dir.join(method.name()))?;
                    for &n in lengths {
                        let params = kept_params(cfg, models, &dir.join(method.name()), n)?;
                        for &k in &cfg.steps {
                            length_rows.push(SweepRow {
                                setting: n as f64,
                                method: method.title().to_string(),
                                steps: k,
                                metrics: judge.judge(&judge.sample(cfg, &params, k)?)?.0,
                            });
                        }
                    }
                    (s, losses)
                }
                None => setup.train(cfg, models, method, seed, Default::default())?,
            };
            for &k in &cfg.steps {
                record(
                    method.title(),
                    k,
                    judge.judge(&judge.sample(cfg, &student.params, k)?)?.0,
                );
            }
            eprintln!(
                "  {} seed {seed}: trained in {:.0} s, judged at {:?} steps",
                method.title(),
                student.seconds,
                cfg.steps
            );
            training.push(TrainingRecord {
                method: method.title().into(),
                seed,
                losses,
                teacher_evaluations: student.teacher_evaluations,
                seconds: student.seconds,
            });
            students.push(student);
        }
    }
    let comparison = Comparison {
        preset: cfg.preset.clone(),
        rows,
        training,
    };
    Ok((comparison, length_rows, students))
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

/// The main settings at the sweeps' training length.
fn sweep_config(cfg: &StudyConfig) -> ReproduceConfig {
    ReproduceConfig {
        distill_steps: cfg.sweep_steps,
        ..cfg.main.clone()
    }
}

/// Seed 0 at each horizon k; k = 1 and k = N are the training-length run's CM and Direct.
fn horizon_sweep(
    cfg: &StudyConfig,
    models: &Models,
    setup: &Setup,
    judge: &Judge,
    lengths: &[SweepRow],
) -> Result<Vec<SweepRow>> {
    let mut rows = reused(
        lengths,
        cfg.sweep_steps,
        &[("CM", 1.0), ("Direct", cfg.main.intervals as f64)],
    );
    let at = sweep_config(cfg);
    for &k in &cfg.horizons {
        let method = horizon_method(k)?;
        let (student, _) = setup.train(&at, models, method, 0, Default::default())?;
        eprintln!("  horizon k = {k}: trained in {:.0} s", student.seconds);
        for &steps in &cfg.main.steps {
            rows.push(SweepRow {
                setting: k as f64,
                method: method.title().to_string(),
                steps,
                metrics: judge.judge(&judge.sample(&at, &student.params, steps)?)?.0,
            });
        }
    }
    rows.sort_by(|a, b| a.setting.total_cmp(&b.setting).then(a.steps.cmp(&b.steps)));
    Ok(rows)
}

/// The training-length rows at `steps` of the named methods, as sweep rows at `setting`.
fn reused(lengths: &[SweepRow], steps: usize, methods: &[(&str, f64)]) -> Vec<SweepRow> {
    lengths
        .iter()
        .filter(|r| r.setting == steps as f64)
        .filter_map(|r| {
            let &(_, setting) = methods.iter().find(|m| m.0 == r.method)?;
            Some(SweepRow {
                setting,
                method: r.method.clone(),
                steps: r.steps,
                metrics: r.metrics.clone(),
            })
        })
        .collect()
}

/// Seed 0 of CM and Direct distilled at each guidance scale, judged against that
/// scale's own reference solve; the main scale's are the training-length run's.
fn guidance_sweep(cfg: &StudyConfig, models: &Models, setup: &Setup, lengths: &[SweepRow]) -> Result<Vec<SweepRow>> {
    let w0 = cfg.main.guidance;
    let mut rows: Vec<SweepRow> = reused(lengths, cfg.sweep_steps, &[("CM", w0), ("Direct", w0)]);
    for &w in &cfg.guidances {
        let at_w = ReproduceConfig {
            guidance: w,
            ..sweep_config(cfg)
        };
        let judge = setup.judge(&at_w, models, 0, w)?;
        for method in Method::compared() {
            let (student, _) = setup.train(&at_w, models, method, 0, Default::default())?;
            eprintln!("  w = {w}, {}: trained in {:.0} s", method.title(), student.seconds);
            for &steps in &cfg.main.steps {
                rows.push(SweepRow {
                    setting: w,
                    method: method.title().to_string(),
                    steps,
                    metrics: judge.judge(&judge.sample(&at_w, &student.params, steps)?)?.0,
                });
            }
        }
    }
    rows.sort_by(|a, b| {
        a.setting
            .total_cmp(&b.setting)
            .then(a.method.cmp(&b.method))
            .then(a.steps.cmp(&b.steps))
    });
    Ok(rows)
}
