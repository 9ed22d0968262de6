//! Teacher training by denoising score matching, `E‖ε − ε_θ(α_t x₀ + σ_t ε, t, c)‖²`,
//! t uniform in 1..=T, the label dropped to null with probability `label_dropout`
//! so one network gives conditional and unconditional predictions (for guidance).

use crate::data::Dataset;
use crate::diffusion::condition::Condition;
use crate::diffusion::denoiser::{diffuse, Denoiser};
use crate::diffusion::schedule::T;
use crate::nets::layers::Params;
use crate::nets::mlp::{Mlp, MlpConfig};
use crate::runtime::noise::{init_rng, standard_normal};
use crate::train::budget::check_batch;
use crate::train::optim::OptimConfig;
use crate::train::trainer::{Checkpointing, Trainer, TrainerOptions};
use anyhow::{ensure, Result};
use candle_core::Device;
use rand::Rng as _;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TeacherTraining {
    pub steps: usize,
    pub batch: usize,
    pub optim: OptimConfig,
    pub label_dropout: f64,
    pub seed: u64,
}

pub struct Trained {
    pub params: Params,
    pub losses: Vec<f32>,
}

/// Values one row keeps through a step: x₀, noise, x_t, the prediction, its error and square;
/// three maps per layer (its output, SiLU's sigmoid and product); the time and class embeddings.
pub fn kept_per_sample(net: &MlpConfig) -> f64 {
    let layers = (net.depth + 2) as f64;
    6.0 * net.dim() as f64 + 3.0 * net.hidden as f64 * layers + 4.0 * net.time_dim as f64
}

pub fn train_teacher(
    data: &Dataset,
    net: &MlpConfig,
    cfg: &TeacherTraining,
    checkpointing: Checkpointing,
    device: &Device,
) -> Result<Trained> {
    ensure!(cfg.steps > 0 && cfg.batch > 0, "--steps and --batch must be positive");
    ensure!(
        (0.0..=1.0).contains(&cfg.label_dropout),
        "--label-dropout must be in [0, 1]"
    );
    ensure!(
        data.sample_shape() == net.sample_shape,
        "data shape {:?} differs from the network's {:?}",
        data.sample_shape(),
        net.sample_shape
    );
    let init = net.init(&mut init_rng(cfg.seed))?;
    check_batch(&init, kept_per_sample(net), cfg.batch)?;
    let mut trainer = Trainer::new(
        &init,
        TrainerOptions {
            what: "teacher",
            steps: cfg.steps,
            optim: cfg.optim,
            seed: cfg.seed,
            ema_decay: None,
            checkpointing,
            device: device.clone(),
            run_config: serde_json::json!({"net": net, "training": cfg}),
        },
    )?;
    let model = Mlp::new(net.clone(), &trainer.params())?;
    while !trainer.finished() {
        let device = trainer.device();
        let rng = trainer.rng();
        let (x0, labels) = data.batch(rng, cfg.batch, &device)?;
        let labels: Vec<Option<u32>> = labels
            .into_iter()
            .map(|l| l.filter(|_| !rng.random_bool(cfg.label_dropout)))
            .collect();
        let t: Vec<usize> = (0..cfg.batch).map(|_| rng.random_range(1..=T)).collect();
        let eps = standard_normal(rng, x0.shape(), x0.device())?;
        let xt = diffuse(model.schedule(), &x0, &eps, &t)?;
        let loss = model
            .eps(&xt, &t, &Condition::Labels(labels))?
            .sub(&eps)?
            .sqr()?
            .mean_all()?;
        trainer.step(&loss)?;
    }
    trainer.finish();
    Ok(Trained {
        params: trainer.frozen_params(),
        losses: trainer.losses,
    })
}
