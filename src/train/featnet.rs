//! Training of the feature network: cross-entropy on the train split with
//! random ±2-pixel shifts, accuracy measured on the held-out split.

use crate::data::Dataset;
use crate::nets::featnet::{Featnet, FeatnetConfig};
use crate::nets::layers::Params;
use crate::runtime::noise::{init_rng, Rng};
use crate::train::budget::check_batch;
use crate::train::trainer::{Checkpointing, ImageTraining, Trainer, TrainerOptions};
use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use rand::Rng as _;

/// Shifts each image by a random offset in [−2, 2]² (zero fill).
fn random_shift(x: &Tensor, rng: &mut Rng) -> Result<Tensor> {
    let (b, _, h, w) = x.dims4()?;
    let src = x.flatten_all()?.to_vec1::<f32>()?;
    let mut out = vec![0f32; src.len()];
    for i in 0..b {
        let (dy, dx) = (rng.random_range(-2i64..=2), rng.random_range(-2i64..=2));
        for y in 0..h as i64 {
            for xx in 0..w as i64 {
                let (sy, sx) = (y - dy, xx - dx);
                if (0..h as i64).contains(&sy) && (0..w as i64).contains(&sx) {
                    out[i * h * w + (y * w as i64 + xx) as usize] = src[i * h * w + (sy * w as i64 + sx) as usize];
                }
            }
        }
    }
    Ok(Tensor::from_vec(out, x.shape(), x.device())?)
}

/// Fraction of `data` the network classifies correctly.
pub fn accuracy(net: &Featnet, data: &Dataset) -> Result<f64> {
    let pred = net.classify(&data.x)?;
    let hits = pred.iter().zip(&data.labels).filter(|(p, l)| Some(**p) == **l).count();
    Ok(hits as f64 / data.len() as f64)
}

pub fn train_featnet(
    train: &Dataset,
    cfg_net: &FeatnetConfig,
    cfg: &ImageTraining,
    checkpointing: Checkpointing,
    device: &Device,
) -> Result<(Params, Vec<f32>)> {
    let init = cfg_net.init(&mut init_rng(cfg.seed))?;
    // The shifted copy of each image, and maps of `width` channels at a quarter of its
    // pixels and of 2·width at a sixteenth, with their unfolded 3×3 inputs: 4·width per pixel.
    let pixels = (train.x.elem_count() / train.len().max(1)) as f64;
    check_batch(&init, 2.0 * pixels + 4.0 * cfg_net.width as f64 * pixels, cfg.batch)?;
    let mut trainer = Trainer::new(
        &init,
        TrainerOptions {
            what: "featnet",
            steps: cfg.steps,
            optim: cfg.optim,
            seed: cfg.seed,
            ema_decay: None,
            checkpointing,
            device: device.clone(),
            run_config: serde_json::json!({"net": cfg_net, "training": cfg}),
        },
    )?;
    let net = Featnet::new(cfg_net.clone(), &trainer.params())?;
    while !trainer.finished() {
        let device = trainer.device();
        let rng = trainer.rng();
        let (x, labels) = train.batch(rng, cfg.batch, &device)?;
        let y: Vec<u32> = labels
            .iter()
            .map(|l| l.context("the feature network needs labelled data"))
            .collect::<Result<_>>()?;
        let x = random_shift(&x, rng)?;
        let logits = net.logits(&net.features(&x)?)?;
        let loss = candle_nn::loss::cross_entropy(&logits, &Tensor::from_vec(y, cfg.batch, x.device())?)?;
        trainer.step(&loss)?;
    }
    trainer.finish();
    Ok((trainer.frozen_params(), trainer.losses))
}
