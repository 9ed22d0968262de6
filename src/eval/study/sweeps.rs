//! The study's sweeps at the sweep seeds and the sweeps' training length: the target
//! horizon k between CM (k = 1) and Direct (k = N), and the guidance scale w.

use crate::consistency::objective::Method;
use crate::eval::judge::Judge;
use crate::eval::model_set::Models;
use crate::eval::records::SweepRow;
use crate::eval::reproduce_config::ReproduceConfig;
use crate::eval::setup::Setup;
use crate::eval::study::config::{horizon_method, StudyConfig};
use crate::eval::study::units::{built, Units};
use anyhow::Result;

/// Each sweep seed at each horizon k, trained `steps` (unit `horizon-K/seedS`); k = 1 and
/// k = N are that seed's training-length runs' CM and Direct.
pub fn horizon_sweep(
    cfg: &StudyConfig,
    (models, setup): (&Models, &Setup),
    judges: &[Judge],
    (lengths, steps): (&[SweepRow], usize),
    units: &Units,
) -> Result<Vec<SweepRow>> {
    let mut rows = reused(lengths, steps, &[("CM", 1.0), ("Direct", cfg.main.intervals as f64)]);
    let at = ReproduceConfig {
        distill_steps: steps,
        ..cfg.main.clone()
    };
    for (seed, judge) in judges.iter().enumerate().take(cfg.sweep_seeds) {
        for &k in &cfg.horizons {
            let method = horizon_method(k)?;
            let unit = units.run(&format!("horizon-{k}/seed{seed}"), &[], |ckpt| {
                let (student, _) = setup.train(&at, models, method, seed as u64, ckpt)?;
                eprintln!("  horizon k = {k}, seed {seed}: trained in {:.0} s", student.seconds);
                let mut rows = Vec::new();
                for &sampler in &cfg.main.steps {
                    rows.push(SweepRow {
                        setting: k as f64,
                        method: method.title().to_string(),
                        steps: sampler,
                        seed: seed as u64,
                        metrics: judge.judge(&judge.sample(&at, &student.params, sampler)?)?.0,
                    });
                }
                Ok(rows)
            })?;
            rows.extend(unit);
        }
    }
    sort(&mut rows);
    Ok(rows)
}

/// Setting, method, sampler steps, seed.
fn sort(rows: &mut [SweepRow]) {
    rows.sort_by(|a, b| {
        a.setting
            .total_cmp(&b.setting)
            .then(a.method.cmp(&b.method))
            .then(a.steps.cmp(&b.steps))
            .then(a.seed.cmp(&b.seed))
    });
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
                seed: r.seed,
                metrics: r.metrics.clone(),
            })
        })
        .collect()
}

/// Each sweep seed's CM and Direct distilled at each guidance scale for `steps` (unit
/// `wW/seedS/METHOD`), judged against that scale's own reference solve from the seed's noise
/// (solved only when a unit there is unfinished); the main scale's are the training-length
/// runs'.
pub fn guidance_sweep(
    cfg: &StudyConfig,
    (models, setup): (&Models, &Setup),
    (lengths, steps): (&[SweepRow], usize),
    units: &Units,
) -> Result<Vec<SweepRow>> {
    let w0 = cfg.main.guidance;
    let mut rows: Vec<SweepRow> = reused(lengths, steps, &[("CM", w0), ("Direct", w0)]);
    for seed in 0..cfg.sweep_seeds as u64 {
        for &w in &cfg.guidances {
            let at_w = ReproduceConfig {
                guidance: w,
                distill_steps: steps,
                ..cfg.main.clone()
            };
            let mut judge = None;
            for method in Method::compared() {
                let unit = units.run(&format!("w{w}/seed{seed}/{}", method.name()), &[], |ckpt| {
                    let judge = built(&mut judge, || Judge::new(setup, &at_w, models, seed, w))?;
                    let (student, _) = setup.train(&at_w, models, method, seed, ckpt)?;
                    eprintln!(
                        "  w = {w}, {}, seed {seed}: trained in {:.0} s",
                        method.title(),
                        student.seconds
                    );
                    let mut rows = Vec::new();
                    for &sampler in &cfg.main.steps {
                        rows.push(SweepRow {
                            setting: w,
                            method: method.title().to_string(),
                            steps: sampler,
                            seed,
                            metrics: judge.judge(&judge.sample(&at_w, &student.params, sampler)?)?.0,
                        });
                    }
                    Ok(rows)
                })?;
                rows.extend(unit);
            }
        }
    }
    sort(&mut rows);
    Ok(rows)
}
