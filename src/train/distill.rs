//! Distillation of a teacher into a consistency student, by either objective:
//! `cm` (one solver step + self target) or `direct` (full teacher solve as target).

use crate::consistency::batch::Batch;
use crate::consistency::distance::Distance;
use crate::consistency::objective::Method;
use crate::data::Dataset;
use crate::diffusion::condition::Condition;
use crate::diffusion::denoiser::{diffuse, Counted, Denoiser};
use crate::diffusion::discretization::Discretization;
use crate::diffusion::guidance::Guided;
use crate::diffusion::solver::Solver;
use crate::nets::layers::Params;
use crate::nets::lora::LoraConfig;
use crate::nets::network::{AdaptersOff, Architecture};
use crate::runtime::finite::finite_flag;
use crate::runtime::noise::{init_rng, standard_normal, Rng};
use crate::runtime::ranks;
use crate::runtime::signals::{requested, Stopped};
use crate::train::optim::OptimConfig;
use crate::train::trainer::{Checkpointing, Trainer, TrainerOptions};
use anyhow::{ensure, Result};
use candle_core::{Device, Tensor};
use rand::Rng as _;
use serde::{Deserialize, Serialize};

/// The largest guidance scale accepted: far beyond any useful value, small enough that
/// `w·(ε_c − ε_u)` stays within f32.
pub const MAX_GUIDANCE: f64 = 1e4;

/// The most micro-batches one step may sum: n parts summed in f32 carry a relative rounding
/// error up to about n·2⁻²⁴, 0.4% at 2¹⁶.
pub const MAX_GRAD_ACCUM: usize = 1 << 16;

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
    /// Train LoRA adapters on the frozen start weights instead of every weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraConfig>,
    /// Micro-batches of `batch` rows whose mean gradient makes one step (`--grad-accum`).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub grad_accum: usize,
    pub seed: u64,
}

fn one() -> usize {
    1
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

/// Where training batches come from: clean samples `x₀` and the condition of each row.
pub trait TrainingData {
    /// Per-sample shape of `x₀`.
    fn sample_shape(&self) -> Vec<usize>;
    /// `size` rows drawn with `rng`, on `device`.
    fn batch(&self, rng: &mut Rng, size: usize, device: &Device) -> Result<(Tensor, Condition)>;
}

/// Labelled samples: each row's class label is its condition.
impl TrainingData for Dataset {
    fn sample_shape(&self) -> Vec<usize> {
        Dataset::sample_shape(self)
    }
    fn batch(&self, rng: &mut Rng, size: usize, device: &Device) -> Result<(Tensor, Condition)> {
        let (x0, labels) = Dataset::batch(self, rng, size, device)?;
        Ok((x0, Condition::Labels(labels)))
    }
}

impl DistillConfig {
    /// The paper's LoRA distillation of a Stable Diffusion teacher: DDIM with N = 100, w = 9,
    /// AdamW at a constant 1e-4 (weight decay 1e-2, clipping 1.0), batch 16, L2, 250 steps,
    /// θ⁻ = θ, seed 0.
    pub fn paper_lora(method: Method, lora: LoraConfig) -> Self {
        Self {
            method,
            solver: Solver::Ddim,
            intervals: 100,
            guidance: 9.0,
            steps: 250,
            batch: 16,
            optim: OptimConfig {
                lr: 1e-4,
                weight_decay: 1e-2,
                max_grad_norm: 1.0,
                cosine_decay: false,
            },
            loss: Distance::L2,
            ema_decay: None,
            lora: Some(lora),
            grad_accum: 1,
            seed: 0,
        }
    }

    pub fn validate(&self) -> Result<()> {
        Discretization::new(self.intervals)?;
        ensure!(self.steps > 0, "--steps must be positive");
        ensure!(self.batch > 0, "--batch must be positive");
        let ranks = ranks::place().size;
        ensure!(
            self.batch >= ranks,
            "--batch {}: fewer rows than the {ranks} data-parallel ranks (each rank computes a share of every batch)",
            self.batch
        );
        ensure!(self.grad_accum > 0, "--grad-accum must be positive");
        ensure!(
            self.grad_accum <= MAX_GRAD_ACCUM,
            "--grad-accum {}: at most {MAX_GRAD_ACCUM}; each part adds 1/{} of the gradient to an f32 sum, \
             and beyond that many parts their rounding errors grow past 0.4% of it",
            self.grad_accum,
            self.grad_accum
        );
        finite_flag(self.guidance, "--guidance", MAX_GUIDANCE)?;
        self.optim.validate()?;
        if let Some(d) = self.ema_decay {
            ensure!((0.0..1.0).contains(&d), "--ema-decay must be in [0, 1)");
        }
        self.lora.as_ref().map_or(Ok(()), LoraConfig::validate)
    }
}

pub struct Distilled {
    /// The student's weights, adapters merged in (left empty when the architecture keeps
    /// LoRA students as their adapters: `Architecture::merges_adapters`).
    pub params: Params,
    /// The trained adapters alone (LoRA students).
    pub adapters: Option<Params>,
    pub losses: Vec<f32>,
    /// Per-sample guided teacher evaluations spent on targets.
    pub teacher_evaluations: u64,
    /// Training wall time, over every process that continued the run.
    pub seconds: f64,
}

/// The three networks of a distillation step: the (guided, counted) teacher, the student and
/// the target network θ⁻.
struct Nets<'a> {
    teacher: &'a dyn Denoiser,
    student: &'a dyn Denoiser,
    target: &'a dyn Denoiser,
}

/// One micro-batch's loss: x₀ and its condition, a grid timestep per row and the noise, drawn
/// from the run's stream in that order, then the objective on `x_t`.
fn micro_batch_loss(
    nets: &Nets,
    data: &dyn TrainingData,
    cfg: &DistillConfig,
    grid: Discretization,
    rng: &mut Rng,
    device: &Device,
) -> Result<Tensor> {
    let (x0, cond) = data.batch(rng, cfg.batch, device)?;
    let t: Vec<usize> = (0..cfg.batch)
        .map(|_| grid.start(rng.random_range(0..grid.intervals())))
        .collect();
    let eps = standard_normal(rng, x0.shape(), x0.device())?;
    let xt = diffuse(nets.student.schedule(), &x0, &eps, &t)?;
    // Every data-parallel rank draws the whole batch, so the streams (and the student) do not
    // depend on the number of ranks; each computes its rows' share of the batch mean.
    let rows = ranks::place().share(cfg.batch);
    let share = rows.len() as f64 / cfg.batch as f64;
    let (xt, cond, t) = (
        xt.narrow(0, rows.start, rows.len())?,
        cond.narrow(rows.start, rows.len())?,
        &t[rows],
    );
    let batch = Batch {
        teacher: nets.teacher,
        student: nets.student,
        target_net: nets.target,
        solver: cfg.solver,
        grid,
        distance: cfg.loss,
        x: &xt,
        t,
        cond: &cond,
    };
    let loss = cfg.method.objective().loss(&batch)?;
    Ok(if share < 1.0 { (loss * share)? } else { loss })
}

/// A micro-batch's error: a stop signal honoured inside it (between solver steps or network
/// calls) saves the last completed step; any other error ends the run as it is.
fn stopped_or(e: anyhow::Error, trainer: &mut Trainer) -> anyhow::Error {
    match e.downcast_ref::<Stopped>() {
        Some(stop) => trainer.stop_mid_step(stop.signal),
        None => e,
    }
}

/// The trainer over the student's trained tensors: the adapters under LoRA (freshly
/// initialised from the run's seed), otherwise every weight of `start`.
fn start_trainer(
    net: &dyn Architecture,
    start: &Params,
    cfg: &DistillConfig,
    checkpointing: Checkpointing,
) -> Result<Trainer> {
    let device = start.values().next().map_or(Device::Cpu, |t| t.device().clone());
    let init = match cfg.lora {
        Some(lora) => net.init_adapters(lora, &mut init_rng(cfg.seed))?,
        None => start.clone(),
    };
    let options = TrainerOptions {
        what: cfg.method.name(),
        steps: cfg.steps,
        optim: cfg.optim,
        seed: cfg.seed,
        ema_decay: cfg.ema_decay,
        checkpointing,
        device,
        run_config: serde_json::json!({"distill": cfg, "net": net.describe()}),
    };
    // The trainer copies `init`: a LoRA run's fresh adapters are dropped here, not kept to the end.
    Trainer::new(&init, options)
}

/// Every remaining step: `grad_accum` micro-batches each, the teacher's evaluations counted
/// (`counted` wraps `nets.teacher`), a stop saving the last completed step.
fn train_steps(
    trainer: &mut Trainer,
    (nets, counted): (&Nets, &Counted),
    data: &dyn TrainingData,
    cfg: &DistillConfig,
) -> Result<()> {
    let grid = Discretization::new(cfg.intervals)?;
    let mut counted_so_far = 0;
    while !trainer.finished() {
        trainer.begin_step();
        for part in 0..cfg.grad_accum {
            let device = trainer.device();
            let loss = match micro_batch_loss(nets, data, cfg, grid, trainer.rng(), &device) {
                Err(e) => return Err(stopped_or(e, trainer)),
                Ok(loss) => loss,
            };
            // This rank's evaluations; the step sums them over the ranks.
            trainer.counter += counted.evaluations() - counted_so_far;
            counted_so_far = counted.evaluations();
            trainer.accumulate(&loss, cfg.grad_accum)?;
            // A stop between micro-batches ends the run at the last completed step; after the
            // last one, the step completes and `step_accumulated` saves it.
            if let Some(signal) = requested().filter(|_| part + 1 < cfg.grad_accum && ranks::place().size == 1) {
                return Err(trainer.stop_mid_step(signal));
            }
        }
        trainer.step_accumulated()?;
    }
    Ok(())
}

/// Trains a student of architecture `net` starting from the weights `start` on `data`.
/// `teacher` gives the targets; `None` takes them from the student with its adapters
/// off — the start weights themselves, as the paper's reference does with LoRA.
pub fn distill(
    teacher: Option<&dyn Denoiser>,
    net: &dyn Architecture,
    start: &Params,
    data: &dyn TrainingData,
    cfg: &DistillConfig,
    checkpointing: Checkpointing,
) -> Result<Distilled> {
    cfg.validate()?;
    net.check_sample_shape(&data.sample_shape())?;
    ensure!(
        teacher.is_some() || cfg.lora.is_some(),
        "a fully fine-tuned student needs a separate teacher"
    );
    let mut trainer = start_trainer(net, start, cfg, checkpointing)?;
    // Under LoRA the trained tensors are the adapters, added to the frozen start weights.
    let with_start = |trained: Params| -> Params {
        match cfg.lora {
            Some(_) => start.clone().into_iter().chain(trained).collect(),
            None => trained,
        }
    };
    let student = net.build(&with_start(trainer.params()), cfg.lora)?;
    let target_params = trainer.ema_params().unwrap_or_else(|| trainer.frozen_params());
    let target_net = net.build(&with_start(target_params), cfg.lora)?;
    let base = AdaptersOff(&*student);
    let guided = Guided::new(teacher.unwrap_or(&base), cfg.guidance);
    let counted = Counted::new(&guided);
    let nets = Nets {
        teacher: &counted,
        student: &*student,
        target: &*target_net,
    };
    train_steps(&mut trainer, (&nets, &counted), data, cfg)?;
    trainer.finish();
    let (params, adapters) = match cfg.lora {
        Some(_) if net.merges_adapters() => (student.merged_params()?, Some(trainer.frozen_params())),
        Some(_) => (Params::new(), Some(trainer.frozen_params())),
        None => (trainer.frozen_params(), None),
    };
    Ok(Distilled {
        params,
        adapters,
        seconds: trainer.seconds(),
        losses: trainer.losses,
        teacher_evaluations: trainer.counter,
    })
}
