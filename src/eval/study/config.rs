//! The study's settings: both faithful baselines, how their training length is set, the
//! training lengths, target horizons and guidance scales swept (and on how many seeds),
//! the analytic control, and the interval level.

use crate::consistency::objective::Method;
use crate::eval::reproduce_config::ReproduceConfig;
use crate::eval::study::analytic_control::AnalyticConfig;
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

/// How the baselines' training length is set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub enum LengthRule {
    /// A budget: `main.distill_steps` (the study before issue #23).
    #[default]
    Fixed,
    /// A criterion: the shortest swept length at which both students at each of these
    /// sampler step counts have a lower FD vs teacher than the teacher's own DDIM with as
    /// many intervals (`length_choice`).
    Criterion(Vec<usize>),
}

fn one() -> usize {
    1
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StudyConfig {
    /// The baseline the default preset uses (chosen by CM's stability).
    pub main: ReproduceConfig,
    /// The other faithful baseline.
    pub other: ReproduceConfig,
    /// Training-length checkpoints of the main baseline's sweep seeds (one run to the last each).
    pub lengths: Vec<usize>,
    /// Seeds 0 … sweep_seeds − 1 run every sweep.
    #[serde(default = "one")]
    pub sweep_seeds: usize,
    /// Training steps of the horizon and guidance sweeps; None: the baselines' length.
    /// Always one of `lengths`: their CM and Direct at the main settings are the
    /// training-length runs' checkpoints there.
    pub sweep_steps: Option<usize>,
    #[serde(default)]
    pub length_rule: LengthRule,
    /// Target horizons k trained besides k = 1 (CM) and k = N (Direct).
    pub horizons: Vec<usize>,
    /// Guidance scales trained besides the main one.
    pub guidances: Vec<f64>,
    pub analytic: AnalyticConfig,
    /// Confidence level of the intervals and of the sign count's test.
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
    /// `study`: the full study (docs/study/: its stage times give its wall time);
    /// `study-smoke`: every stage at toy size, for tests (seconds).
    pub fn named(name: &str) -> Result<Self> {
        Ok(match name {
            "study" => Self {
                main: sized("default", 500, 5)?,
                other: sized("lora", 500, 5)?,
                lengths: vec![250, 500, 1000, 2000, 4000, 8000],
                sweep_seeds: 3,
                sweep_steps: None,
                length_rule: LengthRule::Criterion(vec![1, 2]),
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
    /// Three seeds, two of them sweeping: the main baseline reads two seeds off the
    /// training-length runs and trains the third.
    fn smoke() -> Result<Self> {
        let main = sized("smoke", 8, 3)?;
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
            sweep_seeds: 2,
            sweep_steps: None,
            length_rule: LengthRule::Criterion(vec![1, 2]),
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
            self.main.seeds >= 2 && self.other.seeds >= 2,
            "the study's intervals need at least 2 seeds per baseline"
        );
        ensure!(
            (1..=self.main.seeds).contains(&self.sweep_seeds),
            "the sweeps' {} seeds must be between 1 and the main baseline's {}",
            self.sweep_seeds,
            self.main.seeds
        );
        match &self.length_rule {
            LengthRule::Fixed => ensure!(
                self.lengths.contains(&self.main.distill_steps),
                "the training lengths must include the main run's {} steps",
                self.main.distill_steps
            ),
            LengthRule::Criterion(steps) => ensure!(
                !steps.is_empty() && steps.iter().all(|k| self.main.steps.contains(k)),
                "the length criterion's step counts {steps:?} must be among the evaluated {:?}",
                self.main.steps
            ),
        }
        if let Some(n) = self.sweep_steps {
            ensure!(
                self.lengths.contains(&n),
                "the training lengths must include the sweeps' {n} steps"
            );
        }
        for &k in &self.horizons {
            horizon_method(k)?;
        }
        Ok(())
    }

    /// Both baselines' settings at training length `steps`.
    pub fn baselines_at(&self, steps: usize) -> (ReproduceConfig, ReproduceConfig) {
        let at = |c: &ReproduceConfig| ReproduceConfig {
            distill_steps: steps,
            ..c.clone()
        };
        (at(&self.main), at(&self.other))
    }

    /// The sweeps' training length when the baselines train `baseline_steps`.
    pub fn sweep_length(&self, baseline_steps: usize) -> usize {
        self.sweep_steps.unwrap_or(baseline_steps)
    }
}

/// The registered objective of target horizon `k`.
pub fn horizon_method(k: usize) -> Result<Method> {
    let name = format!("horizon-{k}");
    Method::all()
        .find(|m| m.name() == name)
        .with_context(|| format!("no registered objective {name}"))
}
