//! Training of the latent autoencoder: pixel MSE of reconstructions on the train
//! split; afterwards the latent scale is fitted so encoded latents have unit variance.

use crate::data::Dataset;
use crate::nets::autoencoder::{encode_all, Autoencoder, AutoencoderConfig};
use crate::nets::layers::Params;
use crate::runtime::noise::init_rng;
use crate::train::budget::check_batch;
use crate::train::trainer::{Checkpointing, ImageTraining, Trainer, TrainerOptions};
use anyhow::Result;
use candle_core::{DType, Device};

/// Trains with `scale = 1`, then returns the config with the fitted scale.
pub fn train_autoencoder(
    train: &Dataset,
    cfg_net: &AutoencoderConfig,
    cfg: &ImageTraining,
    checkpointing: Checkpointing,
    device: &Device,
) -> Result<(AutoencoderConfig, Params, Vec<f32>)> {
    let unscaled = AutoencoderConfig {
        scale: 1.0,
        ..cfg_net.clone()
    };
    let init = unscaled.init(&mut init_rng(cfg.seed))?;
    // Every layer keeps maps of about `width` channels at the image's resolution or a
    // quarter of it (and the 3×3 convolutions their unfolded inputs): 8·width per pixel.
    let pixels = (train.x.elem_count() / train.len().max(1)) as f64;
    check_batch(&init, 8.0 * cfg_net.width as f64 * pixels, cfg.batch)?;
    let mut trainer = Trainer::new(
        &init,
        TrainerOptions {
            what: "autoencoder",
            steps: cfg.steps,
            optim: cfg.optim,
            seed: cfg.seed,
            ema_decay: None,
            checkpointing,
            device: device.clone(),
            run_config: serde_json::json!({"net": unscaled, "training": cfg}),
        },
    )?;
    let ae = Autoencoder::new(unscaled.clone(), &trainer.params())?;
    while !trainer.finished() {
        let (x, _) = train.batch(trainer.rng(), cfg.batch, device)?;
        let loss = ae.decode(&ae.encode(&x)?)?.sub(&x)?.sqr()?.mean_all()?;
        trainer.step(&loss)?;
    }
    trainer.finish();
    let params = trainer.frozen_params();
    let frozen = Autoencoder::new(unscaled.clone(), &params)?;
    let z = encode_all(&frozen, &train.x)?.to_dtype(DType::F64)?;
    let var: f64 = z.sqr()?.mean_all()?.to_scalar::<f64>()? - z.mean_all()?.to_scalar::<f64>()?.powi(2);
    Ok((
        AutoencoderConfig {
            scale: 1.0 / var.sqrt(),
            ..unscaled
        },
        params,
        trainer.losses,
    ))
}
