//! Judges a model's samples against the teacher's reference solve from the same noise
//! and against the held-out data: ODE error, FD, KD, PRDC and class accuracy.

use crate::consistency::sampler::multistep_sample;
use crate::diffusion::condition::Condition;
use crate::diffusion::discretization::Discretization;
use crate::diffusion::teacher_ode::TeacherOde;
use crate::eval::features::features;
use crate::eval::metrics::{fd::frechet_distance, kd::kernel_distance, prdc::prdc, to_matrix};
use crate::eval::model_set::Models;
use crate::eval::ode_error::ode_error;
use crate::eval::records::Metrics;
use crate::eval::reproduce_config::ReproduceConfig;
use crate::eval::setup::Setup;
use crate::nets::autoencoder::decode_all;
use crate::nets::layers::Params;
use crate::runtime::noise::{eval_noise_rng, renoise_rng, standard_normal};
use anyhow::Result;
use candle_core::Tensor;
use nalgebra::DMatrix;

/// Judges decoded samples against the teacher's reference and the held-out data.
pub struct Judge<'a> {
    models: &'a Models,
    labels: Vec<u32>,
    pub cond: Condition,
    /// The evaluation noise x_T every model starts from.
    pub noise: Tensor,
    seed: u64,
    pub ref_latents: Tensor,
    ref_images: Tensor,
    ref_features: DMatrix<f64>,
    real_features: DMatrix<f64>,
}

impl<'a> Judge<'a> {
    /// The evaluation noise of `seed` and the teacher's reference solve from it at guidance `w`.
    pub fn new(setup: &Setup, cfg: &ReproduceConfig, models: &'a Models, seed: u64, w: f64) -> Result<Self> {
        let noise = standard_normal(&mut eval_noise_rng(seed), setup.shape.clone(), &models.runtime.device)?;
        let ode = TeacherOde::new(cfg.solver, cfg.intervals, w)?;
        let ref_latents = ode.solve(&*models.teacher, &noise, &setup.cond)?;
        let ref_images = decode_all(&models.autoencoder, &ref_latents)?;
        let ref_features = to_matrix(&features(&models.featnet, &ref_images)?)?;
        Ok(Self {
            models,
            labels: setup.labels.clone(),
            cond: setup.cond.clone(),
            noise,
            seed,
            ref_latents,
            ref_images,
            ref_features,
            real_features: setup.real_features.clone(),
        })
    }

    /// Every metric of `latents` and their decoded images.
    pub fn judge(&self, latents: &Tensor) -> Result<(Metrics, Tensor)> {
        let images = decode_all(&self.models.autoencoder, latents)?;
        let feats = features(&self.models.featnet, &images)?;
        let predicted = self.models.featnet.logits(&feats)?.argmax(1)?.to_vec1::<u32>()?;
        let hits = predicted.iter().zip(&self.labels).filter(|(p, l)| p == l).count();
        let f = to_matrix(&feats)?;
        let p = prdc(&self.real_features, &f, 5)?;
        let metrics = Metrics {
            ode_error_latent: ode_error(latents, &self.ref_latents)?,
            ode_error_pixel: ode_error(&images, &self.ref_images)?,
            fd_teacher: frechet_distance(&f, &self.ref_features)?,
            fd_data: frechet_distance(&f, &self.real_features)?,
            kd_data: kernel_distance(&f, &self.real_features)?,
            precision: p.precision,
            recall: p.recall,
            density: p.density,
            coverage: p.coverage,
            class_accuracy: hits as f64 / self.labels.len() as f64,
        };
        Ok((metrics, images))
    }

    /// A student's K-step samples from this judge's noise (re-noise from the seed's own stream).
    pub fn sample(&self, cfg: &ReproduceConfig, params: &Params, steps: usize) -> Result<Tensor> {
        let student = self
            .models
            .teacher_net
            .build(&self.models.runtime.frozen(params)?, None)?;
        let grid = Discretization::new(cfg.intervals)?;
        multistep_sample(
            &*student,
            &self.noise,
            grid,
            steps,
            &self.cond,
            &mut renoise_rng(self.seed),
        )
    }
}
