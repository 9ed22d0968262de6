//! What every evaluation of a comparison run shares — the training latents, the
//! held-out data's features, the labels and shape of the evaluation batch — and the
//! training of its students on those latents.

use crate::consistency::objective::Method;
use crate::data::Dataset;
use crate::diffusion::condition::Condition;
use crate::diffusion::denoiser::Denoiser;
use crate::eval::features::features;
use crate::eval::metrics::to_matrix;
use crate::eval::model_set::Models;
use crate::eval::reproduce_config::ReproduceConfig;
use crate::eval::students::TrainedStudent;
use crate::nets::autoencoder::encode_all;
use crate::nets::network::NetConfig;
use crate::runtime::memory::{ensure_fits, f32_bytes};
use crate::train::budget::check_batch;
use crate::train::distill::distill;
use crate::train::score_matching::kept_per_sample;
use crate::train::trainer::Checkpointing;
use anyhow::{ensure, Result};
use nalgebra::DMatrix;

/// What every evaluation of a run shares: the training latents, the held-out data's
/// features, and the labels and shape of the evaluation batch.
pub struct Setup {
    pub classes: usize,
    pub train_latents: Dataset,
    pub(crate) real_features: DMatrix<f64>,
    pub labels: Vec<u32>,
    pub cond: Condition,
    pub shape: Vec<usize>,
}

impl Setup {
    pub fn new(cfg: &ReproduceConfig, models: &Models) -> Result<Self> {
        cfg.validate()?;
        let classes = models.teacher.num_classes();
        ensure!(
            classes > 0,
            "the teacher is unconditional; reproduce needs a class-conditional teacher"
        );
        let (train, held_out) = models.data.standard_split()?;
        let train_latents = Dataset::new(
            encode_all(&models.autoencoder, &train.x)?,
            train.labels.clone(),
            train.num_classes,
        )?;
        let real_features = to_matrix(&features(&models.featnet, &held_out.x)?)?;
        let n = cfg.per_class * classes;
        // Images and latents of the reference, each model's samples, and the PRDC distances.
        let images = models.autoencoder.image_shape().iter().product::<usize>();
        ensure_fits(
            f32_bytes(&[n, images]) * 16.0 + 2.0 * f32_bytes(&[n, n]),
            &format!("--per-class {}", cfg.per_class),
        )?;
        let labels: Vec<u32> = (0..n as u32).map(|i| i % classes as u32).collect();
        let cond = Condition::Labels(labels.iter().map(|&c| Some(c)).collect());
        let mut shape = vec![n];
        shape.extend(models.teacher_net.sample_shape());
        Ok(Self {
            classes,
            train_latents,
            real_features,
            labels,
            cond,
            shape,
        })
    }

    /// Distills one student of `method` on the training latents.
    pub fn train(
        &self,
        cfg: &ReproduceConfig,
        models: &Models,
        method: Method,
        seed: u64,
        checkpointing: Checkpointing,
    ) -> Result<(TrainedStudent, Vec<f32>)> {
        // A LoRA student's teacher is itself with its adapters off (the same weights).
        let teacher = cfg.lora.is_none().then_some(&*models.teacher as &dyn Denoiser);
        let distill_cfg = cfg.distill_config(method, seed);
        // A step keeps the student's maps as a teacher-training step does, and the teacher's
        // and target's passes as much again: a batch beyond memory is refused by name.
        let NetConfig::Mlp(net) = &models.teacher_net;
        check_batch(&models.teacher_params, 3.0 * kept_per_sample(net), distill_cfg.batch)?;
        let d = distill(
            teacher,
            &models.teacher_net,
            &models.teacher_params,
            &self.train_latents,
            &distill_cfg,
            checkpointing,
        )?;
        let student = TrainedStudent {
            method,
            seed,
            distill: distill_cfg,
            params: d.params,
            teacher_evaluations: d.teacher_evaluations,
            seconds: d.seconds,
        };
        Ok((student, d.losses))
    }
}
