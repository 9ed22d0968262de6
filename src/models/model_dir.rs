//! A model folder: `config.json` beside `model.safetensors`, both written atomically.

use crate::nets::layers::{build_strict, Params};
use crate::runtime::device::Runtime;
use crate::runtime::files::write_atomic;
use crate::runtime::finite::ensure_finite_weights;
use anyhow::{bail, Context, Result};
use candle_core::Device;
use serde::{de::DeserializeOwned, Serialize};
use std::path::Path;

pub const CONFIG: &str = "config.json";
pub const WEIGHTS: &str = "model.safetensors";
/// A LoRA student's trained adapters alone (`model.safetensors` holds them merged).
pub const ADAPTERS: &str = "adapters.safetensors";
/// The loss curve of a training run.
pub const LOSS_LOG: &str = "train_log.csv";

pub fn save(dir: &Path, config: &impl Serialize, params: &Params) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create folder", dir.display()))?;
    write_atomic(&dir.join(CONFIG), serde_json::to_string_pretty(config)?.as_bytes())?;
    save_tensors(&dir.join(WEIGHTS), params)
}

/// `params` as one safetensors file (f32, from any device), written atomically.
pub fn save_tensors(path: &Path, params: &Params) -> Result<()> {
    let cpu = Runtime::default().trainable(params)?;
    let tensors = cpu.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    crate::runtime::tensor_file::write(path, tensors, &Default::default())
}

/// A trained run's folder: `save` plus `train_log.csv` (the loss of every step).
pub fn save_run(dir: &Path, config: &impl Serialize, params: &Params, losses: &[f32]) -> Result<()> {
    save(dir, config, params)?;
    save_loss_log(dir, losses)
}

/// `DIR/train_log.csv`: the loss of every step.
pub fn save_loss_log(dir: &Path, losses: &[f32]) -> Result<()> {
    let mut log = String::from("step,loss\n");
    for (i, l) in losses.iter().enumerate() {
        log.push_str(&format!("{},{l}\n", i + 1));
    }
    write_atomic(&dir.join(LOSS_LOG), log.as_bytes())
}

/// The kinds of model folder dcm writes, recognised by the fields of their `config.json`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Student,
    Teacher,
    Autoencoder,
    Featnet,
    Run,
}

impl Kind {
    fn describe(self) -> &'static str {
        match self {
            Self::Student => "a student folder (written by dcm distill)",
            Self::Teacher => "a teacher folder (written by dcm train-teacher)",
            Self::Autoencoder => "an autoencoder folder (written by dcm train-autoencoder)",
            Self::Featnet => "a feature-network folder (written by dcm train-featnet)",
            Self::Run => "a reproduce run folder (written by dcm reproduce)",
        }
    }

    fn of(config: &serde_json::Value) -> Option<Self> {
        let has = |key: &str| config.get(key).is_some();
        Some(if has("distill") {
            Self::Student
        } else if has("held_out_accuracy") {
            Self::Featnet
        } else if has("held_out_reconstruction_mse") {
            Self::Autoencoder
        } else if has("net") && has("autoencoder") {
            Self::Teacher
        } else if has("preset") {
            Self::Run
        } else {
            return None;
        })
    }
}

/// A folder's `config.json`, which must be of the `expected` kind: another kind of
/// folder is named as such rather than reported as a field serde cannot place.
pub fn load_config<T: DeserializeOwned>(dir: &Path, expected: Kind) -> Result<T> {
    let path = dir.join(CONFIG);
    let text =
        crate::runtime::files::read_regular_text(&path).with_context(|| format!("{}: cannot read", path.display()))?;
    let kind = serde_json::from_str(&text).ok().and_then(|v| Kind::of(&v));
    if let Some(kind) = kind.filter(|&k| k != expected) {
        bail!(
            "{}: this is {}, but {} is expected here",
            dir.display(),
            kind.describe(),
            expected.describe()
        );
    }
    serde_json::from_str(&text).with_context(|| format!("{}: invalid configuration", path.display()))
}

pub fn load_params(dir: &Path) -> Result<Params> {
    let path = dir.join(WEIGHTS);
    let bytes =
        crate::runtime::files::read_regular(&path).with_context(|| format!("{}: cannot read", path.display()))?;
    let map = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
        .with_context(|| format!("{}: malformed safetensors", path.display()))?;
    let params: Params = map.into_iter().collect();
    if let Some((name, t)) = params.iter().find(|(_, t)| !t.dtype().is_float()) {
        bail!(
            "{}: tensor '{name}' is {:?}, but weights must be floating point (f32, f16 or bf16)",
            path.display(),
            t.dtype()
        );
    }
    ensure_finite_weights(&params, &path.display().to_string())?;
    Ok(params)
}

/// Reads just the `net` field of a folder's config (the architecture), ignoring the training record.
pub fn load_net_config<C: DeserializeOwned>(dir: &Path, expected: Kind) -> Result<C> {
    #[derive(serde::Deserialize)]
    struct NetOnly<C> {
        net: C,
    }
    Ok(load_config::<NetOnly<C>>(dir, expected)?.net)
}

/// A frozen autoencoder folder, on `rt`'s device in its precision.
pub fn load_autoencoder(dir: &Path, rt: &Runtime) -> Result<crate::nets::autoencoder::Autoencoder> {
    let params = rt.frozen(&load_params(dir)?)?;
    let net = build_strict(&params, || {
        crate::nets::autoencoder::Autoencoder::new(load_net_config(dir, Kind::Autoencoder)?, &params)
    });
    net.with_context(|| format!("{}: weights do not match config.json", dir.display()))
}

/// A frozen feature-network folder, on `rt`'s device in its precision.
pub fn load_featnet(dir: &Path, rt: &Runtime) -> Result<crate::nets::featnet::Featnet> {
    let params = rt.frozen(&load_params(dir)?)?;
    let net = build_strict(&params, || {
        crate::nets::featnet::Featnet::new(load_net_config(dir, Kind::Featnet)?, &params)
    });
    net.with_context(|| format!("{}: weights do not match config.json", dir.display()))
}

/// `target` as a path relative to the folder `base` (both must exist), so that
/// model folders that refer to each other can be moved together.
pub fn relative_path(target: &Path, base: &Path) -> Result<std::path::PathBuf> {
    let canon = |p: &Path| std::fs::canonicalize(p).with_context(|| format!("{}: not found", p.display()));
    let (t, b) = (canon(target)?, canon(base)?);
    let common = t.components().zip(b.components()).take_while(|(x, y)| x == y).count();
    let mut rel: std::path::PathBuf = b.components().skip(common).map(|_| "..").collect();
    rel.extend(t.components().skip(common));
    Ok(rel)
}
