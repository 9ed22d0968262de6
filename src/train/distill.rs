//! Distillation of a teacher into a consistency student, by either objective:
//! `cm` (one solver step + self target) or `direct` (full teacher solve as target).

use crate::consistency::distance::Distance;
use crate::consistency::objective::{Batch, Method};
use crate::data::Dataset;
use crate::diffusion::condition::Condition;
use crate::diffusion::denoiser::{diffuse, Counted, Denoiser};
use crate::diffusion::discretization::Discretization;
use crate::diffusion::guidance::Guided;
use crate::diffusion::solver::Solver;
use crate::nets::layers::Params;
use crate::nets::mlp::{Mlp, MlpConfig};
use crate::runtime::noise::standard_normal;
use crate::train::optim::OptimConfig;
use crate::train::trainer::{Checkpointing, Trainer, TrainerOptions};
use anyhow::{ensure, Result};
use rand::Rng as _;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistillConfig {
    pub method: Method,
    pub solver: Solver,
    pub intervals: usize,
    pub guidance: f64,
    pub steps: usize,
    pub batch: usize,
    pub optim: OptimConfig,
    pub loss: Distance,
    /// θ⁻ as an EMA of θ with this decay; `None`: θ itself under stop-gradient (reference).
    pub ema_decay: Option<f64>,
    pub seed: u64,
}

impl DistillConfig {
    pub fn validate(&self) -> Result<()> {
        Discretization::new(self.intervals)?;
        ensure!(self.steps > 0, "--steps must be positive");
        ensure!(self.batch > 0, "--batch must be positive");
        ensure!(self.guidance.is_finite(), "--guidance must be a finite number");
        ensure!(
            self.optim.lr > 0.0 && self.optim.lr.is_finite(),
            "--lr must be positive"
        );
        if let Some(d) = self.ema_decay {
            ensure!((0.0..1.0).contains(&d), "--ema-decay must be in [0, 1)");
        }
        Ok(())
    }
}

pub struct Distilled {
    pub params: Params,
    pub losses: Vec<f32>,
    /// Per-sample guided teacher evaluations spent on targets.
    pub teacher_evaluations: u64,
}

/// Trains a student network (config `net`, initial weights `init`) on `data`.
pub fn distill(
    teacher: &dyn Denoiser,
    net: &MlpConfig,
    init: &Params,
    data: &Dataset,
    cfg: &DistillConfig,
    checkpointing: Checkpointing,
) -> Result<Distilled> {
    cfg.validate()?;
    ensure!(
        data.sample_shape() == net.sample_shape,
        "data samples have shape {:?} but the student expects {:?}",
        data.sample_shape(),
        net.sample_shape
    );
    let grid = Discretization::new(cfg.intervals)?;
    let guided = Guided::new(teacher, cfg.guidance);
    let counted = Counted::new(&guided);
    let options = TrainerOptions {
        what: cfg.method.name(),
        steps: cfg.steps,
        optim: cfg.optim,
        seed: cfg.seed,
        ema_decay: cfg.ema_decay,
        checkpointing,
        device: init
            .values()
            .next()
            .map_or(candle_core::Device::Cpu, |t| t.device().clone()),
        run_config: serde_json::json!({"distill": cfg, "net": net}),
    };
    let mut trainer = Trainer::new(init, options)?;
    let student = Mlp::new(net.clone(), &trainer.params())?;
    let target_params = trainer.ema_params().unwrap_or_else(|| trainer.frozen_params());
    let target_net = Mlp::new(net.clone(), &target_params)?;
    let resumed_evaluations = trainer.counter;
    while !trainer.finished() {
        let device = trainer.device();
        let rng = trainer.rng();
        let (x0, labels) = data.batch(rng, cfg.batch, &device)?;
        let t: Vec<usize> = (0..cfg.batch)
            .map(|_| grid.start(rng.random_range(0..grid.intervals())))
            .collect();
        let eps = standard_normal(rng, x0.shape(), x0.device())?;
        let xt = diffuse(teacher.schedule(), &x0, &eps, &t)?;
        let cond = Condition::Labels(labels);
        let batch = Batch {
            teacher: &counted,
            student: &student,
            target_net: &target_net,
            solver: cfg.solver,
            grid,
            distance: cfg.loss,
            x: &xt,
            t: &t,
            cond: &cond,
        };
        let loss = cfg.method.objective().loss(&batch)?;
        trainer.counter = resumed_evaluations + counted.evaluations();
        trainer.step(&loss)?;
    }
    trainer.finish();
    Ok(Distilled {
        params: trainer.frozen_params(),
        losses: trainer.losses,
        teacher_evaluations: trainer.counter,
    })
}
