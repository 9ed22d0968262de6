//! Builds the layers of a diffusers model from its named tensors, by diffusers' own module
//! paths (`down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q`).
//!
//! Every lookup is shape-checked and recorded, so that [`Weights::finish`] can reject a file
//! with tensors the model does not use (a silently different model). Every linear and conv
//! layer is a [`LoraLinear`] / [`LoraConv2d`]: a layer whose path ends with one of the LoRA
//! targets at a dot boundary gets an adapter (`PATH.lora_A.weight`, `PATH.lora_B.weight`).
//!
//! Without tensors ([`Weights::shapes_only`]) the same construction code runs on zero-strided
//! placeholder tensors (one element each), which lists the adapted layers and their shapes from
//! a configuration alone.

use crate::nets::input_gradient::with_input_gradient;
use crate::nets::kernels;
use crate::nets::layers::{param, Params};
use crate::nets::lora::{adapter_names, Adapter, ConvSpec, LoraConfig, LoraConv2d, LoraLinear, Switch};
use crate::nets::sd::group_norm::GroupNorm;
use anyhow::{bail, ensure, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::BTreeSet;

/// A layer that received an adapter: its module path and base weight shape.
pub type AdaptedLayer = (String, Vec<usize>);

/// The tensors of one model being built, and what has been taken from them.
pub struct Weights<'a> {
    /// `None`: shapes only (placeholders, nothing is read).
    params: Option<&'a Params>,
    dtype: DType,
    device: Device,
    used: BTreeSet<String>,
    /// Every tensor taken, with its shape, in construction order.
    shapes: Vec<(String, Vec<usize>)>,
    targets: Vec<String>,
    /// Every linear and conv layer counts as a target ([`Weights::shapes_of_every_layer`]).
    every_layer: bool,
    matched: BTreeSet<usize>,
    lora: Option<LoraConfig>,
    switch: Switch,
    adapted: Vec<AdaptedLayer>,
}

impl<'a> Weights<'a> {
    /// Reads from `params`, whose tensors must all share one floating-point dtype and device
    /// (the model computes in it). `lora`: adapter rank/strength and target suffixes.
    pub fn new(params: &'a Params, lora: Option<(LoraConfig, &[String])>, what: &str) -> Result<Self> {
        let Some((first_name, first)) = params.iter().next() else {
            bail!("{what}: no tensors");
        };
        let (dtype, device) = (first.dtype(), first.device().clone());
        for (name, t) in params {
            ensure!(
                t.dtype().is_float() && t.dtype() == dtype,
                "{what}: tensor '{name}' has dtype {:?}, expected {dtype:?} as '{first_name}' (one floating-point dtype for all)",
                t.dtype()
            );
            ensure!(
                t.device().same_device(&device),
                "{what}: tensor '{name}' is on another device than '{first_name}'"
            );
        }
        if let Some((cfg, _)) = lora {
            cfg.validate()?;
        }
        let (cfg, targets) = lora.map_or((None, Vec::new()), |(c, t)| (Some(c), t.to_vec()));
        Ok(Self::build(Some(params), dtype, device, cfg, targets))
    }

    /// No tensors: every weight is a zero-strided f32 placeholder of the right shape, and the
    /// layers matching `targets` are recorded (without adapters).
    pub fn shapes_only(targets: &[String]) -> Self {
        Self::build(None, DType::F32, Device::Cpu, None, targets.to_vec())
    }

    /// [`Weights::shapes_only`] recording every linear and conv layer, the layers that LoRA
    /// could adapt.
    pub fn shapes_of_every_layer() -> Self {
        Self {
            every_layer: true,
            ..Self::shapes_only(&[])
        }
    }

    fn build(
        params: Option<&'a Params>,
        dtype: DType,
        device: Device,
        lora: Option<LoraConfig>,
        targets: Vec<String>,
    ) -> Self {
        Self {
            params,
            dtype,
            device,
            used: BTreeSet::new(),
            shapes: Vec::new(),
            targets,
            every_layer: false,
            matched: BTreeSet::new(),
            lora,
            switch: Switch::default(),
            adapted: Vec::new(),
        }
    }

    /// The dtype every weight has (the model's compute dtype).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The tensor `name` with shape `shape`, recorded as used.
    pub fn tensor(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        if self.used.insert(name.to_string()) {
            self.shapes.push((name.to_string(), shape.to_vec()));
        }
        match self.params {
            Some(p) => param(p, name, shape),
            None => Ok(Tensor::zeros((), self.dtype, &self.device)?.broadcast_as(shape)?),
        }
    }

    /// Whether `path` ends with a LoRA target at a dot boundary (`a.b.to_q` matches `to_q`
    /// and `b.to_q`, not `o_q`); records which targets matched.
    fn is_target(&mut self, path: &str) -> bool {
        if self.every_layer {
            return true;
        }
        let hits: Vec<usize> = (0..self.targets.len())
            .filter(|&i| {
                let t = &self.targets[i];
                path == t || path.strip_suffix(t.as_str()).is_some_and(|head| head.ends_with('.'))
            })
            .collect();
        self.matched.extend(hits.iter().copied());
        !hits.is_empty()
    }

    /// The adapter of layer `path` (base weight shape `base`) if it is a target: A `a_shape(r)`,
    /// B `b_shape(r)`. Without a LoRA configuration (shapes only) it is only recorded.
    fn adapter(
        &mut self,
        path: &str,
        base: &[usize],
        shapes: impl FnOnce(usize) -> (Vec<usize>, Vec<usize>),
    ) -> Result<Option<Adapter>> {
        if !self.is_target(path) {
            return Ok(None);
        }
        self.adapted.push((path.to_string(), base.to_vec()));
        let Some(cfg) = self.lora else {
            return Ok(None);
        };
        let (a_shape, b_shape) = shapes(cfg.rank);
        let (a_name, b_name) = adapter_names(path);
        let a = self.tensor(&a_name, &a_shape)?;
        let b = self.tensor(&b_name, &b_shape)?;
        Ok(Some(Adapter::new(a, b, cfg)?))
    }

    /// `PATH.bias` `[out]` when `bias`, else nothing (a bias in the file is then unused).
    fn bias(&mut self, path: &str, out: usize, bias: bool) -> Result<Option<Tensor>> {
        match bias {
            true => Ok(Some(self.tensor(&format!("{path}.bias"), &[out])?)),
            false => Ok(None),
        }
    }

    /// A linear layer `PATH.weight` `[out, inp]` (+ `PATH.bias` `[out]` when `bias`).
    pub fn linear(&mut self, path: &str, out: usize, inp: usize, bias: bool) -> Result<LoraLinear> {
        let weight = self.tensor(&format!("{path}.weight"), &[out, inp])?;
        let bias = self.bias(path, out, bias)?;
        let adapter = self.adapter(path, &[out, inp], |r| (vec![r, inp], vec![out, r]))?;
        LoraLinear::new(weight, bias, adapter, self.switch.clone())
    }

    /// A convolution `PATH.weight` `[out, inp, k, k]` with `PATH.bias` `[out]`.
    pub fn conv(&mut self, path: &str, spec: ConvSpec) -> Result<LoraConv2d> {
        let ConvSpec { out, inp, k, .. } = spec;
        let weight = self.tensor(&format!("{path}.weight"), &[out, inp, k, k])?;
        let bias = self.bias(path, out, true)?;
        let adapter = self.adapter(path, &[out, inp, k, k], |r| (vec![r, inp, k, k], vec![out, r, 1, 1]))?;
        LoraConv2d::new(weight, bias, spec.stride, spec.padding, adapter, self.switch.clone())
    }

    /// GroupNorm `PATH.weight`, `PATH.bias` `[channels]`.
    pub fn group_norm(&mut self, path: &str, groups: usize, channels: usize, eps: f64) -> Result<GroupNorm> {
        ensure!(
            groups > 0 && channels.is_multiple_of(groups),
            "'{path}': {channels} channels do not split into {groups} groups"
        );
        let w = self.tensor(&format!("{path}.weight"), &[channels])?;
        let b = self.tensor(&format!("{path}.bias"), &[channels])?;
        GroupNorm::new(w, b, channels, groups, eps)
    }

    /// LayerNorm `PATH.weight`, `PATH.bias` `[dim]`.
    pub fn layer_norm(&mut self, path: &str, dim: usize, eps: f64) -> Result<LayerNorm> {
        Ok(LayerNorm {
            weight: self.tensor(&format!("{path}.weight"), &[dim])?,
            bias: self.tensor(&format!("{path}.bias"), &[dim])?,
            eps,
        })
    }

    /// The name and shape of every tensor the layers built so far take, in construction order.
    pub fn shapes(&self) -> &[(String, Vec<usize>)] {
        &self.shapes
    }

    /// Ends the build: an error naming the first tensor of the file that no layer took (and
    /// how many more), or the first LoRA target that matched no layer. Returns the adapters'
    /// shared switch and the adapted layers in construction order.
    pub fn finish(self, what: &str) -> Result<(Switch, Vec<AdaptedLayer>)> {
        if let Some(p) = self.params {
            let unused: Vec<&String> = p.keys().filter(|k| !self.used.contains(*k)).collect();
            if let Some(first) = unused.first() {
                bail!(
                    "{what}: tensor '{first}' is not used by the model ({} unused in all)",
                    unused.len()
                );
            }
        }
        if let Some(i) = (0..self.targets.len()).find(|i| !self.matched.contains(i)) {
            bail!("{what}: LoRA target '{}' matches no layer", self.targets[i]);
        }
        Ok((self.switch, self.adapted))
    }
}

/// Layer normalization over the last dimension: with frozen scale and shift on f32 CPU
/// inputs the fused kernel (`kernels::layer_norm`, its own input gradient under a graph);
/// otherwise composed of differentiable ops (`candle_nn::LayerNorm::forward` takes a fused
/// path without backward), statistics in f32 for f16/bf16 inputs, as PyTorch computes them.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let frozen = !self.weight.track_op() && !self.bias.track_op();
        if frozen && kernels::serve(x) && kernels::serve(&self.weight) {
            let op = kernels::layer_norm::LayerNorm { eps: self.eps };
            let y = op.forward(&x.detach(), &self.weight, &self.bias)?;
            if !x.track_op() {
                return Ok(y);
            }
            let w = self.weight.clone();
            return with_input_gradient(x, y, move |g, x, _| op.backward(x, &w, g));
        }
        Ok(candle_nn::ops::layer_norm_slow(
            x,
            &self.weight,
            &self.bias,
            self.eps as f32,
        )?)
    }
}

/// Reads a safetensors file into named tensors on the CPU (an error names the file).
pub fn load_safetensors(path: &std::path::Path) -> Result<Params> {
    let map = candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    Ok(map.into_iter().collect())
}
