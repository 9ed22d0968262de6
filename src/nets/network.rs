//! Which network a teacher or student is — configuration, not code. Distillation,
//! sampling and evaluation build students through `NetConfig` and use them as
//! `Network`s: denoisers whose LoRA adapters can be switched off.

use crate::diffusion::condition::Condition;
use crate::diffusion::denoiser::Denoiser;
use crate::nets::layers::{build_strict, Params};
use crate::nets::lora::{init_adapters, LoraConfig, Switch};
use crate::nets::mlp::{Mlp, MlpConfig};
use crate::runtime::noise::Rng;
use anyhow::Result;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// A network architecture and its sizes. Stored untagged: a config file holds just the
/// architecture's own fields, which tell the architectures apart.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum NetConfig {
    Mlp(MlpConfig),
}

/// Read as the architecture its fields describe, so that a bad field is reported by name
/// (serde's untagged enums only say that no variant matched).
impl<'de> Deserialize<'de> for NetConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        MlpConfig::deserialize(d).map(Self::Mlp)
    }
}

/// A denoiser built from named weights, with a switch for its adapters.
pub trait Network: Denoiser {
    /// Off: the network computes its base model, as if it had no adapters.
    fn adapters(&self) -> &Switch;
    /// The weights of the equivalent plain network (adapters merged in), detached.
    fn merged_params(&self) -> Result<Params>;
}

/// What distillation needs of a student's architecture: build it on weights (with adapters),
/// fresh adapters, and a description a resumed run must match.
pub trait Architecture {
    /// Refuses training samples of another per-sample shape than the network takes.
    fn check_sample_shape(&self, shape: &[usize]) -> Result<()>;
    /// The network on `params` (base weights, plus every adapter when `lora` is set).
    fn build(&self, params: &Params, lora: Option<LoraConfig>) -> Result<Box<dyn Network>>;
    /// Fresh adapters (A random, B = 0) for every layer LoRA adapts, in f32.
    fn init_adapters(&self, lora: LoraConfig, rng: &mut Rng) -> Result<Params>;
    /// The architecture as stored in a run's configuration.
    fn describe(&self) -> serde_json::Value;
    /// Whether a LoRA student is kept as plain merged weights (small networks) rather than as
    /// its adapters alone (a Stable Diffusion UNet, whose merged copy would double its memory).
    fn merges_adapters(&self) -> bool {
        true
    }
}

impl Architecture for NetConfig {
    fn check_sample_shape(&self, shape: &[usize]) -> Result<()> {
        anyhow::ensure!(
            shape == self.sample_shape(),
            "data samples have shape {shape:?} but the student expects {:?}",
            self.sample_shape()
        );
        Ok(())
    }
    fn build(&self, params: &Params, lora: Option<LoraConfig>) -> Result<Box<dyn Network>> {
        NetConfig::build(self, params, lora)
    }
    fn init_adapters(&self, lora: LoraConfig, rng: &mut Rng) -> Result<Params> {
        NetConfig::init_adapters(self, lora, rng)
    }
    fn describe(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

impl NetConfig {
    /// Per-sample shape of x.
    pub fn sample_shape(&self) -> &[usize] {
        match self {
            Self::Mlp(c) => &c.sample_shape,
        }
    }

    pub fn validate(&self) -> Result<()> {
        match self {
            Self::Mlp(c) => c.validate(),
        }
    }

    /// The network on `params` (base weights, plus every adapter when `lora` is set);
    /// every tensor must belong to it.
    pub fn build(&self, params: &Params, lora: Option<LoraConfig>) -> Result<Box<dyn Network>> {
        build_strict(params, || {
            Ok(match self {
                Self::Mlp(c) => Box::new(Mlp::with_lora(c.clone(), params, lora)?) as Box<dyn Network>,
            })
        })
    }

    /// Fresh weights.
    pub fn init(&self, rng: &mut Rng) -> Result<Params> {
        match self {
            Self::Mlp(c) => c.init(rng),
        }
    }

    /// Fresh adapters (A random, B = 0) for every layer LoRA adapts.
    pub fn init_adapters(&self, lora: LoraConfig, rng: &mut Rng) -> Result<Params> {
        let mut params = Params::new();
        match self {
            Self::Mlp(c) => {
                for (name, out, inp) in c.layers() {
                    init_adapters(&mut params, &name, &[out, inp], lora, rng)?;
                }
            }
        }
        Ok(params)
    }
}

impl Network for Mlp {
    fn adapters(&self) -> &Switch {
        Mlp::adapters(self)
    }
    fn merged_params(&self) -> Result<Params> {
        Mlp::merged_params(self)
    }
}

/// A network seen with its adapters off: the base model. With LoRA students of a network
/// teacher this *is* the teacher (the reference's `disable_adapters()`), sharing its weights.
pub struct AdaptersOff<'a>(pub &'a dyn Network);

impl Denoiser for AdaptersOff<'_> {
    fn schedule(&self) -> &crate::diffusion::schedule::Schedule {
        self.0.schedule()
    }
    fn num_classes(&self) -> usize {
        self.0.num_classes()
    }
    fn eps(&self, x: &Tensor, t: &[usize], cond: &Condition) -> Result<Tensor> {
        self.0.adapters().while_off(|| self.0.eps(x, t, cond))
    }
    fn eps_guided(&self, x: &Tensor, t: &[usize], cond: &Condition, w: f64) -> Result<Tensor> {
        self.0.adapters().while_off(|| self.0.eps_guided(x, t, cond, w))
    }
}
