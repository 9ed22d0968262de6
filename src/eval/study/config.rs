//! The study's settings: both faithful baselines, the training lengths, target horizons
//! and guidance scales swept, the analytic control, and the interval level.

use crate::consistency::objective::Method;
use crate::eval::reproduce_config::ReproduceConfig;
use crate::eval::study::analytic_control::AnalyticConfig;
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

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

/// A preset's settings with its evaluation size and seeds.
fn sized(preset: &str, per_class: usize, seeds: usize) -> Result<ReproduceConfig> {
    Ok(ReproduceConfig {
        preset: preset.to_string(),
        per_class,
        seeds,
        ..ReproduceConfig::preset(preset)?
    })
}

impl StudyConfig {
    /// `study`: the full study (≈ 1.5 h on 2 cores); `study-smoke`: every stage at toy
    /// size, for tests (seconds).
    pub fn named(name: &str) -> Result<Self> {
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
            "study-smoke" => Self::smoke()?,
            _ => bail!("unknown study '{name}'"),
        })
    }

    /// Every stage at toy size; the other baseline is the smoke preset with LoRA students.
    fn smoke() -> Result<Self> {
        let main = sized("smoke", 8, 2)?;
        let other = ReproduceConfig {
            preset: "smoke-lora".into(),
            ema_decay: None,
            lora: ReproduceConfig::preset("lora")?.lora,
            ..main.clone()
        };
        Ok(Self {
            main,
            other,
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

    /// The main settings at the sweeps' training length.
    pub fn sweep_config(&self) -> ReproduceConfig {
        ReproduceConfig {
            distill_steps: self.sweep_steps,
            ..self.main.clone()
        }
    }
}

/// The registered objective of target horizon `k`.
pub fn horizon_method(k: usize) -> Result<Method> {
    let name = format!("horizon-{k}");
    Method::all()
        .find(|m| m.name() == name)
        .with_context(|| format!("no registered objective {name}"))
}
