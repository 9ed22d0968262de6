//! The plain records of the paper's comparison, which the reports read: every metric of
//! one (model, steps, seed), a student's training, one baseline's comparison and a
//! sweep's rows.

use serde::{Deserialize, Serialize};

/// Every number of one (model, steps, seed) row of the table.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Metrics {
    pub ode_error_latent: f64,
    pub ode_error_pixel: f64,
    pub fd_teacher: f64,
    pub fd_data: f64,
    pub kd_data: f64,
    pub precision: f64,
    pub recall: f64,
    pub density: f64,
    pub coverage: f64,
    pub class_accuracy: f64,
}

/// Reads one metric from a row.
pub type Getter = fn(&Metrics) -> f64;

/// Column name and accessor of every reported metric, in table order: FD against the
/// teacher's samples (on the MNIST classifier's features: an analogue of the paper's FD)
/// comes first.
pub const COLUMNS: [(&str, Getter); 10] = [
    ("FD vs teacher", |m| m.fd_teacher),
    ("ODE error (latent)", |m| m.ode_error_latent),
    ("ODE error (pixel)", |m| m.ode_error_pixel),
    ("FD vs data", |m| m.fd_data),
    ("KD vs data", |m| m.kd_data),
    ("precision", |m| m.precision),
    ("recall", |m| m.recall),
    ("density", |m| m.density),
    ("coverage", |m| m.coverage),
    ("class accuracy", |m| m.class_accuracy),
];

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    pub method: String,
    pub steps: usize,
    pub seed: u64,
    pub metrics: Metrics,
}

/// A distilled student's record: its loss curve and the work its targets cost.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainingRecord {
    pub method: String,
    pub seed: u64,
    pub losses: Vec<f32>,
    pub teacher_evaluations: u64,
    pub seconds: f64,
}

/// One baseline's comparison: every (model, steps, seed) row and the students' training.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Comparison {
    pub preset: String,
    pub rows: Vec<Row>,
    pub training: Vec<TrainingRecord>,
}

/// A trained model's metrics in a sweep: `setting` is the training length, horizon k or w.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SweepRow {
    pub setting: f64,
    pub method: String,
    pub steps: usize,
    /// Sweeps before issue #23 ran seed 0 alone and did not record it.
    #[serde(default)]
    pub seed: u64,
    pub metrics: Metrics,
}
