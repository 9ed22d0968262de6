//! LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"):
//! a frozen weight `W` plus a trainable low-rank update, `W' = W + (α/r) B A`, for linear
//! and convolution layers.
//!
//! Adapter tensors are named as in PEFT: a base layer `NAME` (weights `NAME.weight`,
//! `NAME.bias`) gets `NAME.lora_A.weight` (A, `[r, in]` or `[r, in, kh, kw]`) and
//! `NAME.lora_B.weight` (B, `[out, r]` or `[out, r, 1, 1]`). A fresh adapter has B = 0, so it
//! leaves its layer unchanged. Every adapter of one network holds the same [`Switch`]; with
//! it off the network is its base model (the teacher is the student with adapters off, as
//! PEFT's `disable_adapters()`).
//!
//! Only A and B are meant to train: the caller passes base weights as plain tensors and A, B
//! as `Var`-backed tensors. Every op on the adapter path here has a backward (checked by the
//! finite-difference tests below).

use crate::nets::input_gradient::with_input_gradient;
use crate::nets::kernels::lora::{Frozen, LoraConv as FusedConv, LoraLinear as FusedLinear};
use crate::nets::kernels::{self, conv_backward, linear::FrozenLinear};
use crate::nets::layers::{conv_act, param, Init, Params};
use crate::runtime::noise::Rng;
use anyhow::{bail, ensure, Result};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, Linear};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The largest rank any layer can use: no network dcm builds has a layer wider than 2¹⁶
/// (an MLP's `--hidden` is bounded there; SD's widest usable rank is 1280).
pub const MAX_RANK: usize = 1 << 16;

/// Rank `r` and strength `α` of every adapter of a network.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
}

impl LoraConfig {
    /// The paper's adapters (and LCM-LoRA's): rank 64, α 64.
    pub const PAPER: Self = Self { rank: 64, alpha: 64.0 };

    /// The update's factor `s = α / r`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    pub fn validate(&self) -> Result<()> {
        ensure!(self.rank >= 1, "--lora-rank must be at least 1 (got {})", self.rank);
        ensure!(
            self.rank <= MAX_RANK,
            "--lora-rank {}: at most {MAX_RANK}, the widest layer of any network dcm builds; \
             a rank above a layer's width adds memory, not capacity",
            self.rank
        );
        ensure!(
            self.alpha.is_finite() && self.alpha > 0.0,
            "--lora-alpha must be finite and positive (got {})",
            self.alpha
        );
        // The adapters compute in float32: a larger scale is infinite there (∞ · 0 = NaN at
        // the first step, where B = 0).
        let scale = self.alpha / self.rank as f64;
        ensure!(
            (scale as f32).is_finite(),
            "--lora-alpha {:e}: the adapters' scale α/R = {scale:e} is beyond float32's range",
            self.alpha
        );
        Ok(())
    }
}

/// `(NAME.lora_A.weight, NAME.lora_B.weight)`, the PEFT names of layer `NAME`'s adapter.
pub fn adapter_names(name: &str) -> (String, String) {
    (format!("{name}.lora_A.weight"), format!("{name}.lora_B.weight"))
}

/// Adds a fresh adapter for the layer `name` whose weight has shape `base_weight_shape`
/// (`[out, in]` or `[out, in, kh, kw]`): A ~ uniform(±1/√fan_in), fan_in = in·kh·kw, drawn
/// from `rng`; B = 0, so the layer's output is unchanged until B trains.
pub fn init_adapters(
    params: &mut Params,
    name: &str,
    base_weight_shape: &[usize],
    cfg: LoraConfig,
    rng: &mut Rng,
) -> Result<()> {
    cfg.validate()?;
    let (out, inner) = match base_weight_shape {
        [out, inner @ ..] if matches!(inner.len(), 1 | 3) && base_weight_shape.iter().all(|&d| d > 0) => (*out, inner),
        _ => bail!(
            "LoRA needs a linear [out, in] or conv [out, in, kh, kw] weight for '{name}', got {base_weight_shape:?}"
        ),
    };
    let (a_name, b_name) = adapter_names(name);
    for n in [&a_name, &b_name] {
        ensure!(!params.contains_key(n), "tensor '{n}' already exists");
    }
    let a_shape: Vec<usize> = std::iter::once(cfg.rank).chain(inner.iter().copied()).collect();
    let b_shape: Vec<usize> = [out, cfg.rank]
        .into_iter()
        .chain(inner[1..].iter().map(|_| 1))
        .collect();
    let fan_in: usize = inner.iter().product();
    let mut init = Init::new(rng);
    init.uniform(&a_name, &a_shape, 1.0 / (fan_in as f64).sqrt())?;
    params.append(&mut init.params);
    params.insert(b_name, Tensor::zeros(b_shape, DType::F32, &Device::Cpu)?);
    Ok(())
}

/// The on/off state shared by every adapter of one network (on by default). Clones share the
/// state, so one `set(false)` turns the whole network into its base model. It is network-wide:
/// do not run the student and the teacher of one network concurrently.
#[derive(Clone, Debug)]
pub struct Switch(Arc<AtomicBool>);

impl Default for Switch {
    fn default() -> Self {
        Self(Arc::new(AtomicBool::new(true)))
    }
}

impl Switch {
    pub fn is_on(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    pub fn set(&self, on: bool) {
        self.0.store(on, Ordering::SeqCst);
    }

    /// Runs `f` with the adapters off (the base model), then restores the previous state,
    /// also when `f` fails or panics.
    pub fn while_off<T>(&self, f: impl FnOnce() -> T) -> T {
        struct Restore<'a>(&'a Switch, bool);
        impl Drop for Restore<'_> {
            fn drop(&mut self) {
                self.0.set(self.1);
            }
        }
        let _restore = Restore(self, self.is_on());
        self.set(false);
        f()
    }
}

/// The low-rank factors A, B and the factor `s = α/r` of one layer's update `s·B A`.
#[derive(Clone, Debug)]
pub struct Adapter {
    a: Tensor,
    b: Tensor,
    scale: f64,
}

impl Adapter {
    /// Checks that A has `cfg.rank` rows and B `cfg.rank` columns; the layer checks the rest.
    pub fn new(a: Tensor, b: Tensor, cfg: LoraConfig) -> Result<Self> {
        cfg.validate()?;
        ensure!(
            a.rank() >= 2 && a.dims()[0] == cfg.rank && b.rank() >= 2 && b.dims()[1] == cfg.rank,
            "LoRA factors A {:?}, B {:?} do not have rank {}",
            a.dims(),
            b.dims(),
            cfg.rank
        );
        Ok(Self {
            a,
            b,
            scale: cfg.scale(),
        })
    }

    /// Reads `NAME.lora_A.weight` and `NAME.lora_B.weight` with the shapes `shapes(rank)`
    /// when `lora` is set, and makes sure neither exists when it is not (a checkpoint with
    /// adapters loaded without them would silently be a different model).
    fn load(
        params: &Params,
        name: &str,
        lora: Option<LoraConfig>,
        shapes: impl FnOnce(usize) -> (Vec<usize>, Vec<usize>),
    ) -> Result<Option<Self>> {
        let (a_name, b_name) = adapter_names(name);
        let Some(cfg) = lora else {
            for n in [&a_name, &b_name] {
                ensure!(
                    !params.contains_key(n),
                    "tensor '{n}' is a LoRA adapter, but LoRA is off (set --lora-rank and --lora-alpha)"
                );
            }
            return Ok(None);
        };
        cfg.validate()?;
        let (a_shape, b_shape) = shapes(cfg.rank);
        let a = param(params, &a_name, &a_shape)?;
        let b = param(params, &b_name, &b_shape)?;
        Ok(Some(Self::new(a, b, cfg)?))
    }

    pub fn a(&self) -> &Tensor {
        &self.a
    }

    pub fn b(&self) -> &Tensor {
        &self.b
    }

    pub fn scale(&self) -> f64 {
        self.scale
    }

    fn rank(&self) -> usize {
        self.a.dims()[0]
    }

    /// Whether the fused kernels (`kernels::lora`) serve this adapter over frozen `weight`,
    /// `bias` and input `x`: all f32 on the CPU, the base weights recording no gradient.
    fn fused(&self, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> bool {
        let frozen = !weight.track_op() && !bias.is_some_and(Tensor::track_op);
        frozen && [x, weight, &self.a, &self.b].iter().all(|t| kernels::serve(t))
    }

    fn frozen(&self, weight: &Tensor, bias: Option<&Tensor>) -> Frozen {
        Frozen {
            weight: weight.clone(),
            bias: bias.cloned(),
            scale: self.scale,
        }
    }
}

/// `NAME.bias` with shape `shape` if the file has one (attention projections have none).
fn optional_param(params: &Params, name: &str, shape: &[usize]) -> Result<Option<Tensor>> {
    match params.contains_key(name) {
        true => Ok(Some(param(params, name, shape)?)),
        false => Ok(None),
    }
}

fn check_bias(bias: Option<&Tensor>, out: usize) -> Result<()> {
    if let Some(b) = bias {
        ensure!(b.dims() == [out], "bias has shape {:?}, expected [{out}]", b.dims());
    }
    Ok(())
}

/// A linear layer with an optional adapter: `y = x Wᵀ + b + s·(x Aᵀ) Bᵀ`.
#[derive(Clone, Debug)]
pub struct LoraLinear {
    base: Linear,
    adapter: Option<Adapter>,
    switch: Switch,
}

impl LoraLinear {
    /// W `[out, in]`, bias `[out]`, A `[r, in]`, B `[out, r]`.
    pub fn new(weight: Tensor, bias: Option<Tensor>, adapter: Option<Adapter>, switch: Switch) -> Result<Self> {
        let (out, inp) = weight.dims2()?;
        check_bias(bias.as_ref(), out)?;
        if let Some(ad) = &adapter {
            let r = ad.rank();
            ensure!(
                ad.a.dims() == [r, inp] && ad.b.dims() == [out, r],
                "LoRA factors A {:?}, B {:?} do not fit a [{out}, {inp}] linear weight",
                ad.a.dims(),
                ad.b.dims()
            );
        }
        Ok(Self {
            base: Linear::new(weight, bias),
            adapter,
            switch,
        })
    }

    /// Reads `NAME.weight` `[out, inp]`, `NAME.bias` `[out]` if present, and the adapter
    /// (required when `lora` is set, forbidden otherwise).
    pub fn load(
        params: &Params,
        name: &str,
        out: usize,
        inp: usize,
        lora: Option<LoraConfig>,
        switch: Switch,
    ) -> Result<Self> {
        let weight = param(params, &format!("{name}.weight"), &[out, inp])?;
        let bias = optional_param(params, &format!("{name}.bias"), &[out])?;
        let adapter = Adapter::load(params, name, lora, |r| (vec![r, inp], vec![out, r]))?;
        Self::new(weight, bias, adapter, switch)
    }

    /// `x Wᵀ + b (+ s·(x Aᵀ) Bᵀ when the adapter exists and the switch is on)`, x `[…, in]`
    /// with up to two leading batch dimensions. With the adapter off this is exactly the
    /// base layer's computation.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // candle 0.11's CPU matmul mis-batches a non-contiguous left side against a broadcast
        // right side, silently (docs/CANDLE_TRAPS.md, "Matmul with a non-contiguous left side");
        // `Linear` does exactly that product.
        let x = &x.contiguous()?;
        let (w, b) = (self.base.weight(), self.base.bias());
        if let (Some(ad), true) = (&self.adapter, self.switch.is_on()) {
            if ad.fused(x, w, b) {
                return Ok(FusedLinear::forward(&ad.frozen(w, b), x, &ad.a, &ad.b)?);
            }
        }
        let y = self.base_forward(x)?;
        match (&self.adapter, self.switch.is_on()) {
            (Some(ad), true) => {
                let h = Linear::new(ad.a.clone(), None).forward(x)?;
                let delta = Linear::new(ad.b.clone(), None).forward(&h)?;
                Ok((y + (delta * ad.scale)?)?)
            }
            _ => Ok(y),
        }
    }

    /// `x Wᵀ + b`: frozen f32 CPU layers (nothing records a gradient) take the fused kernel;
    /// frozen weights under a tracked input pass the gradient to the input alone (`input_gradient`).
    fn base_forward(&self, x: &Tensor) -> Result<Tensor> {
        let (w, b) = (self.base.weight(), self.base.bias());
        let weights_train = w.track_op() || b.is_some_and(Tensor::track_op);
        if x.track_op() && !weights_train {
            let y = self.base_forward(&x.detach())?;
            let w = w.clone();
            return with_input_gradient(x, y, move |g, _, _| match kernels::serve(g) && kernels::serve(&w) {
                true => kernels::linear::input_gradient(g, &w),
                false => g.contiguous()?.broadcast_matmul(&w),
            });
        }
        let frozen = !x.track_op() && !weights_train;
        if frozen && kernels::serve(x) && kernels::serve(w) {
            return Ok(FrozenLinear::forward(x, w, b)?);
        }
        Ok(self.base.forward(x)?)
    }

    /// The merged weights `(W + s·B A, b)` of an equivalent plain layer, whatever the switch
    /// (`(W, b)` without an adapter). They carry A's and B's gradient graph; detach to export.
    pub fn merged(&self) -> Result<(Tensor, Option<Tensor>)> {
        let w = self.base.weight();
        let w = match &self.adapter {
            Some(ad) => (w + (ad.b.matmul(&ad.a)? * ad.scale)?)?,
            None => w.clone(),
        };
        Ok((w, self.base.bias().cloned()))
    }

    pub fn weight(&self) -> &Tensor {
        self.base.weight()
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.base.bias()
    }

    pub fn adapter(&self) -> Option<&Adapter> {
        self.adapter.as_ref()
    }
}

/// Shape and geometry of a k×k convolution: `out` and `inp` channels, `stride`, `padding`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvSpec {
    pub out: usize,
    pub inp: usize,
    pub k: usize,
    pub stride: usize,
    pub padding: usize,
}

/// A 2-d convolution with an optional adapter:
/// `y = conv(x, W) + b + s·conv1×1(conv(x, A, stride, padding), B)`.
#[derive(Clone, Debug)]
pub struct LoraConv2d {
    base: Conv2d,
    adapter: Option<Adapter>,
    switch: Switch,
}

impl LoraConv2d {
    /// W `[out, in, kh, kw]`, bias `[out]`, A `[r, in, kh, kw]`, B `[out, r, 1, 1]`.
    pub fn new(
        weight: Tensor,
        bias: Option<Tensor>,
        stride: usize,
        padding: usize,
        adapter: Option<Adapter>,
        switch: Switch,
    ) -> Result<Self> {
        let (out, inp, kh, kw) = weight.dims4()?;
        ensure!(stride >= 1, "convolution stride must be at least 1");
        check_bias(bias.as_ref(), out)?;
        if let Some(ad) = &adapter {
            let r = ad.rank();
            ensure!(
                ad.a.dims() == [r, inp, kh, kw] && ad.b.dims() == [out, r, 1, 1],
                "LoRA factors A {:?}, B {:?} do not fit a {:?} convolution weight",
                ad.a.dims(),
                ad.b.dims(),
                weight.dims()
            );
        }
        let cfg = Conv2dConfig {
            padding,
            stride,
            ..Default::default()
        };
        Ok(Self {
            base: Conv2d::new(weight, bias, cfg),
            adapter,
            switch,
        })
    }

    /// Reads `NAME.weight` `[out, inp, k, k]`, `NAME.bias` `[out]` if present, and the adapter
    /// (required when `lora` is set, forbidden otherwise).
    pub fn load(params: &Params, name: &str, spec: ConvSpec, lora: Option<LoraConfig>, switch: Switch) -> Result<Self> {
        let ConvSpec { out, inp, k, .. } = spec;
        let weight = param(params, &format!("{name}.weight"), &[out, inp, k, k])?;
        let bias = optional_param(params, &format!("{name}.bias"), &[out])?;
        let adapter = Adapter::load(params, name, lora, |r| (vec![r, inp, k, k], vec![out, r, 1, 1]))?;
        Self::new(weight, bias, spec.stride, spec.padding, adapter, switch)
    }

    /// `conv(x, W) + b (+ s·conv1×1(conv(x, A), B) when the adapter exists and the switch is
    /// on)`, x `[N, in, H, W]`. The base convolution is the one plain layers use (f32:
    /// [`conv_act`], which takes the fused kernel when nothing records a gradient), so with the
    /// adapter off this is exactly the base layer's computation.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (w, b, cfg) = (self.base.weight(), self.base.bias(), self.base.config());
        if let (Some(ad), true, 1, 1) = (&self.adapter, self.switch.is_on(), cfg.dilation, cfg.groups) {
            if ad.fused(x, w, b) {
                return Ok(FusedConv::forward(
                    &ad.frozen(w, b),
                    cfg.stride,
                    cfg.padding,
                    x,
                    &ad.a,
                    &ad.b,
                )?);
            }
        }
        let y = self.base_forward(x)?;
        match (&self.adapter, self.switch.is_on()) {
            (Some(ad), true) => {
                let h = Conv2d::new(ad.a.clone(), None, *self.base.config()).forward(x)?;
                let delta = Conv2d::new(ad.b.clone(), None, Conv2dConfig::default()).forward(&h)?;
                Ok((y + (delta * ad.scale)?)?)
            }
            _ => Ok(y),
        }
    }

    /// `conv(x, W) + b`; frozen weights under a tracked input pass the gradient to the input
    /// alone (`input_gradient`), as candle's backward computes it: a transposed convolution with W.
    fn base_forward(&self, x: &Tensor) -> Result<Tensor> {
        let (w, b) = (self.base.weight(), self.base.bias());
        if x.track_op() && !w.track_op() && !b.is_some_and(Tensor::track_op) {
            let y = self.base_forward(&x.detach())?;
            let (w, cfg, x_dims) = (w.clone(), *self.base.config(), x.dims().to_vec());
            return with_input_gradient(x, y, move |g, _, _| {
                if kernels::serve(g) && kernels::serve(&w) && cfg.dilation == 1 && cfg.groups == 1 {
                    return conv_backward::conv_input_gradient(g, &w, cfg.stride, cfg.padding, &x_dims);
                }
                let (x_h, k_h) = (x_dims[2], w.dim(2)?);
                let size = (g.dim(2)? - 1) * cfg.stride + cfg.dilation * (k_h - 1) + 1 - 2 * cfg.padding;
                g.conv_transpose2d(&w, cfg.padding, x_h - size, cfg.stride, cfg.dilation)
            });
        }
        match x.dtype() {
            DType::F32 => conv_act(&self.base, x, false),
            DType::BF16 if x.device().is_cpu() => bail!(
                "--dtype bf16: candle has no bf16 convolution on the CPU (the VAE and UNet need one); \
                 use --dtype f16 or f32 on the CPU, bf16 on cuda"
            ),
            _ => Ok(self.base.forward(x)?),
        }
    }

    /// The merged weights `(W + s·(B[:, :, 0, 0] · A.reshape(r, in·kh·kw)).reshape(out, in,
    /// kh, kw), b)` of an equivalent plain convolution, whatever the switch. They carry A's and
    /// B's gradient graph; detach to export.
    pub fn merged(&self) -> Result<(Tensor, Option<Tensor>)> {
        let w = self.base.weight();
        let w = match &self.adapter {
            Some(ad) => {
                let (out, inp, kh, kw) = w.dims4()?;
                let r = ad.rank();
                let ba = ad.b.reshape((out, r))?.matmul(&ad.a.reshape((r, inp * kh * kw))?)?;
                (w + (ba.reshape((out, inp, kh, kw))? * ad.scale)?)?
            }
            None => w.clone(),
        };
        Ok((w, self.base.bias().cloned()))
    }

    pub fn weight(&self) -> &Tensor {
        self.base.weight()
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.base.bias()
    }

    pub fn config(&self) -> &Conv2dConfig {
        self.base.config()
    }

    pub fn adapter(&self) -> Option<&Adapter> {
        self.adapter.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nets::gradcheck::{check_all, GradCheck};
    use crate::nets::layers;
    use crate::runtime::noise::{seeded, standard_normal};

    const CFG: LoraConfig = LoraConfig { rank: 2, alpha: 3.0 };
    const SPEC: ConvSpec = ConvSpec {
        out: 4,
        inp: 3,
        k: 3,
        stride: 2,
        padding: 1,
    };

    fn randn(shape: &[usize], seed: u64) -> Tensor {
        standard_normal(&mut seeded(seed), shape, &Device::Cpu).unwrap()
    }

    fn f64s(t: &Tensor) -> Tensor {
        t.to_dtype(DType::F64).unwrap()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// Base weights of a linear layer "fc" [5, 4] and a conv "conv" (SPEC), with biases.
    fn base_params() -> Params {
        let mut rng = seeded(0);
        let mut init = Init::new(&mut rng);
        init.linear("fc", 5, 4, 1.0).unwrap();
        init.conv("conv", SPEC.out, SPEC.inp, SPEC.k).unwrap();
        init.params
    }

    /// `base_params` plus adapters for both layers with random nonzero A and B.
    fn adapted_params() -> Params {
        let mut p = base_params();
        let (a, b) = adapter_names("fc");
        p.insert(a, randn(&[CFG.rank, 4], 1));
        p.insert(b, randn(&[5, CFG.rank], 2));
        let (a, b) = adapter_names("conv");
        p.insert(a, randn(&[CFG.rank, SPEC.inp, SPEC.k, SPEC.k], 3));
        p.insert(b, randn(&[SPEC.out, CFG.rank, 1, 1], 4));
        p
    }

    fn zero_b(p: &mut Params) {
        for name in ["fc", "conv"] {
            let b = adapter_names(name).1;
            let zeros = p[&b].zeros_like().unwrap();
            p.insert(b, zeros);
        }
    }

    fn linear(p: &Params, lora: Option<LoraConfig>, switch: &Switch) -> Result<LoraLinear> {
        LoraLinear::load(p, "fc", 5, 4, lora, switch.clone())
    }

    fn conv(p: &Params, lora: Option<LoraConfig>, switch: &Switch) -> Result<LoraConv2d> {
        LoraConv2d::load(p, "conv", SPEC, lora, switch.clone())
    }

    /// The project's plain layers for "fc" and "conv" (k = 3: padding 1 as in SPEC).
    fn plain_outputs(p: &Params, x_lin: &Tensor, x_conv: &Tensor) -> (Vec<f32>, Vec<f32>) {
        let fc = layers::linear(p, "fc", 5, 4).unwrap();
        let cv = layers::conv(p, "conv", SPEC.out, SPEC.inp, SPEC.k, SPEC.stride).unwrap();
        let y_conv = layers::conv_act(&cv, x_conv, false).unwrap();
        (values(&fc.forward(x_lin).unwrap()), values(&y_conv))
    }

    /// A fresh adapter (B = 0) must not change the layer at all: bit for bit the plain layer's
    /// output, so starting LoRA training starts exactly from the teacher.
    #[test]
    fn zero_b_adapter_equals_the_base_layer_bit_for_bit() {
        let mut p = adapted_params();
        zero_b(&mut p);
        let (x_lin, x_conv) = (randn(&[3, 4], 5), randn(&[2, 3, 7, 7], 6));
        let (want_lin, want_conv) = plain_outputs(&p, &x_lin, &x_conv);
        let on = Switch::default();
        assert_eq!(
            values(&linear(&p, Some(CFG), &on).unwrap().forward(&x_lin).unwrap()),
            want_lin
        );
        assert_eq!(
            values(&conv(&p, Some(CFG), &on).unwrap().forward(&x_conv).unwrap()),
            want_conv
        );
    }

    /// With the switch off the layer is its base layer bit for bit, however trained B is: the
    /// teacher is the student with adapters off. One switch turns off every layer holding it.
    #[test]
    fn switch_off_equals_the_base_layer_bit_for_bit() {
        let p = adapted_params();
        let (x_lin, x_conv) = (randn(&[3, 4], 5), randn(&[2, 3, 7, 7], 6));
        let (want_lin, want_conv) = plain_outputs(&p, &x_lin, &x_conv);
        let switch = Switch::default();
        let (fc, cv) = (
            linear(&p, Some(CFG), &switch).unwrap(),
            conv(&p, Some(CFG), &switch).unwrap(),
        );
        assert_ne!(values(&fc.forward(&x_lin).unwrap()), want_lin);
        assert_ne!(values(&cv.forward(&x_conv).unwrap()), want_conv);
        let (off_lin, off_conv) = switch.while_off(|| (fc.forward(&x_lin).unwrap(), cv.forward(&x_conv).unwrap()));
        assert_eq!(values(&off_lin), want_lin);
        assert_eq!(values(&off_conv), want_conv);
        assert!(switch.is_on());
        switch.set(false);
        assert_eq!(values(&fc.forward(&x_lin).unwrap()), want_lin);
        assert_eq!(values(&cv.forward(&x_conv).unwrap()), want_conv);
    }

    /// `merged()` is the same layer as the adapter applied on the fly (`W + s·B A`), so an
    /// exported merged model samples like the trained one. Linear on `[B, in]` and `[B, L, in]`,
    /// conv with kernel 3, stride 2, padding 1 on an even input (output padding in the backward).
    #[test]
    fn merged_and_unmerged_agree() {
        let p = adapted_params();
        let fc = linear(&p, Some(CFG), &Switch::default()).unwrap();
        let (w, b) = fc.merged().unwrap();
        let plain = LoraLinear::new(w, b, None, Switch::default()).unwrap();
        for x in [randn(&[3, 4], 7), randn(&[2, 5, 4], 8)] {
            assert!(max_abs_diff(&fc.forward(&x).unwrap(), &plain.forward(&x).unwrap()) < 1e-5);
        }
        let cv = conv(&p, Some(CFG), &Switch::default()).unwrap();
        let (w, b) = cv.merged().unwrap();
        let plain = LoraConv2d::new(w, b, SPEC.stride, SPEC.padding, None, Switch::default()).unwrap();
        let x = randn(&[2, 3, 8, 8], 9);
        let (y, want) = (cv.forward(&x).unwrap(), plain.forward(&x).unwrap());
        assert_eq!(y.dims(), [2, 4, 4, 4]);
        assert!(max_abs_diff(&y, &want) < 1e-5);
    }

    /// The adapter path has a correct backward to A, B and the input (no detach, no op
    /// without backward): f64 central differences on `sum(forward(x)²)`.
    #[test]
    fn linear_gradients_match_finite_differences() {
        let (w, bias) = (f64s(&randn(&[5, 4], 10)), f64s(&randn(&[5], 11)));
        let loss = |t: &[Tensor]| {
            let ad = Adapter::new(t[0].clone(), t[1].clone(), CFG)?;
            let fc = LoraLinear::new(w.clone(), Some(bias.clone()), Some(ad), Switch::default())?;
            Ok(fc.forward(&t[2])?.sqr()?.sum_all()?)
        };
        let (a, b) = (f64s(&randn(&[2, 4], 12)), f64s(&randn(&[5, 2], 13)));
        for x in [randn(&[3, 4], 14), randn(&[2, 3, 4], 15)] {
            check_all(loss, &[a.clone(), b.clone(), f64s(&x)], &GradCheck::default(), 1e-6).unwrap();
        }
    }

    /// As above for the convolution adapter (kernel 3, stride 2, padding 1, even input size).
    #[test]
    fn conv_gradients_match_finite_differences() {
        let (w, bias) = (f64s(&randn(&[4, 3, 3, 3], 16)), f64s(&randn(&[4], 17)));
        let loss = |t: &[Tensor]| {
            let ad = Adapter::new(t[0].clone(), t[1].clone(), CFG)?;
            let cv = LoraConv2d::new(w.clone(), Some(bias.clone()), 2, 1, Some(ad), Switch::default())?;
            Ok(cv.forward(&t[2])?.sqr()?.sum_all()?)
        };
        let inputs = [
            randn(&[2, 3, 3, 3], 18),
            randn(&[4, 2, 1, 1], 19),
            randn(&[2, 3, 6, 6], 20),
        ]
        .map(|t| f64s(&t));
        check_all(loss, &inputs, &GradCheck::default(), 1e-6).unwrap();
    }

    /// Frozen base weights under a tracked input (every layer after the first adapter) give
    /// the input the same gradient as candle's own backward (weights as `Var`s, which takes
    /// the generic path), and receive none themselves: stride 1 and 2, odd and even sizes.
    #[test]
    fn frozen_weights_pass_the_input_gradient_only() {
        let p = adapted_params();
        let grads = |frozen: bool, x: &candle_core::Var, stride: usize| {
            let w = |name: &str| match frozen {
                true => p[name].clone(),
                false => candle_core::Var::from_tensor(&p[name]).unwrap().as_tensor().clone(),
            };
            let (a, b) = adapter_names("conv");
            let ad = Adapter::new(p[&a].clone(), p[&b].clone(), CFG).unwrap();
            let cv = LoraConv2d::new(
                w("conv.weight"),
                Some(w("conv.bias")),
                stride,
                1,
                Some(ad),
                Switch::default(),
            );
            let fc = LoraLinear::new(w("fc.weight"), Some(w("fc.bias")), None, Switch::default()).unwrap();
            let y = cv.unwrap().forward(x.as_tensor()).unwrap();
            let (n, c, h, wd) = y.dims4().unwrap();
            // The conv's output, moved to the last axis, through the linear layer (4 → 5).
            let z = fc
                .forward(&y.permute((0, 2, 3, 1)).unwrap().reshape((n * h * wd, c)).unwrap())
                .unwrap();
            let g = z.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            let weight_grads = ["conv.weight", "fc.weight"]
                .iter()
                .filter(|n| g.get(&w(n)).is_some())
                .count();
            (values(g.get(x.as_tensor()).unwrap()), weight_grads)
        };
        for (size, stride) in [(7, 1), (7, 2), (8, 2)] {
            let x = candle_core::Var::from_tensor(&randn(&[2, 3, size, size], 40)).unwrap();
            let ((fast, none), (want, _)) = (grads(true, &x, stride), grads(false, &x, stride));
            assert_eq!(none, 0, "no gradient is computed for frozen weights");
            let err = fast.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(err <= 1e-4, "size {size}, stride {stride}: {err:e}");
        }
    }

    /// In training only A and B are `Var`s and the input and base weights are plain f32 (the
    /// base conv then takes the fused kernel): A and B still get the right gradient.
    #[test]
    fn adapters_train_with_a_frozen_f32_base() {
        let p = adapted_params();
        let x = randn(&[2, 3, 7, 7], 21);
        let loss = |t: &[Tensor]| {
            let ad = Adapter::new(t[0].clone(), t[1].clone(), CFG)?;
            let cv = LoraConv2d::new(
                p["conv.weight"].clone(),
                Some(p["conv.bias"].clone()),
                2,
                1,
                Some(ad),
                Switch::default(),
            )?;
            Ok(cv.forward(&x)?.sqr()?.sum_all()?)
        };
        let (a, b) = adapter_names("conv");
        check_all(loss, &[p[&a].clone(), p[&b].clone()], &GradCheck::f32(), 1e-2).unwrap();
    }

    /// Loading never silently yields a different model: adapters missing with LoRA on, present
    /// with LoRA off, or of the wrong shape are errors naming the tensor.
    #[test]
    fn loading_rejects_mismatched_adapters() {
        let on = Switch::default();
        let err = linear(&base_params(), Some(CFG), &on).unwrap_err().to_string();
        assert!(err.contains("fc.lora_A.weight"), "{err}");
        let err = conv(&base_params(), Some(CFG), &on).unwrap_err().to_string();
        assert!(err.contains("conv.lora_A.weight"), "{err}");
        let err = linear(&adapted_params(), None, &on).unwrap_err().to_string();
        assert!(err.contains("fc.lora_A.weight") && err.contains("LoRA is off"), "{err}");
        assert!(conv(&adapted_params(), None, &on).is_err());
        let rank3 = LoraConfig { rank: 3, ..CFG };
        let err = linear(&adapted_params(), Some(rank3), &on).unwrap_err().to_string();
        assert!(err.contains("fc.lora_A.weight") && err.contains("shape"), "{err}");
        let mut p = adapted_params();
        p.insert("conv.lora_B.weight".into(), randn(&[SPEC.out, CFG.rank], 22));
        let err = conv(&p, Some(CFG), &on).unwrap_err().to_string();
        assert!(err.contains("conv.lora_B.weight"), "{err}");
        assert!(linear(&adapted_params(), Some(CFG), &on).is_ok());
        assert!(conv(&adapted_params(), Some(CFG), &on).is_ok());
    }

    /// `new` checks that the factors fit the weight instead of failing later in a matmul.
    #[test]
    fn new_rejects_factors_that_do_not_fit() {
        let ad = Adapter::new(randn(&[2, 3], 23), randn(&[5, 2], 24), CFG).unwrap();
        assert!(LoraLinear::new(randn(&[5, 4], 25), None, Some(ad), Switch::default()).is_err());
        assert!(Adapter::new(randn(&[3, 4], 26), randn(&[5, 3], 27), CFG).is_err());
        assert!(LoraLinear::new(randn(&[5, 4], 25), Some(randn(&[4], 28)), None, Switch::default()).is_err());
    }

    /// `init_adapters` gives B = 0 (the layer's output is unchanged) and a nonzero A within
    /// ±1/√fan_in, with PEFT's names and shapes.
    #[test]
    fn init_adapters_leaves_the_output_unchanged() {
        let mut p = base_params();
        let mut rng = seeded(30);
        init_adapters(&mut p, "fc", &[5, 4], CFG, &mut rng).unwrap();
        init_adapters(&mut p, "conv", &[SPEC.out, SPEC.inp, SPEC.k, SPEC.k], CFG, &mut rng).unwrap();
        assert_eq!(p["fc.lora_A.weight"].dims(), [2, 4]);
        assert_eq!(p["fc.lora_B.weight"].dims(), [5, 2]);
        assert_eq!(p["conv.lora_A.weight"].dims(), [2, 3, 3, 3]);
        assert_eq!(p["conv.lora_B.weight"].dims(), [4, 2, 1, 1]);
        for (name, fan_in) in [("fc", 4.0f32), ("conv", 27.0)] {
            let a = values(&p[&adapter_names(name).0]);
            assert!(a.iter().all(|v| v.abs() <= 1.0 / fan_in.sqrt()) && a.iter().any(|&v| v != 0.0));
            assert!(values(&p[&adapter_names(name).1]).iter().all(|&v| v == 0.0));
        }
        let (x_lin, x_conv) = (randn(&[3, 4], 31), randn(&[2, 3, 7, 7], 32));
        let (want_lin, want_conv) = plain_outputs(&p, &x_lin, &x_conv);
        let on = Switch::default();
        assert_eq!(
            values(&linear(&p, Some(CFG), &on).unwrap().forward(&x_lin).unwrap()),
            want_lin
        );
        assert_eq!(
            values(&conv(&p, Some(CFG), &on).unwrap().forward(&x_conv).unwrap()),
            want_conv
        );
        assert!(init_adapters(&mut p, "fc", &[5, 4], CFG, &mut rng).is_err());
        assert!(init_adapters(&mut p, "x", &[5, 4, 3], CFG, &mut rng).is_err());
    }

    /// Configs: `s = α/r`; bad values name their flag; unknown fields are rejected.
    #[test]
    fn config_scale_and_validation() {
        assert_eq!(CFG.scale(), 1.5);
        let err = LoraConfig { rank: 0, alpha: 1.0 }.validate().unwrap_err().to_string();
        assert!(err.contains("--lora-rank"), "{err}");
        for alpha in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let err = LoraConfig { rank: 4, alpha }.validate().unwrap_err().to_string();
            assert!(err.contains("--lora-alpha"), "{err}");
        }
        let back: LoraConfig = serde_json::from_str(&serde_json::to_string(&CFG).unwrap()).unwrap();
        assert_eq!(back, CFG);
        assert!(serde_json::from_str::<LoraConfig>(r#"{"rank": 2, "alpha": 1.0, "dropout": 0.1}"#).is_err());
    }
}
