//! An ε-prediction residual MLP for low-dimensional data:
//! `h = W_in x + W_emb [emb(t), emb(c)]` (sinusoidal timestep embedding, learned
//! class embedding with a null class), `depth` blocks `h ← h + W_i silu(h)`,
//! output `W_out silu(h)` in x's shape.

use crate::denoiser::{Denoiser, Labels};
use crate::kernels::dense::Dense;
use crate::layers::{param, Init, Params};
use crate::noise::Rng;
use crate::schedule::{Schedule, ScheduleKind};
use anyhow::{ensure, Result};
use candle_core::{Device, Tensor};
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

type Layer = (Tensor, Tensor);

pub struct Mlp {
    cfg: MlpConfig,
    schedule: Schedule,
    /// (weight `[out, in]`, bias `[out]`) per layer, in `MlpConfig::layers` order.
    layers: Vec<Layer>,
    class_emb: Tensor,
}

impl Mlp {
    pub fn new(cfg: MlpConfig, params: &Params) -> Result<Self> {
        cfg.validate()?;
        let layers = cfg
            .layers()
            .iter()
            .map(|(name, out, inp)| {
                let w = param(params, &format!("{name}.weight"), &[*out, *inp])?;
                Ok((w, param(params, &format!("{name}.bias"), &[*out])?))
            })
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
        let x_flat = x.flatten_from(1)?;
        let y = if x.device().is_cpu() {
            self.forward_fused(&x_flat, &emb)?
        } else {
            self.forward_candle(&x_flat, &emb)?
        };
        Ok(y.reshape(x.shape())?)
    }
}

impl Mlp {
    /// The layers as `Dense` ops: one pass and one matrix product per layer (CPU).
    fn forward_fused(&self, x: &Tensor, emb: &Tensor) -> Result<Tensor> {
        let (input, embed, blocks, out) = self.parts()?;
        let dense = |silu, residual, h: &Tensor, l: &Layer| Dense { silu, residual }.forward(h, &l.0, &l.1);
        let mut h = (dense(false, false, x, input)? + dense(false, false, emb, embed)?)?;
        for block in blocks {
            h = dense(true, true, &h, block)?;
        }
        Ok(dense(true, false, &h, out)?)
    }

    /// The same network from candle's generic ops (every device).
    fn forward_candle(&self, x: &Tensor, emb: &Tensor) -> Result<Tensor> {
        let (input, embed, blocks, out) = self.parts()?;
        let linear = |h: &Tensor, l: &Layer| h.matmul(&l.0.t()?)?.broadcast_add(&l.1);
        let mut h = (linear(x, input)? + linear(emb, embed)?)?;
        for block in blocks {
            h = (&h + linear(&h.silu()?, block)?)?;
        }
        Ok(linear(&h.silu()?, out)?)
    }

    fn parts(&self) -> Result<(&Layer, &Layer, &[Layer], &Layer)> {
        match &self.layers[..] {
            [input, embed, blocks @ .., out] => Ok((input, embed, blocks, out)),
            _ => anyhow::bail!("an MLP needs input, embedding and output layers"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fused CPU forward computes the network the generic path (used on GPUs) computes.
    #[test]
    fn fused_forward_matches_candle_ops() -> Result<()> {
        let cfg = MlpConfig {
            sample_shape: vec![3, 5],
            hidden: 64,
            depth: 3,
            time_dim: 16,
            num_classes: 4,
            schedule: ScheduleKind::ScaledLinear,
        };
        let net = Mlp::new(cfg.clone(), &cfg.init(&mut crate::noise::seeded(3))?)?;
        let x = Tensor::randn(0f32, 1.0, (33, 15), &Device::Cpu)?;
        let emb = Tensor::randn(0f32, 1.0, (33, 32), &Device::Cpu)?;
        let diff = (net.forward_fused(&x, &emb)? - net.forward_candle(&x, &emb)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-5, "fused and generic forwards differ by {diff}");
        Ok(())
    }
}
