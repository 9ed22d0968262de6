//! The analytic control of the study: a class-conditional Gaussian-mixture teacher (a
//! toy of `data::toy`, class = component) at w = 1. Given its class, a row's PF-ODE is
//! that component's Gaussian one, whose solution is exact (docs/MATHEMATICS.md, "Analytic oracles"):
//! `x₀ = μ_k + s_k (x_T − α_T μ_k)/√(α_T² s_k² + σ_T²)`. So ODE error is measured against
//! the true solution, not the teacher's N-step solve, and there is no teacher error.

use crate::consistency::objective::Method;
use crate::consistency::sampler::multistep_sample;
use crate::data::toy::Toy;
use crate::data::Dataset;
use crate::diffusion::analytic::GaussianMixture;
use crate::diffusion::condition::Condition;
use crate::diffusion::discretization::Discretization;
use crate::diffusion::schedule::{Schedule, ScheduleKind, T};
use crate::diffusion::solver::solve;
use crate::eval::metrics::{fd::frechet_distance, to_matrix};
use crate::eval::ode_error::ode_error;
use crate::eval::reproduce_config::ReproduceConfig;
use crate::nets::mlp::{Mlp, MlpConfig};
use crate::nets::network::NetConfig;
use crate::runtime::device::Runtime;
use crate::runtime::noise::{eval_noise_rng, renoise_rng, seeded, standard_normal};
use crate::train::distill::{distill, DistillConfig};
use crate::train::optim::OptimConfig;
use anyhow::{Context, Result};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AnalyticConfig {
    /// A Gaussian-mixture toy (`ring` or `grid`).
    pub toy: String,
    /// Evaluation samples per component.
    pub per_class: usize,
    pub seeds: usize,
    pub train_samples: usize,
    pub distill_steps: usize,
    pub batch: usize,
    /// A fresh student learns faster than a fine-tuned one (`dcm distill`'s default).
    pub lr: f64,
    pub hidden: usize,
    pub depth: usize,
}

impl AnalyticConfig {
    pub fn study() -> Self {
        Self {
            toy: "ring".into(),
            per_class: 625,
            seeds: 5,
            train_samples: 10_000,
            distill_steps: 2000,
            batch: 256,
            lr: 1e-3,
            hidden: 128,
            depth: 3,
        }
    }

    /// The fresh residual MLP each student starts as.
    fn student_net(&self, dim: usize, classes: usize) -> MlpConfig {
        MlpConfig {
            sample_shape: vec![dim],
            hidden: self.hidden,
            depth: self.depth,
            time_dim: 32,
            num_classes: classes,
            schedule: ScheduleKind::default(),
        }
    }

    /// The main baseline's distillation settings at this control's length, batch and
    /// rate, with the teacher unguided (w = 1) and no LoRA (the student is fresh).
    fn distill_config(&self, main: &ReproduceConfig, method: Method, seed: u64) -> DistillConfig {
        DistillConfig {
            method,
            solver: main.solver,
            intervals: main.intervals,
            guidance: 1.0,
            steps: self.distill_steps,
            batch: self.batch,
            optim: OptimConfig {
                lr: self.lr,
                weight_decay: main.weight_decay,
                max_grad_norm: 1.0,
                cosine_decay: main.cosine_decay,
            },
            loss: main.loss,
            ema_decay: main.ema_decay,
            lora: None,
            grad_accum: 1,
            seed,
        }
    }
}

/// One (model, seed, steps) of the control. `teacher` rows are the N-step solve itself.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AnalyticRow {
    pub method: String,
    pub seed: u64,
    pub steps: usize,
    /// Against the exact ODE solution from the same x_T.
    pub exact_ode_error: f64,
    /// Against the teacher's N-step solve (what the MNIST study can measure).
    pub solver_ode_error: f64,
    /// FD on raw coordinates against the exact solutions (the teacher's true samples).
    pub fd_exact: f64,
}

/// The exact conditional PF-ODE solution from `x` at timestep `t` (one label per row).
pub fn exact_solution(m: &GaussianMixture, x: &Tensor, t: usize, labels: &[u32]) -> Result<Tensor> {
    let (a, s) = (m.schedule.alpha(t), m.schedule.sigma(t));
    let rows = x.to_dtype(candle_core::DType::F64)?.to_vec2::<f64>()?;
    let mut out = Vec::with_capacity(rows.len() * m.dim());
    for (row, &c) in rows.iter().zip(labels) {
        let (mu, sk) = (&m.components.means[c as usize], m.components.stds[c as usize]);
        let gain = sk / (a * a * sk * sk + s * s).sqrt();
        out.extend(row.iter().zip(mu).map(|(&xi, &mi)| (mi + gain * (xi - a * mi)) as f32));
    }
    Ok(Tensor::from_vec(out, (rows.len(), m.dim()), x.device())?)
}

/// The control's teacher: the toy's mixture under the default schedule.
fn mixture(cfg: &AnalyticConfig) -> Result<GaussianMixture> {
    let components = Toy::parse(&cfg.toy)?
        .components()
        .with_context(|| format!("toy '{}' is not a Gaussian mixture", cfg.toy))?;
    Ok(GaussianMixture {
        components,
        schedule: Schedule::new(ScheduleKind::default()),
    })
}

/// A fresh MLP (its own init stream per seed) distilled from the mixture on `data`.
fn train_student(
    mixture: &GaussianMixture,
    net: &MlpConfig,
    data: &Dataset,
    distill_cfg: &DistillConfig,
    rt: &Runtime,
) -> Result<Mlp> {
    let init = rt.trainable(&net.init(&mut seeded(distill_cfg.seed.wrapping_add(1)))?)?;
    let d = distill(
        Some(mixture),
        &NetConfig::Mlp(net.clone()),
        &init,
        data,
        distill_cfg,
        Default::default(),
    )?;
    Mlp::new(net.clone(), &rt.frozen(&d.params)?)
}

/// Every row of the control and the number of evaluation samples per seed.
pub fn run(cfg: &AnalyticConfig, main: &ReproduceConfig, rt: &Runtime) -> Result<(Vec<AnalyticRow>, usize)> {
    let mixture = mixture(cfg)?;
    let classes = mixture.components.means.len();
    let n = cfg.per_class * classes;
    let labels: Vec<u32> = (0..n as u32).map(|i| i % classes as u32).collect();
    let cond = Condition::Labels(labels.iter().map(|&c| Some(c)).collect());
    let grid = Discretization::new(main.intervals)?;
    let net = cfg.student_net(mixture.dim(), classes);
    let mut rows = Vec::new();
    for seed in 0..cfg.seeds as u64 {
        let data = mixture.sample(cfg.train_samples, &mut seeded(seed ^ 0x5eed))?;
        let noise = standard_normal(&mut eval_noise_rng(seed), (n, mixture.dim()), &rt.device)?;
        let exact = exact_solution(&mixture, &noise, T, &labels)?;
        let exact_features = to_matrix(&exact)?;
        let reference = solve(main.solver, &mixture, &noise, grid, T, &cond)?;
        let mut record = |method: &str, steps: usize, x: &Tensor| -> Result<()> {
            rows.push(AnalyticRow {
                method: method.to_string(),
                seed,
                steps,
                exact_ode_error: ode_error(x, &exact)?,
                solver_ode_error: ode_error(x, &reference)?,
                fd_exact: frechet_distance(&to_matrix(x)?, &exact_features)?,
            });
            Ok(())
        };
        record("teacher", main.intervals, &reference)?;
        for method in Method::compared() {
            let distill_cfg = cfg.distill_config(main, method, seed);
            let student = train_student(&mixture, &net, &data, &distill_cfg, rt)?;
            for &k in &main.steps {
                let x = multistep_sample(&student, &noise, grid, k, &cond, &mut renoise_rng(seed))?;
                record(method.title(), k, &x)?;
            }
        }
        eprintln!("  analytic control seed {seed} done");
    }
    Ok((rows, n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::solver::Solver;
    use candle_core::Device;

    /// The closed form is the limit of the teacher's own solve: Heun with many intervals
    /// converges to it (second order), from any start and for every component.
    #[test]
    fn exact_solution_is_the_limit_of_the_solvers() {
        let mixture = GaussianMixture {
            components: Toy::parse("ring").unwrap().components().unwrap(),
            schedule: Schedule::new(ScheduleKind::default()),
        };
        let labels: Vec<u32> = (0..16).map(|i| i % 8).collect();
        let cond = Condition::Labels(labels.iter().map(|&c| Some(c)).collect());
        let x = standard_normal(&mut seeded(4), (16, 2), &Device::Cpu).unwrap();
        let exact = exact_solution(&mixture, &x, T, &labels).unwrap();
        let err = |n: usize| {
            let x0 = solve(Solver::Heun, &mixture, &x, Discretization::new(n).unwrap(), T, &cond).unwrap();
            ode_error(&x0, &exact).unwrap()
        };
        let (coarse, fine) = (err(20), err(500));
        // 500 intervals reach f32 rounding (the ring's points are ~1.5 from the origin).
        assert!(fine < 1e-5, "Heun, 500 intervals: {fine:e}");
        assert!(
            coarse > 10.0 * fine,
            "Heun converges towards it: {coarse:e} at 20, {fine:e} at 500"
        );
    }
}
