//! `dcm train-teacher`, `train-autoencoder`, `train-featnet`: the networks a study starts from.

use super::args::{positive, RunArgs, RuntimeArgs};
use crate::data::Dataset;
use crate::diffusion::schedule::ScheduleKind;
use crate::eval::ode_error::ode_error;
use crate::models::model_dir::{self, save_run};
use crate::models::teacher::NetworkTeacherConfig;
use crate::nets::autoencoder::{decode_all, encode_all};
use crate::nets::autoencoder::{Autoencoder, AutoencoderConfig};
use crate::nets::featnet::{Featnet, FeatnetConfig};
use crate::nets::mlp::MlpConfig;
use crate::nets::network::NetConfig;
use crate::runtime::finite::finite_flag;
use crate::train::autoencoder::train_autoencoder;
use crate::train::featnet::{accuracy, train_featnet};
use crate::train::optim::OptimConfig;
use crate::train::score_matching::{train_teacher, TeacherTraining};
use crate::train::trainer::ImageTraining;
use anyhow::{ensure, Context, Result};
use clap::Args;
use std::path::PathBuf;

/// Flags every image-network training command shares.
#[derive(Args)]
pub struct ImageTrainArgs {
    /// Images: `mnist` (the shipped digits), a folder of IDX files or of class sub-folders of PNG/JPEG.
    #[arg(long, default_value = "mnist")]
    pub data: String,
    #[command(flatten)]
    pub run: RunArgs,
    #[arg(long, default_value_t = 3000)]
    pub steps: usize,
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

#[derive(Args)]
pub struct TrainAutoencoderArgs {
    #[command(flatten)]
    pub common: ImageTrainArgs,
    /// Latent channels C (latents are C×7×7).
    #[arg(long, default_value_t = 4)]
    pub latent_channels: usize,
    /// Channels of the first convolution stage.
    #[arg(long, default_value_t = 32)]
    pub width: usize,
    /// A feature network folder: also report its accuracy on held-out reconstructions.
    #[arg(long)]
    pub featnet: Option<PathBuf>,
}

#[derive(Args)]
pub struct TrainFeatnetArgs {
    #[command(flatten)]
    pub common: ImageTrainArgs,
    /// Channels of the first convolution.
    #[arg(long, default_value_t = 32)]
    pub width: usize,
    /// Width of the penultimate (feature) layer.
    #[arg(long, default_value_t = 128)]
    pub features: usize,
}

#[derive(Args)]
pub struct TrainTeacherArgs {
    /// Training data: `toy:NAME` (ring, grid, checkerboard, moons, spiral), `mnist`, an image folder or an .npy file [n, …].
    #[arg(long)]
    pub data: String,
    /// Train in this autoencoder's latent space (images are encoded first; image data uses its train split).
    #[arg(long)]
    pub autoencoder: Option<PathBuf>,
    #[command(flatten)]
    pub run: RunArgs,
    #[arg(long, default_value_t = 5000)]
    pub steps: usize,
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    /// Keep the learning rate constant (default: cosine decay to 0).
    #[arg(long)]
    pub constant_lr: bool,
    #[arg(long, default_value_t = 256)]
    pub hidden: usize,
    #[arg(long, default_value_t = 3)]
    pub depth: usize,
    /// Width of the sinusoidal timestep embedding (even).
    #[arg(long, default_value_t = 64)]
    pub time_dim: usize,
    /// Noise schedule: scaled_linear, linear or cosine.
    #[arg(long, default_value = "scaled_linear")]
    pub schedule: ScheduleKind,
    /// Probability of replacing the label by the null label.
    #[arg(long, default_value_t = 0.1)]
    pub label_dropout: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

pub fn teacher_command(a: TrainTeacherArgs) -> Result<()> {
    positive(&[
        ("--hidden", a.hidden),
        ("--depth", a.depth),
        ("--time-dim", a.time_dim),
        ("--batch", a.batch),
    ])?;
    finite_flag(a.label_dropout, "--label-dropout", 1.0)?;
    ensure!(
        a.label_dropout >= 0.0,
        "--label-dropout {}: must be in [0, 1]",
        a.label_dropout
    );
    let rt = a.runtime.runtime()?;
    let mut data = Dataset::load(&a.data, a.seed).with_context(|| format!("--data {}", a.data))?;
    if let Some(dir) = &a.autoencoder {
        let ae = model_dir::load_autoencoder(dir, &rt)?;
        let (train, _) = data.standard_split().with_context(|| format!("--data {}", a.data))?;
        data = Dataset::new(encode_all(&ae, &train.x)?, train.labels, train.num_classes)?;
    }
    let net = MlpConfig {
        sample_shape: data.sample_shape(),
        hidden: a.hidden,
        depth: a.depth,
        time_dim: a.time_dim,
        num_classes: data.num_classes,
        schedule: a.schedule,
    };
    net.validate()?;
    let cfg = TeacherTraining {
        steps: a.steps,
        batch: a.batch,
        optim: OptimConfig {
            lr: a.lr,
            weight_decay: a.weight_decay,
            max_grad_norm: a.max_grad_norm,
            cosine_decay: !a.constant_lr,
        },
        label_dropout: a.label_dropout,
        seed: a.seed,
    };
    let (out_dir, ckpt) = a
        .run
        .checkpointing(serde_json::json!({"data": a.data, "autoencoder": a.autoencoder}))?;
    std::fs::create_dir_all(&out_dir).with_context(|| format!("--out {}: cannot create folder", out_dir.display()))?;
    let start = std::time::Instant::now();
    let out = train_teacher(&data, &net, &cfg, ckpt, &rt.device)?;
    let config = NetworkTeacherConfig {
        net: NetConfig::Mlp(net),
        data: a.data.clone(),
        autoencoder: a
            .autoencoder
            .as_deref()
            .map(|p| model_dir::relative_path(p, &out_dir).map(|r| r.to_string_lossy().into_owned()))
            .transpose()?,
        steps: a.steps,
        seed: a.seed,
    };
    save_run(&out_dir, &config, &out.params, &out.losses)?;
    eprintln!(
        "trained in {:.1} s; final loss {:.4}; wrote {}",
        start.elapsed().as_secs_f64(),
        out.losses.last().copied().unwrap_or(f32::NAN),
        out_dir.display()
    );
    Ok(())
}

pub fn image_training(a: &ImageTrainArgs) -> Result<(Dataset, Dataset, ImageTraining)> {
    positive(&[("--batch", a.batch), ("--steps", a.steps)])?;
    let data = Dataset::load(&a.data, a.seed).with_context(|| format!("--data {}", a.data))?;
    ensure!(
        data.num_classes > 0,
        "--data {}: image training needs labelled images",
        a.data
    );
    let (train, test) = data.standard_split().with_context(|| format!("--data {}", a.data))?;
    let optim = OptimConfig {
        lr: a.lr,
        weight_decay: 1e-4,
        max_grad_norm: 1.0,
        cosine_decay: true,
    };
    Ok((
        train,
        test,
        ImageTraining {
            steps: a.steps,
            batch: a.batch,
            optim,
            seed: a.seed,
        },
    ))
}

pub fn featnet_command(a: TrainFeatnetArgs) -> Result<()> {
    positive(&[("--width", a.width), ("--features", a.features)])?;
    let (train, test, cfg) = image_training(&a.common)?;
    let c = &a.common;
    let net = FeatnetConfig {
        width: a.width,
        features: a.features,
        classes: train.num_classes,
    };
    let start = std::time::Instant::now();
    let (out_dir, ckpt) = c.run.checkpointing(serde_json::json!({"data": c.data}))?;
    let rt = c.runtime.runtime()?;
    let (params, losses) = train_featnet(&train, &net, &cfg, ckpt, &rt.device)?;
    let acc = accuracy(&Featnet::new(net.clone(), &params)?, &test)?;
    let secs = start.elapsed().as_secs_f64();
    let record = serde_json::json!({"net": net, "data": c.data, "training": cfg, "held_out_accuracy": acc, "train_seconds": secs});
    save_run(&out_dir, &record, &params, &losses)?;
    eprintln!(
        "trained in {secs:.0} s; held-out accuracy {:.2}% on {} images; wrote {}",
        100.0 * acc,
        test.len(),
        out_dir.display()
    );
    Ok(())
}

pub fn autoencoder_command(a: TrainAutoencoderArgs) -> Result<()> {
    positive(&[("--width", a.width), ("--latent-channels", a.latent_channels)])?;
    let (train, test, cfg) = image_training(&a.common)?;
    let c = &a.common;
    let net = AutoencoderConfig {
        latent_channels: a.latent_channels,
        width: a.width,
        scale: 1.0,
    };
    let start = std::time::Instant::now();
    let (out_dir, ckpt) = c.run.checkpointing(serde_json::json!({"data": c.data}))?;
    let rt = c.runtime.runtime()?;
    let (net, params, losses) = train_autoencoder(&train, &net, &cfg, ckpt, &rt.device)?;
    let ae = Autoencoder::new(net.clone(), &params)?;
    let mse = ode_error(&decode_all(&ae, &encode_all(&ae, &test.x)?)?, &test.x)?;
    let featnet_acc = match &a.featnet {
        Some(dir) => {
            let recon = Dataset::new(
                decode_all(&ae, &encode_all(&ae, &test.x)?)?,
                test.labels.clone(),
                test.num_classes,
            )?;
            Some(accuracy(&model_dir::load_featnet(dir, &rt)?, &recon)?)
        }
        None => None,
    };
    let secs = start.elapsed().as_secs_f64();
    let record = serde_json::json!({"net": net, "data": c.data, "training": cfg, "held_out_reconstruction_mse": mse,
        "featnet_accuracy_on_reconstructions": featnet_acc, "train_seconds": secs});
    save_run(&out_dir, &record, &params, &losses)?;
    let acc = featnet_acc.map_or(String::new(), |a| {
        format!("; feature-network accuracy on reconstructions {:.2}%", 100.0 * a)
    });
    eprintln!(
        "trained in {secs:.0} s; held-out reconstruction MSE {mse:.4}{acc}; latent scale {:.3}; wrote {}",
        net.scale,
        out_dir.display()
    );
    Ok(())
}
