//! Teacher specifications, the one place they are parsed: an analytic Gaussian or Gaussian
//! mixture, a Stable Diffusion pipeline folder (`sd:DIR`), or a folder written by
//! `dcm train-teacher`. The grammar is `SPEC_HELP`.

use crate::data::toy::Toy;
use crate::diffusion::analytic::{Gaussian, GaussianMixture};
use crate::diffusion::schedule::Schedule;
use anyhow::{bail, ensure, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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
  sd:FILE.safetensors | sd:FILE.ckpt            a single-file SD 1.x/2.x/SDXL checkpoint (original layout);
                                                --prediction for SD 2.x, --config for other architectures
  PATH                                          a folder written by `dcm train-teacher`
K is scaled_linear (default), linear or cosine.";

/// A teacher as its spec names it, before anything is loaded.
#[derive(Clone, Debug)]
pub enum TeacherSpec {
    Gaussian(Gaussian),
    Mixture(GaussianMixture),
    /// A diffusers Stable Diffusion pipeline folder or a single-file checkpoint.
    Sd(PathBuf),
    /// A folder written by `dcm train-teacher`.
    Network(PathBuf),
}

/// The prefix of a Stable Diffusion teacher spec.
const SD_PREFIX: &str = "sd:";

impl TeacherSpec {
    /// The teacher `spec` names; errors name the spec.
    pub fn parse(spec: &str) -> Result<Self> {
        Self::parse_inner(spec).with_context(|| format!("--teacher '{spec}'"))
    }

    fn parse_inner(spec: &str) -> Result<Self> {
        if let Some(body) = spec.strip_prefix("gaussian:") {
            return parse_gaussian(body).map(Self::Gaussian);
        }
        if let Some(body) = spec.strip_prefix("mixture:") {
            return parse_mixture(body).map(Self::Mixture);
        }
        if let Some(dir) = spec.strip_prefix(SD_PREFIX) {
            return Ok(Self::Sd(PathBuf::from(dir)));
        }
        let dir = Path::new(spec);
        ensure!(
            dir.is_dir(),
            "not gaussian:…, mixture:… nor an existing model folder (see `dcm sample --help`)"
        );
        Ok(Self::Network(dir.to_path_buf()))
    }

    /// The spec of a Stable Diffusion pipeline folder.
    pub fn sd(dir: &Path) -> String {
        format!("{SD_PREFIX}{}", dir.display())
    }

    /// A spec whose folder is made absolute, so that a run folder naming it works from any
    /// directory.
    pub fn portable(spec: &str) -> String {
        match spec.strip_prefix(SD_PREFIX) {
            Some(dir) => format!("{SD_PREFIX}{}", absolute(dir)),
            None => absolute(spec),
        }
    }
}

/// An existing folder's canonical path; anything else as given.
fn absolute(path: &str) -> String {
    match std::fs::canonicalize(path) {
        Ok(p) if p.is_dir() => p.to_string_lossy().into_owned(),
        _ => path.to_string(),
    }
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

fn parse_gaussian(body: &str) -> Result<Gaussian> {
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
    Ok(Gaussian {
        mean,
        std,
        dim,
        schedule: schedule_of(&map)?,
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
