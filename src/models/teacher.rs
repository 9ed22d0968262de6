//! The small-model family's teachers: an analytic Gaussian or Gaussian mixture, or a network
//! folder written by `dcm train-teacher` (specs are parsed by `models::spec`).

use crate::data::Dataset;
use crate::diffusion::analytic::{Gaussian, GaussianMixture};
use crate::diffusion::condition::Condition;
use crate::diffusion::denoiser::Denoiser;
use crate::diffusion::schedule::{Schedule, ScheduleKind};
use crate::models::model_dir;
use crate::models::spec::TeacherSpec;
use crate::nets::network::{NetConfig, Network};
use crate::runtime::device::Runtime;
use crate::runtime::memory::{ensure_fits, f32_bytes};
use crate::runtime::noise::Rng;
use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// What a trained network folder's `config.json` holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NetworkTeacherConfig {
    pub net: NetConfig,
    pub data: String,
    /// The autoencoder whose latent space the teacher lives in (relative to this folder), if any.
    pub autoencoder: Option<String>,
    pub steps: usize,
    pub seed: u64,
}

pub enum Teacher {
    Gaussian(Gaussian),
    Mixture(GaussianMixture),
    Network {
        net: Box<dyn Network>,
        config: NetConfig,
        dir: std::path::PathBuf,
    },
}

impl Teacher {
    /// The teacher `spec` names, frozen on `rt`.
    pub fn parse(spec: &str, rt: &Runtime) -> Result<Self> {
        let parsed = TeacherSpec::parse(spec)?;
        Self::load(parsed, rt).with_context(|| format!("--teacher '{spec}'"))
    }

    /// The teacher of a parsed spec, frozen on `rt`.
    pub fn load(spec: TeacherSpec, rt: &Runtime) -> Result<Self> {
        let dir = match spec {
            TeacherSpec::Gaussian(g) => return Ok(Self::Gaussian(g)),
            TeacherSpec::Mixture(m) => return Ok(Self::Mixture(m)),
            TeacherSpec::Sd(dir) => bail!(
                "{}: a Stable Diffusion pipeline, not a teacher of the small-model family",
                dir.display()
            ),
            TeacherSpec::Network(dir) => dir,
        };
        let cfg: NetworkTeacherConfig = model_dir::load_config(&dir, model_dir::Kind::Teacher)?;
        let params = rt.frozen(&model_dir::load_params(&dir)?)?;
        let net = cfg
            .net
            .build(&params, None)
            .with_context(|| format!("{}: weights do not match config.json", dir.display()))?;
        Ok(Self::Network {
            net,
            config: cfg.net,
            dir,
        })
    }

    pub fn as_denoiser(&self) -> &dyn Denoiser {
        match self {
            Self::Gaussian(g) => g,
            Self::Mixture(m) => m,
            Self::Network { net, .. } => &**net,
        }
    }

    /// Per-sample shape when the teacher fixes one.
    pub fn sample_shape(&self) -> Option<Vec<usize>> {
        match self {
            Self::Gaussian(g) => g.dim.map(|d| vec![d]),
            Self::Mixture(m) => Some(vec![m.dim()]),
            Self::Network { config, .. } => Some(config.sample_shape().to_vec()),
        }
    }

    /// The autoencoder of a latent-space network teacher (its path is stored relative to the teacher folder).
    pub fn autoencoder(&self, rt: &Runtime) -> Result<Option<crate::nets::autoencoder::Autoencoder>> {
        let Self::Network { dir, .. } = self else {
            return Ok(None);
        };
        let cfg: NetworkTeacherConfig = model_dir::load_config(dir, model_dir::Kind::Teacher)?;
        cfg.autoencoder
            .map(|p| model_dir::load_autoencoder(&dir.join(p), rt))
            .transpose()
    }

    /// Images in [0, 1] of samples `latents`, through a latent-space teacher's autoencoder.
    pub fn decode(&self, rt: &Runtime, latents: &Tensor) -> Result<Tensor> {
        let ae = self.autoencoder(rt)?;
        let ae = ae.context("--decode: the teacher has no autoencoder (not a latent-space teacher)")?;
        crate::nets::autoencoder::decode_all(&ae, latents)
    }

    /// The named kind of the teacher's schedule (a pretrained model's own betas have none).
    pub fn schedule_kind(&self) -> Result<ScheduleKind> {
        self.as_denoiser()
            .schedule()
            .kind()
            .context("the teacher's noise schedule is not scaled_linear, linear or cosine")
    }

    /// Draws training data from an analytic teacher's own distribution.
    pub fn sample_data(&self, n: usize, rng: &mut Rng) -> Result<Dataset> {
        match self {
            Self::Mixture(m) => m.sample(n, rng),
            Self::Gaussian(g) => {
                let d = g
                    .dim
                    .context("a gaussian teacher without dim= needs --data (or add dim=D to the spec)")?;
                ensure_fits(
                    f32_bytes(&[n, d]) * 2.0,
                    &format!("gaussian dim={d} ({n} training samples)"),
                )?;
                let z = crate::runtime::noise::standard_normal(rng, (n, d), &candle_core::Device::Cpu)?;
                Dataset::new(((z * g.std)? + g.mean)?, vec![None; n], 0)
            }
            Self::Network { dir, .. } => bail!("a network teacher ({}) needs --data", dir.display()),
        }
    }
}

impl Denoiser for Teacher {
    fn schedule(&self) -> &Schedule {
        self.as_denoiser().schedule()
    }
    fn num_classes(&self) -> usize {
        self.as_denoiser().num_classes()
    }
    fn eps(&self, x: &Tensor, t: &[usize], cond: &Condition) -> Result<Tensor> {
        self.as_denoiser().eps(x, t, cond)
    }
    fn eps_guided(&self, x: &Tensor, t: &[usize], cond: &Condition, w: f64) -> Result<Tensor> {
        self.as_denoiser().eps_guided(x, t, cond, w)
    }
}
