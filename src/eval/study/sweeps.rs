//! The study's sweeps at seed 0 and the sweeps' training length: the target horizon k
//! between CM (k = 1) and Direct (k = N), and the guidance scale w.

use crate::consistency::objective::Method;
use crate::eval::judge::Judge;
use crate::eval::model_set::Models;
use crate::eval::records::SweepRow;
use crate::eval::reproduce_config::ReproduceConfig;
use crate::eval::setup::Setup;
use crate::eval::study::config::{horizon_method, StudyConfig};
use anyhow::Result;

/// Seed 0 at each horizon k; k = 1 and k = N are the training-length run's CM and Direct.
pub fn horizon_sweep(
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
    let at = cfg.sweep_config();
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
pub fn guidance_sweep(
    cfg: &StudyConfig,
    models: &Models,
    setup: &Setup,
    lengths: &[SweepRow],
) -> Result<Vec<SweepRow>> {
    let w0 = cfg.main.guidance;
    let mut rows: Vec<SweepRow> = reused(lengths, cfg.sweep_steps, &[("CM", w0), ("Direct", w0)]);
    for &w in &cfg.guidances {
        let at_w = ReproduceConfig {
            guidance: w,
            ..cfg.sweep_config()
        };
        let judge = Judge::new(setup, &at_w, models, 0, w)?;
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
