//! `scheduler/scheduler_config.json`: the forward process a diffusers UNet was trained with
//! (β sequence) and what it predicts. Only these keys matter: dcm solves with its own
//! solvers, so a pipeline's sampling settings (`timestep_spacing`, `steps_offset`, …) are ignored.

use super::json::JsonFile;
use crate::diffusion::prediction::Prediction;
use crate::diffusion::schedule::{DiffusersBetas, Schedule, T};
use anyhow::{ensure, Result};
use std::path::Path;

/// The parts of a scheduler config that define the teacher.
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    pub schedule: Schedule,
    pub prediction: Prediction,
}

impl SchedulerConfig {
    /// Reads a `scheduler_config.json`; missing keys take diffusers' defaults (`linear` β from
    /// 1e-4 to 0.02, `epsilon`). Errors are one line naming the file and the key.
    pub fn from_file(path: &Path) -> Result<Self> {
        let json = JsonFile::read(path)?;
        let steps = json.usize_or("num_train_timesteps", T)?;
        ensure!(
            steps == T,
            json.error("num_train_timesteps", format!("is {steps}, but dcm's T is {T}"))
        );
        ensure!(
            !json.bool_or("rescale_betas_zero_snr", false)?,
            json.error(
                "rescale_betas_zero_snr",
                "is true: zero-terminal-SNR schedules are not supported"
            )
        );
        let spec = match json.f64s("trained_betas")? {
            Some(betas) => DiffusersBetas::Trained(betas),
            None => DiffusersBetas::Named {
                schedule: json.str_or("beta_schedule", "linear")?.to_string(),
                start: json.f64_or("beta_start", 1e-4)?,
                end: json.f64_or("beta_end", 0.02)?,
            },
        };
        let key = match spec {
            DiffusersBetas::Trained(_) => "trained_betas",
            DiffusersBetas::Named { .. } => "beta_schedule",
        };
        let schedule =
            Schedule::from_diffusers(&spec).map_err(|e| json.error(key, format!("gives no schedule: {e}")))?;
        let prediction = match json.str_or("prediction_type", "epsilon")? {
            "epsilon" => Prediction::Epsilon,
            "v_prediction" => Prediction::V,
            other => {
                return Err(json.error(
                    "prediction_type",
                    format!("is '{other}' (supported: epsilon, v_prediction)"),
                ))
            }
        };
        Ok(Self { schedule, prediction })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::schedule::ScheduleKind;

    fn fixture(model: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/sd/{model}/scheduler/scheduler_config.json"))
    }

    fn parse(json: &str) -> Result<SchedulerConfig> {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("dcm-sched-{}-{n}.json", std::process::id()));
        std::fs::write(&path, json).unwrap();
        let parsed = SchedulerConfig::from_file(&path);
        std::fs::remove_file(&path).unwrap();
        parsed
    }

    /// The fixtures' schedulers (PNDM, DDIM with v-prediction, Euler) are SD's schedule.
    #[test]
    fn fixture_schedulers() {
        for (model, prediction) in [
            ("sd1", Prediction::Epsilon),
            ("sd2", Prediction::V),
            ("sdxl", Prediction::Epsilon),
        ] {
            let cfg = SchedulerConfig::from_file(&fixture(model)).unwrap();
            assert_eq!(cfg.schedule.kind(), Some(ScheduleKind::ScaledLinear), "{model}");
            assert_eq!(cfg.prediction, prediction, "{model}");
        }
    }

    #[test]
    fn defaults_and_trained_betas() {
        let cfg = parse("{}").unwrap();
        assert_eq!(cfg.schedule.kind(), Some(ScheduleKind::Linear));
        let betas: Vec<String> = (0..T).map(|i| format!("{}", 0.001 + i as f64 * 1e-5)).collect();
        let cfg = parse(&format!(
            "{{\"trained_betas\": [{}], \"beta_schedule\": \"nope\"}}",
            betas.join(",")
        ))
        .unwrap();
        assert_eq!(cfg.schedule.kind(), None);
        assert!((cfg.schedule.beta(T) - (0.001 + 999e-5)).abs() < 1e-15);
    }

    /// Each bad value is one line naming the file and the key.
    #[test]
    fn errors_name_the_key() {
        let cases = [
            (
                r#"{"num_train_timesteps": 500}"#,
                "'num_train_timesteps' is 500, but dcm's T is 1000",
            ),
            (
                r#"{"num_train_timesteps": "1000"}"#,
                "'num_train_timesteps' is \"1000\"",
            ),
            (
                r#"{"beta_schedule": "sigmoid"}"#,
                "'beta_schedule' gives no schedule: beta_schedule 'sigmoid'",
            ),
            (r#"{"beta_start": "x"}"#, "'beta_start' is \"x\", expected a number"),
            (
                r#"{"beta_end": 2.0}"#,
                "'beta_schedule' gives no schedule: beta_start 0.0001 and beta_end 2",
            ),
            (
                r#"{"trained_betas": [0.1, 0.2]}"#,
                "'trained_betas' gives no schedule: trained_betas has 2 values",
            ),
            (r#"{"trained_betas": "x"}"#, "'trained_betas' is not a list of numbers"),
            (
                r#"{"prediction_type": "sample"}"#,
                "'prediction_type' is 'sample' (supported: epsilon, v_prediction)",
            ),
            (
                r#"{"rescale_betas_zero_snr": true}"#,
                "'rescale_betas_zero_snr' is true",
            ),
            ("[1]", "expected a JSON object"),
            ("{", "not valid JSON"),
        ];
        for (json, needle) in cases {
            let e = format!("{:#}", parse(json).unwrap_err());
            assert!(
                e.contains(needle) && e.contains("dcm-sched-") && !e.contains('\n'),
                "{json}: {e}"
            );
        }
    }
}
