//! `dcm distill`: a consistency student (CM or Direct CM) from a teacher.

use super::args::{refuse, LoraArgs, OdeArgs, RunArgs, RuntimeArgs};
use super::distill_sd::SdDistillArgs;
use crate::consistency::distance::Distance;
use crate::consistency::objective::Method;
use crate::data::toy::DEFAULT_SIZE;
use crate::data::Dataset;
use crate::diffusion::denoiser::Denoiser;
use crate::models::model_dir::{self, save_run};
use crate::models::student::{portable_spec, StudentConfig};
use crate::models::teacher::Teacher;
use crate::nets::autoencoder::encode_all;
use crate::nets::lora::LoraConfig;
use crate::nets::mlp::MlpConfig;
use crate::nets::network::NetConfig;
use crate::runtime::device::Runtime;
use crate::runtime::memory::{ensure_fits, f32_bytes};
use crate::runtime::noise::seeded;
use crate::train::distill::{distill, DistillConfig};
use crate::train::optim::OptimConfig;
use anyhow::{bail, ensure, Context, Result};
use clap::Args;

#[derive(Args)]
pub struct DistillArgs {
    /// Objective: `cm` (one teacher step + self target) or `direct` (full teacher solve as target).
    #[arg(long)]
    pub method: Method,
    /// Teacher SPEC (see below).
    #[arg(long)]
    pub teacher: String,
    /// Training data: `toy:NAME`, `mnist`, an image folder or an .npy file [n, …]; default: the
    /// analytic teacher's own distribution. With sd:DIR: a folder of images with captions
    /// (`name.png|jpg` beside `name.txt`, or a `metadata.jsonl` with `file_name` and `text`).
    #[arg(long)]
    pub data: Option<String>,
    #[command(flatten)]
    pub ode: OdeArgs,
    /// Training steps.
    #[arg(long, default_value_t = 3000)]
    pub steps: usize,
    /// Rows per batch [default: 256; 16 with sd:DIR].
    #[arg(long)]
    pub batch: Option<usize>,
    /// Batches whose mean gradient makes one step (for batches that don't fit at once).
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// AdamW learning rate [default: 1e-3 for a fresh student, 1e-4 when starting from a network teacher].
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long, default_value_t = 1e-2)]
    pub weight_decay: f64,
    /// Clip the global gradient norm (0: off).
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    /// Keep the learning rate constant (default: cosine decay to 0).
    #[arg(long)]
    pub constant_lr: bool,
    /// Distance: l2, huber (c = 0.001) or huber:C.
    #[arg(long, default_value = "l2")]
    pub loss: Distance,
    /// Use an EMA of the student with this decay as the CM target network (default: the student itself, stop-gradient).
    #[arg(long)]
    pub ema_decay: Option<f64>,
    /// Ignore class labels: distill the teacher's unconditional ODE.
    #[arg(long)]
    pub unconditional: bool,
    /// Hidden width of a fresh student MLP (analytic teachers) [default: 128].
    #[arg(long)]
    pub hidden: Option<usize>,
    /// Hidden layers of a fresh student MLP (analytic teachers) [default: 3].
    #[arg(long)]
    pub depth: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub lora: LoraArgs,
    #[command(flatten)]
    pub sd: SdDistillArgs,
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// Working copies of a batch one distillation step holds (x₀, noise, x_t, targets, the
/// student's activations and their gradients).
const WORKING_COPIES: usize = 32;

impl DistillArgs {
    /// The distillation settings the flags give, with the teacher kind's defaults for the
    /// batch and learning rate.
    pub fn config(&self, batch: usize, default_lr: f64, lora: Option<LoraConfig>) -> Result<DistillConfig> {
        Ok(DistillConfig {
            method: self.method,
            solver: self.ode.solver(),
            intervals: self.ode.intervals(),
            guidance: self.ode.guidance()?,
            steps: self.steps,
            batch,
            optim: OptimConfig {
                lr: self.lr.unwrap_or(default_lr),
                weight_decay: self.weight_decay,
                max_grad_norm: self.max_grad_norm,
                cosine_decay: !self.constant_lr,
            },
            loss: self.loss,
            ema_decay: self.ema_decay,
            lora,
            grad_accum: self.grad_accum,
            seed: self.seed,
        })
    }
}

pub fn command(a: DistillArgs) -> Result<()> {
    let rt = a.runtime.runtime()?;
    if let Some(dir) = a.teacher.strip_prefix("sd:") {
        return super::distill_sd::command(&a, std::path::Path::new(dir), &rt);
    }
    refuse(&a.sd.given(), "applies to Stable Diffusion teachers (sd:DIR) only")?;
    let teacher = Teacher::parse(&a.teacher, &rt)?;
    let unconditional = a.unconditional || teacher.num_classes() == 0;
    if unconditional && a.ode.guidance.is_some_and(|w| w != 1.0) {
        bail!("--guidance: the distilled ODE is unconditional (the teacher has no classes, or --unconditional), so guidance would change nothing");
    }
    let data = training_data(&a, &teacher, &rt)?;
    let conditional = !unconditional && data.labels.iter().any(Option::is_some);
    let data = if conditional { data } else { data.without_labels() };
    let (net, init, default_lr) = match &teacher {
        Teacher::Network { config, dir, .. } => (config.clone(), rt.trainable(&model_dir::load_params(dir)?)?, 1e-4),
        _ => {
            let net = MlpConfig {
                sample_shape: data.sample_shape(),
                hidden: a.hidden.unwrap_or(128),
                depth: a.depth.unwrap_or(3),
                time_dim: 32,
                num_classes: teacher.num_classes(),
                schedule: teacher.schedule_kind()?,
            };
            net.validate()?;
            let init = rt.trainable(&net.init(&mut seeded(a.seed.wrapping_add(1)))?)?;
            (NetConfig::Mlp(net), init, 1e-3)
        }
    };
    let cfg = a.config(a.batch.unwrap_or(256), default_lr, a.lora.lora()?)?;
    // A LoRA student of a network teacher starts from the teacher's own weights, so the
    // teacher is the student with its adapters off.
    let shares_weights = cfg.lora.is_some() && matches!(teacher, Teacher::Network { .. });
    let target_source = (!shares_weights).then_some(&teacher as &dyn Denoiser);
    cfg.validate()?;
    let (out_dir, ckpt) = a
        .run
        .checkpointing(serde_json::json!({"teacher": a.teacher, "data": a.data, "unconditional": a.unconditional}))?;
    let per_step = f32_bytes(&[cfg.batch, data.x.elem_count() / data.len()]) * WORKING_COPIES as f64;
    ensure_fits(per_step, &format!("--batch {}", cfg.batch))?;
    let start = std::time::Instant::now();
    let out = distill(target_source, &net, &init, &data, &cfg, ckpt)?;
    let config = StudentConfig {
        teacher: portable_spec(&a.teacher),
        data: a.data.clone().unwrap_or_else(|| "teacher distribution".into()),
        conditional,
        net,
        distill: cfg,
        teacher_evaluations: out.teacher_evaluations,
        train_seconds: start.elapsed().as_secs_f64(),
    };
    save_run(&out_dir, &config, &out.params, &out.losses)?;
    if let Some(adapters) = &out.adapters {
        model_dir::save_tensors(&out_dir.join(model_dir::ADAPTERS), adapters)?;
    }
    eprintln!(
        "distilled in {:.1} s ({} per-sample teacher evaluations); final loss {:.3e}; wrote {}",
        config.train_seconds,
        out.teacher_evaluations,
        out.losses.last().copied().unwrap_or(f32::NAN),
        out_dir.display()
    );
    Ok(())
}

/// `--data` (images are encoded with a latent teacher's autoencoder, its train split),
/// or an analytic teacher's own distribution.
fn training_data(a: &DistillArgs, teacher: &Teacher, rt: &Runtime) -> Result<Dataset> {
    let Some(spec) = &a.data else {
        return teacher.sample_data(DEFAULT_SIZE, &mut seeded(a.seed ^ 0x5eed));
    };
    let data = Dataset::load(spec, a.seed).with_context(|| format!("--data {spec}"))?;
    let data = match teacher.autoencoder(rt)? {
        Some(ae) if data.sample_shape() == ae.image_shape() => {
            let (train, _) = data.standard_split()?;
            Dataset::new(encode_all(&ae, &train.x)?, train.labels, train.num_classes)?
        }
        _ => data,
    };
    if let Some(shape) = teacher.sample_shape() {
        ensure!(
            shape == data.sample_shape(),
            "--data {spec}: samples have shape {:?} but the teacher expects {:?}",
            data.sample_shape(),
            shape
        );
    }
    Ok(data)
}
