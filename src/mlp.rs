//! An ε-prediction residual MLP for low-dimensional data:
//! `h = W_in x + W_emb [emb(t), emb(c)]` (sinusoidal timestep embedding, learned
//! class embedding with a null class), `depth` blocks `h ← h + W_i silu(h)`,
//! output `W_out silu(h)` in x's shape.

use crate::denoiser::{Denoiser, Labels};
use crate::layers::{linear, param, Init, Params};
use crate::noise::Rng;
use crate::schedule::{Schedule, ScheduleKind};
use anyhow::{ensure, Result};
use candle_core::{Device, Module, Tensor};
use candle_nn::Linear;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlpConfig {
    /// Per-sample shape of x, e.g. `[2]`.
    pub sample_shape: Vec<usize>,
    pub hidden: usize,
    pub depth: usize,
    pub time_dim: usize,
    /// Real classes; index `num_classes` is the null label.
    pub num_classes: usize,
    pub schedule: ScheduleKind,
}

impl MlpConfig {
    pub fn dim(&self) -> usize {
        self.sample_shape.iter().product()
    }

    pub fn validate(&self) -> Result<()> {
        ensure!(self.dim() > 0, "sample_shape must be non-empty with positive sizes");
        ensure!(self.hidden > 0 && self.depth > 0, "hidden and depth must be positive");
        ensure!(
            self.time_dim >= 2 && self.time_dim.is_multiple_of(2),
            "time_dim must be even and at least 2"
        );
        Ok(())
    }

    /// (name, [out, in]) of every linear layer, in order: input, embedding, residual blocks, output.
    fn layers(&self) -> Vec<(String, usize, usize)> {
        let mut v = vec![
            ("in".to_string(), self.hidden, self.dim()),
            ("emb".to_string(), self.hidden, 2 * self.time_dim),
        ];
        v.extend((0..self.depth).map(|i| (format!("hidden.{i}"), self.hidden, self.hidden)));
        v.push(("out".to_string(), self.dim(), self.hidden));
        v
    }

    /// Fresh weights: PyTorch's Linear initialisation, the output layer scaled down by 10.
    pub fn init(&self, rng: &mut Rng) -> Result<Params> {
        let mut init = Init::new(rng);
        for (name, out, inp) in self.layers() {
            init.linear(&name, out, inp, if name == "out" { 0.1 } else { 1.0 })?;
        }
        init.uniform("class_emb", &[self.num_classes + 1, self.time_dim], 1.0)?;
        Ok(init.params)
    }
}

pub struct Mlp {
    cfg: MlpConfig,
    schedule: Schedule,
    layers: Vec<Linear>,
    class_emb: Tensor,
}

impl Mlp {
    pub fn new(cfg: MlpConfig, params: &Params) -> Result<Self> {
        cfg.validate()?;
        let layers = cfg
            .layers()
            .iter()
            .map(|(name, out, inp)| linear(params, name, *out, *inp))
            .collect::<Result<_>>()?;
        let class_emb = param(params, "class_emb", &[cfg.num_classes + 1, cfg.time_dim])?;
        Ok(Self {
            schedule: Schedule::new(cfg.schedule),
            cfg,
            layers,
            class_emb,
        })
    }

    pub fn config(&self) -> &MlpConfig {
        &self.cfg
    }
}

/// Transformer-style sinusoidal embedding of integer timesteps: `[sin(t f_i), cos(t f_i)]`,
/// `f_i = 10000^(−i/half)`.
pub fn timestep_embedding(t: &[usize], dim: usize, device: &Device) -> Result<Tensor> {
    let half = dim / 2;
    let freqs: Vec<f64> = (0..half)
        .map(|i| (-(10000f64.ln()) * i as f64 / half as f64).exp())
        .collect();
    let mut v = Vec::with_capacity(t.len() * dim);
    for &ti in t {
        v.extend(freqs.iter().map(|f| (ti as f64 * f).sin() as f32));
        v.extend(freqs.iter().map(|f| (ti as f64 * f).cos() as f32));
    }
    Ok(Tensor::from_vec(v, (t.len(), dim), device)?)
}

impl Denoiser for Mlp {
    fn schedule(&self) -> &Schedule {
        &self.schedule
    }
    fn num_classes(&self) -> usize {
        self.cfg.num_classes
    }
    fn eps(&self, x: &Tensor, t: &[usize], labels: &Labels) -> Result<Tensor> {
        let b = x.dim(0)?;
        ensure!(
            x.dims()[1..] == self.cfg.sample_shape[..],
            "network expects samples of shape {:?}, got {:?}",
            self.cfg.sample_shape,
            &x.dims()[1..]
        );
        let null = self.cfg.num_classes as u32;
        let ids: Vec<u32> = labels.iter().map(|l| l.filter(|&c| c < null).unwrap_or(null)).collect();
        if let Some(c) = labels.iter().flatten().find(|&&c| c >= null) {
            anyhow::bail!(
                "class {c} is out of range for a network with {} classes",
                self.cfg.num_classes
            );
        }
        let cemb = self.class_emb.index_select(&Tensor::from_vec(ids, b, x.device())?, 0)?;
        let temb = timestep_embedding(t, self.cfg.time_dim, x.device())?;
        let emb = Tensor::cat(&[&temb, &cemb], 1)?;
        let [input, embed, blocks @ .., out] = &self.layers[..] else {
            anyhow::bail!("an MLP needs input, embedding and output layers");
        };
        let mut h = (input.forward(&x.flatten_from(1)?)? + embed.forward(&emb)?)?;
        for block in blocks {
            h = (&h + block.forward(&h.silu()?)?)?;
        }
        Ok(out.forward(&h.silu()?)?.reshape(x.shape())?)
    }
}
