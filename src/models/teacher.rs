//! Teacher specifications: an analytic Gaussian or Gaussian mixture, or a trained
//! network folder. The grammar is documented in `SPEC_HELP`.

use crate::data::toy::Toy;
use crate::data::Dataset;
use crate::diffusion::analytic::{Gaussian, GaussianMixture};
use crate::diffusion::condition::Condition;
use crate::diffusion::denoiser::Denoiser;
use crate::diffusion::schedule::{Schedule, ScheduleKind};
use crate::models::model_dir;
use crate::models::sd::SdTeacher;
use crate::nets::network::{NetConfig, Network};
use crate::runtime::device::Runtime;
use crate::runtime::memory::{ensure_fits, f32_bytes};
use crate::runtime::noise::Rng;
use anyhow::{bail, ensure, Context, Result};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

pub const SPEC_HELP: &str = "\
Teacher SPEC, one of:
  gaussian:mean=M,std=S[,dim=D][,schedule=K]   isotropic N(M, S^2 I); any dimension unless dim= is given
  mixture:ring | mixture:grid [,schedule=K]     the toy mixtures behind toy:ring (8 components) and toy:grid (25)
  mixture:means=X:Y/X:Y/...,std=S[/S...][,weights=W/W/...][,schedule=K]
                                                components separated by '/', coordinates by ':';
                                                component k is class k
  sd:DIR                                        a diffusers Stable Diffusion pipeline folder (SD 1.x/2.x/SDXL):
                                                model_index.json, unet/, vae/, text_encoder/, tokenizer/,
                                                scheduler/ (SDXL: text_encoder_2/, tokenizer_2/); needs --prompt
                                                or --prompts; guidance W ≤ 1 is none, as diffusers
  PATH                                          a folder written by `dcm train-teacher`
K is scaled_linear (default), linear or cosine.";

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
    /// A Stable Diffusion pipeline folder (`sd:DIR`), conditioned on text.
    Sd(Box<SdTeacher>),
}

fn parse_keys(body: &str, allowed: &[&str]) -> Result<BTreeMap<String, String>> {
    let mut map = BTreeMap::new();
    for part in body.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .with_context(|| format!("'{part}' is not key=value"))?;
        ensure!(
            allowed.contains(&k),
            "unknown key '{k}' (expected {})",
            allowed.join(", ")
        );
        ensure!(
            map.insert(k.to_string(), v.to_string()).is_none(),
            "key '{k}' given twice"
        );
    }
    Ok(map)
}

/// The largest coordinate, mean or std an analytic teacher takes: its samples, their
/// squares and the denoiser's arithmetic must stay well inside f32.
const MAX_SPEC_VALUE: f64 = 1e6;

fn spec_number(v: &str, what: &str) -> Result<f64> {
    match v.parse::<f64>() {
        Ok(x) if x.is_finite() && x.abs() <= MAX_SPEC_VALUE => Ok(x),
        _ => bail!("{what}='{v}' is not a finite number of magnitude at most {MAX_SPEC_VALUE:e}"),
    }
}

fn number(map: &BTreeMap<String, String>, key: &str) -> Result<Option<f64>> {
    map.get(key).map(|v| spec_number(v, key)).transpose()
}

fn numbers(s: &str, sep: char, what: &str) -> Result<Vec<f64>> {
    s.split(sep).map(|v| spec_number(v, what)).collect()
}

fn schedule_of(map: &BTreeMap<String, String>) -> Result<Schedule> {
    Ok(Schedule::new(
        map.get("schedule").map(|s| s.parse()).transpose()?.unwrap_or_default(),
    ))
}

impl Teacher {
    /// The teacher `spec` names, frozen on `rt`.
    pub fn parse(spec: &str, rt: &Runtime) -> Result<Self> {
        Self::parse_inner(spec, rt).with_context(|| format!("--teacher '{spec}'"))
    }

    fn parse_inner(spec: &str, rt: &Runtime) -> Result<Self> {
        if let Some(body) = spec.strip_prefix("gaussian:") {
            let map = parse_keys(body, &["mean", "std", "dim", "schedule"])?;
            let std = number(&map, "std")?.context("gaussian needs std=S")?;
            ensure!(std > 0.0, "std must be positive");
            let dim = map
                .get("dim")
                .map(|d| {
                    d.parse::<usize>()
                        .ok()
                        .filter(|&d| d > 0)
                        .with_context(|| format!("dim='{d}' must be a positive integer"))
                })
                .transpose()?;
            let mean = number(&map, "mean")?.context("gaussian needs mean=M")?;
            return Ok(Self::Gaussian(Gaussian {
                mean,
                std,
                dim,
                schedule: schedule_of(&map)?,
            }));
        }
        if let Some(body) = spec.strip_prefix("mixture:") {
            return Self::parse_mixture(body).map(Self::Mixture);
        }
        if let Some(dir) = spec.strip_prefix("sd:") {
            return Ok(Self::Sd(Box::new(SdTeacher::load(Path::new(dir), rt)?)));
        }
        let dir = Path::new(spec);
        ensure!(
            dir.is_dir(),
            "not gaussian:…, mixture:… nor an existing model folder (see `dcm sample --help`)"
        );
        let cfg: NetworkTeacherConfig = model_dir::load_config(dir, model_dir::Kind::Teacher)?;
        let params = rt.frozen(&model_dir::load_params(dir)?)?;
        let net = cfg
            .net
            .build(&params, None)
            .with_context(|| format!("{}: weights do not match config.json", dir.display()))?;
        Ok(Self::Network {
            net,
            config: cfg.net,
            dir: dir.to_path_buf(),
        })
    }

    fn parse_mixture(body: &str) -> Result<GaussianMixture> {
        let (preset, rest) = match body.split_once(',') {
            Some((p, r)) if !p.contains('=') => (Some(p), r),
            None if !body.contains('=') => (Some(body), ""),
            _ => (None, body),
        };
        if let Some(name) = preset {
            let map = parse_keys(rest, &["schedule"])?;
            let toy = Toy::parse(name)?;
            let schedule = schedule_of(&map)?;
            return toy
                .components()
                .map(|c| GaussianMixture {
                    components: c,
                    schedule,
                })
                .with_context(|| format!("toy '{name}' is not a Gaussian mixture (use ring or grid)"));
        }
        let map = parse_keys(rest, &["means", "std", "weights", "schedule"])?;
        let means = map
            .get("means")
            .context("mixture needs means=X:Y/X:Y/...")?
            .split('/')
            .map(|m| numbers(m, ':', "means"))
            .collect::<Result<Vec<_>>>()?;
        let k = means.len();
        let stds = numbers(map.get("std").context("mixture needs std=S")?, '/', "std")?;
        let stds = if stds.len() == 1 { vec![stds[0]; k] } else { stds };
        let weights = map
            .get("weights")
            .map(|w| numbers(w, '/', "weights"))
            .transpose()?
            .unwrap_or(vec![1.0; k]);
        GaussianMixture::new(means, stds, weights, schedule_of(&map)?)
    }

    pub fn as_denoiser(&self) -> &dyn Denoiser {
        match self {
            Self::Gaussian(g) => g,
            Self::Mixture(m) => m,
            Self::Network { net, .. } => &**net,
            Self::Sd(sd) => &**sd,
        }
    }

    /// Per-sample shape when the teacher fixes one.
    pub fn sample_shape(&self) -> Option<Vec<usize>> {
        match self {
            Self::Gaussian(g) => g.dim.map(|d| vec![d]),
            Self::Mixture(m) => Some(vec![m.dim()]),
            Self::Network { config, .. } => Some(config.sample_shape().to_vec()),
            Self::Sd(_) => None,
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

    /// Images in [0, 1] of samples `latents`: through an SD pipeline's VAE (`[B, 3, H, W]`) or a
    /// latent-space teacher's autoencoder.
    pub fn decode(&self, rt: &Runtime, latents: &Tensor) -> Result<Tensor> {
        if let Self::Sd(sd) = self {
            return crate::models::sd::images::decode(sd, rt, latents);
        }
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
            Self::Sd(sd) => bail!(
                "a Stable Diffusion teacher ({}) needs --data",
                sd.pipeline().dir().display()
            ),
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
