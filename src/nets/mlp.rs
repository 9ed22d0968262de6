//! An ε-prediction residual MLP for low-dimensional data:
//! `h = W_in x + W_emb [emb(t), emb(c)]` (sinusoidal timestep embedding, learned
//! class embedding with a null class), `depth` blocks `h ← h + W_i silu(h)`,
//! output `W_out silu(h)` in x's shape.

use crate::diffusion::condition::Condition;
use crate::diffusion::denoiser::Denoiser;
use crate::diffusion::schedule::{Schedule, ScheduleKind, T};
use crate::nets::kernels::silu::Silu;
use crate::nets::kernels::{self, dense::Dense};
use crate::nets::layers::{param, Init, Params};
use crate::nets::lora::{LoraConfig, LoraLinear, Switch};
use crate::runtime::noise::Rng;
use anyhow::{ensure, Context, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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
        // Far beyond any MLP dcm trains, small enough that sizes and tables cannot overflow memory.
        let limits = [
            ("hidden", self.hidden, 1 << 16),
            ("depth", self.depth, 1 << 10),
            ("time_dim", self.time_dim, 1 << 12),
        ];
        for (name, value, max) in limits {
            ensure!(value <= max, "{name} = {value} is larger than {max}");
        }
        ensure!(
            self.num_classes < 1 << 20,
            "num_classes = {} is larger than {}",
            self.num_classes,
            1 << 20
        );
        Ok(())
    }

    /// (name, [out, in]) of every linear layer, in order: input, embedding, residual blocks,
    /// output. These are the layers LoRA adapts.
    pub fn layers(&self) -> Vec<(String, usize, usize)> {
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

type Layer = LoraLinear;

pub struct Mlp {
    cfg: MlpConfig,
    schedule: Schedule,
    /// Every linear layer (with its adapter under LoRA), in `MlpConfig::layers` order.
    layers: Vec<Layer>,
    /// Turns all adapters on or off at once.
    switch: Switch,
    class_emb: Tensor,
    /// `timestep_embedding` of every timestep 0..=T, computed once, in the weights' dtype.
    sinusoids: Tensor,
}

impl Mlp {
    pub fn new(cfg: MlpConfig, params: &Params) -> Result<Self> {
        Self::with_lora(cfg, params, None)
    }

    /// The network with a LoRA adapter on every linear layer when `lora` is set
    /// (`params` then holds each layer's `lora_A`/`lora_B` beside its weights).
    pub fn with_lora(cfg: MlpConfig, params: &Params, lora: Option<LoraConfig>) -> Result<Self> {
        cfg.validate()?;
        let switch = Switch::default();
        let layers = cfg
            .layers()
            .iter()
            .map(|(name, out, inp)| {
                let layer = LoraLinear::load(params, name, *out, *inp, lora, switch.clone())?;
                ensure!(layer.bias().is_some(), "missing tensor '{name}.bias'");
                Ok(layer)
            })
            .collect::<Result<_>>()?;
        let class_emb = param(params, "class_emb", &[cfg.num_classes + 1, cfg.time_dim])?;
        Ok(Self {
            sinusoids: sinusoid_table(cfg.time_dim, class_emb.device())?.to_dtype(class_emb.dtype())?,
            schedule: Schedule::new(cfg.schedule),
            cfg,
            layers,
            switch,
            class_emb,
        })
    }

    pub fn config(&self) -> &MlpConfig {
        &self.cfg
    }

    /// The switch of every adapter (off: the base network).
    pub fn adapters(&self) -> &Switch {
        &self.switch
    }

    /// The weights of the equivalent plain network, adapters merged into their layers
    /// (`W + (α/r) B A`), detached.
    pub fn merged_params(&self) -> Result<Params> {
        let mut params = Params::new();
        for ((name, ..), layer) in self.cfg.layers().iter().zip(&self.layers) {
            let (w, b) = layer.merged()?;
            params.insert(format!("{name}.weight"), w.detach());
            params.extend(b.map(|b| (format!("{name}.bias"), b.detach())));
        }
        params.insert("class_emb".into(), self.class_emb.detach());
        Ok(params)
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

/// `timestep_embedding` of every timestep 0..=T, computed once per width for the whole
/// process (a distillation run builds several networks; 64k sines and cosines each).
fn sinusoid_table(dim: usize, device: &Device) -> Result<Tensor> {
    static TABLES: std::sync::Mutex<BTreeMap<usize, Tensor>> = std::sync::Mutex::new(BTreeMap::new());
    let mut tables = TABLES.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let table = match tables.get(&dim) {
        Some(t) => t.clone(),
        None => {
            let t = timestep_embedding(&(0..=T).collect::<Vec<_>>(), dim, &Device::Cpu)?;
            tables.insert(dim, t.clone());
            t
        }
    };
    Ok(table.to_device(device)?)
}

impl Denoiser for Mlp {
    fn schedule(&self) -> &Schedule {
        &self.schedule
    }
    fn num_classes(&self) -> usize {
        self.cfg.num_classes
    }
    fn eps(&self, x: &Tensor, t: &[usize], cond: &Condition) -> Result<Tensor> {
        let ids = self.class_ids(x, cond.labels()?)?;
        let h = (self.input(x)? + self.embedding(t, &ids, x.device())?)?;
        let (_, _, _, out) = self.parts()?;
        let e = self.dense(out, &self.blocks(h)?, true, false)?;
        Ok(e.reshape(x.shape())?.to_dtype(x.dtype())?)
    }

    /// Both halves share `W_in x`, and the output layer, being affine, is applied once to
    /// `w silu(h_c) + (1 − w) silu(h_u)`: the same value as two forwards, fewer products.
    fn eps_guided(&self, x: &Tensor, t: &[usize], cond: &Condition, w: f64) -> Result<Tensor> {
        let b = x.dim(0)?;
        let ids = self.class_ids(x, cond.labels()?)?;
        let null = vec![self.cfg.num_classes as u32; b];
        let e = self.embedding(&[t, t].concat(), &[ids, null].concat(), x.device())?;
        let hx = self.input(x)?;
        let a = self.silu(&self.blocks((Tensor::cat(&[&hx, &hx], 0)? + e)?)?)?;
        let mixed = ((a.narrow(0, 0, b)? * w)? + (a.narrow(0, b, b)? * (1.0 - w))?)?;
        let (_, _, _, out) = self.parts()?;
        let e = self.dense(out, &mixed, false, false)?;
        Ok(e.reshape(x.shape())?.to_dtype(x.dtype())?)
    }
}

impl Mlp {
    /// Class index per row (`num_classes` for the null label), after checking shapes and labels.
    fn class_ids(&self, x: &Tensor, labels: &[Option<u32>]) -> Result<Vec<u32>> {
        ensure!(
            x.dims()[1..] == self.cfg.sample_shape[..],
            "network expects samples of shape {:?}, got {:?}",
            self.cfg.sample_shape,
            &x.dims()[1..]
        );
        let null = self.cfg.num_classes as u32;
        if let Some(c) = labels.iter().flatten().find(|&&c| c >= null) {
            anyhow::bail!(
                "class {c} is out of range for a network with {} classes",
                self.cfg.num_classes
            );
        }
        Ok(labels.iter().map(|l| l.unwrap_or(null)).collect())
    }

    fn input(&self, x: &Tensor) -> Result<Tensor> {
        let (input, ..) = self.parts()?;
        let x = x.flatten_from(1)?.to_dtype(self.class_emb.dtype())?;
        self.dense(input, &x, false, false)
    }

    /// `W_emb [emb(t), emb(c)] + b_emb` per row, computed once per distinct (t, c) pair
    /// (a sampling step has at most classes + 1 of them) and gathered.
    fn embedding(&self, t: &[usize], ids: &[u32], device: &Device) -> Result<Tensor> {
        let mut pairs: Vec<(usize, u32)> = t.iter().copied().zip(ids.iter().copied()).collect();
        pairs.sort_unstable();
        pairs.dedup();
        let row = |p: (usize, u32)| pairs.binary_search(&p).map(|i| i as u32).expect("pair was collected");
        let index: Vec<u32> = t.iter().zip(ids).map(|(&t, &c)| row((t, c))).collect();
        let (ut, uc): (Vec<usize>, Vec<u32>) = pairs.iter().copied().unzip();
        let cemb = self.class_emb.index_select(&Tensor::new(uc, device)?, 0)?;
        let temb = if ut.iter().all(|&t| t <= T) {
            let rows: Vec<u32> = ut.iter().map(|&t| t as u32).collect();
            self.sinusoids.index_select(&Tensor::new(rows, device)?, 0)?
        } else {
            timestep_embedding(&ut, self.cfg.time_dim, device)?.to_dtype(self.class_emb.dtype())?
        };
        let emb = Tensor::cat(&[&temb, &cemb], 1)?;
        let (_, embed, ..) = self.parts()?;
        Ok(self
            .dense(embed, &emb, false, false)?
            .index_select(&Tensor::new(index, device)?, 0)?)
    }

    fn blocks(&self, mut h: Tensor) -> Result<Tensor> {
        let (_, _, blocks, _) = self.parts()?;
        for block in blocks {
            h = self.dense(block, &h, true, true)?;
        }
        Ok(h)
    }

    /// `[h +] act(h) W'ᵀ + b`, `W'` the layer's weight with its adapter merged in while the
    /// adapters are on (the update stays differentiable in A and B): one `Dense` op where the
    /// fused kernels serve, candle's generic ops elsewhere.
    fn dense(&self, layer: &Layer, h: &Tensor, silu: bool, residual: bool) -> Result<Tensor> {
        let w = match (layer.adapter(), self.switch.is_on()) {
            (Some(_), true) => layer.merged()?.0,
            _ => layer.weight().clone(),
        };
        let (w, b) = (&w, layer.bias().context("linear layer without bias")?);
        if kernels::serve(h) {
            return Ok(Dense { silu, residual }.forward(h, w, b)?);
        }
        let a = if silu { h.silu()? } else { h.clone() };
        let y = a.matmul(&w.t()?)?.broadcast_add(b)?;
        Ok(if residual { (y + h)? } else { y })
    }

    fn silu(&self, h: &Tensor) -> Result<Tensor> {
        Ok(if kernels::serve(h) {
            Silu::forward(h)?
        } else {
            h.silu()?
        })
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
    use crate::diffusion::guidance::Guided;

    fn small_net() -> Result<Mlp> {
        let cfg = MlpConfig {
            sample_shape: vec![3, 5],
            hidden: 64,
            depth: 3,
            time_dim: 16,
            num_classes: 4,
            schedule: ScheduleKind::ScaledLinear,
        };
        Mlp::new(cfg.clone(), &cfg.init(&mut crate::runtime::noise::seeded(3))?)
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        Ok((a - b)?.abs()?.max_all()?.to_scalar::<f32>()?)
    }

    /// The fused CPU layers compute the network candle's generic ops (used on GPUs) compute,
    /// and a batch with repeated (t, c) pairs equals its rows evaluated one by one.
    #[test]
    fn fused_forward_matches_generic_and_row_by_row() -> Result<()> {
        let fused = small_net()?;
        let x = Tensor::randn(0f32, 1.0, (7, 3, 5), &Device::Cpu)?;
        let t = [5, 5, 900, 5, 900, 1, 1000];
        let labels = Condition::Labels(vec![Some(1), Some(1), None, Some(3), None, Some(1), Some(0)]);
        let y = fused.eps(&x, &t, &labels)?;
        let generic = kernels::with_generic_ops(|| fused.eps(&x, &t, &labels))?;
        assert!(max_diff(&y, &generic)? < 1e-5);
        for i in 0..7 {
            let row = fused.eps(&x.narrow(0, i, 1)?, &t[i..=i], &labels.narrow(i, 1)?)?;
            assert!(max_diff(&row, &y.narrow(0, i, 1)?)? < 1e-5, "row {i}");
        }
        Ok(())
    }

    /// The shared-input guided forward equals `ε_u + w (ε_c − ε_u)` from two plain forwards.
    #[test]
    fn guided_forward_equals_two_forwards() -> Result<()> {
        let net = small_net()?;
        let x = Tensor::randn(0f32, 1.0, (6, 3, 5), &Device::Cpu)?;
        let t = [300, 300, 300, 20, 20, 999];
        let labels = Condition::Labels(vec![Some(0), Some(2), Some(3), Some(2), Some(0), Some(1)]);
        let check = || -> Result<()> {
            let (ec, eu) = (net.eps(&x, &t, &labels)?, net.eps(&x, &t, &labels.null())?);
            let want = (&eu + ((ec - &eu)? * 2.5)?)?;
            assert!(max_diff(&Guided::new(&net, 2.5).eps(&x, &t, &labels)?, &want)? < 1e-5);
            Ok(())
        };
        check()?;
        kernels::with_generic_ops(check)?;
        Ok(())
    }

    /// In half precision the network computes what it computes in f32, to half's rounding,
    /// and hands back the caller's dtype.
    #[test]
    fn half_precision_tracks_f32() -> Result<()> {
        let cfg = small_net()?.cfg;
        let params = cfg.init(&mut crate::runtime::noise::seeded(3))?;
        let half: Params = params
            .iter()
            .map(|(k, v)| Ok((k.clone(), v.to_dtype(candle_core::DType::BF16)?)))
            .collect::<Result<_>>()?;
        let (full, half) = (Mlp::new(cfg.clone(), &params)?, Mlp::new(cfg, &half)?);
        let x = Tensor::randn(0f32, 1.0, (4, 3, 5), &Device::Cpu)?;
        let (t, c) = (
            [1000, 500, 20, 1],
            Condition::Labels(vec![Some(0), None, Some(3), Some(1)]),
        );
        let (a, b) = (full.eps(&x, &t, &c)?, half.eps(&x, &t, &c)?);
        assert_eq!(b.dtype(), candle_core::DType::F32);
        let scale = a.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(
            max_diff(&a, &b)? < 0.05 * scale,
            "bf16 differs by {}",
            max_diff(&a, &b)?
        );
        Ok(())
    }
}
