//! The study (`dcm reproduce --preset study`): the paper's claim on MNIST with power —
//! both faithful baselines at 5 seeds and 5,000 evaluation samples, trained to a stated
//! criterion (issue #23) — and the sweeps that explain it: training length, target horizon,
//! guidance, and an analytic control (issue #13).

pub mod analytic_control;
pub mod baselines;
pub mod config;
pub mod length_choice;
pub mod outcome;
pub mod run;
pub mod sweeps;
pub mod units;
