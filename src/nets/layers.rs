//! Named parameters and the layers built from them, shared by every network:
//! weights are looked up by name with their shape and dtype checked, so a
//! mismatched file is an error, never a panic.

use crate::nets::kernels::{self, conv::Conv};
use crate::runtime::memory::{ensure_fits, f32_bytes};
use crate::runtime::noise::Rng;
use anyhow::{bail, ensure, Context, Result};
use candle_core::Module;
use candle_core::{Device, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, Linear};
use rand::Rng as _;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

/// Named parameter tensors, as stored in safetensors.
pub type Params = BTreeMap<String, Tensor>;

thread_local! {
    /// Names looked up by `param` while `build_strict` runs on this thread.
    static USED: RefCell<Option<BTreeSet<String>>> = const { RefCell::new(None) };
}

pub fn param(params: &Params, name: &str, shape: &[usize]) -> Result<Tensor> {
    USED.with_borrow_mut(|used| used.as_mut().map(|u| u.insert(name.to_string())));
    let t = params.get(name).with_context(|| format!("missing tensor '{name}'"))?;
    ensure!(
        t.dims() == shape,
        "tensor '{name}' has shape {:?}, expected {shape:?}",
        t.dims()
    );
    ensure!(
        t.dtype().is_float(),
        "tensor '{name}' has dtype {:?}, expected floating point",
        t.dtype()
    );
    Ok(t.clone())
}

/// Runs `build` (a network constructor reading `params` through `param`) and requires that
/// it used every tensor: weights the configuration does not describe (a block too many, a
/// stray adapter) would otherwise be dropped silently and the model differ from its file.
pub fn build_strict<T>(params: &Params, build: impl FnOnce() -> Result<T>) -> Result<T> {
    let outer = USED.replace(Some(BTreeSet::new()));
    let built = build();
    let used = USED.replace(outer).unwrap_or_default();
    // A build nested in another counts for the outer one too.
    USED.with_borrow_mut(|outer| outer.as_mut().map(|o| o.extend(used.iter().cloned())));
    let built = built?;
    if let Some(unused) = params.keys().find(|k| !used.contains(*k)) {
        bail!("tensor '{unused}' is not part of the network its configuration describes");
    }
    Ok(built)
}

pub fn linear(params: &Params, name: &str, out: usize, inp: usize) -> Result<Linear> {
    Ok(Linear::new(
        param(params, &format!("{name}.weight"), &[out, inp])?,
        Some(param(params, &format!("{name}.bias"), &[out])?),
    ))
}

/// A k×k convolution with "same" padding at stride 1 (halving the size at stride 2).
pub fn conv(params: &Params, name: &str, cout: usize, cin: usize, k: usize, stride: usize) -> Result<Conv2d> {
    let w = param(params, &format!("{name}.weight"), &[cout, cin, k, k])?;
    let b = param(params, &format!("{name}.bias"), &[cout])?;
    Ok(Conv2d::new(
        w,
        Some(b),
        Conv2dConfig {
            padding: k / 2,
            stride,
            ..Default::default()
        },
    ))
}

/// `act(conv(x))`, act = SiLU or identity. Frozen networks (nothing records a gradient)
/// take the fused im2col kernel where it serves; training and other devices use candle's conv.
pub fn conv_act(conv: &Conv2d, x: &Tensor, silu: bool) -> Result<Tensor> {
    let cfg = conv.config();
    let frozen = !x.track_op() && !conv.weight().track_op() && !conv.bias().is_some_and(Tensor::track_op);
    let served = kernels::serve(x) && kernels::serve(conv.weight());
    if let (true, true, Some(b), 1, 1) = (frozen, served, conv.bias(), cfg.dilation, cfg.groups) {
        let fused = Conv {
            stride: cfg.stride,
            padding: cfg.padding,
            silu,
        };
        return Ok(fused.forward(x, conv.weight(), b)?);
    }
    let y = conv.forward(x)?;
    Ok(if silu { y.silu()? } else { y })
}

/// `x` on the device and in the dtype of the weights `w` (a network takes inputs from anywhere).
pub fn as_weights(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    Ok(x.to_device(w.device())?.to_dtype(w.dtype())?)
}

/// `y` back on the device and in the dtype of the caller's input `x`.
pub fn as_input(y: Tensor, x: &Tensor) -> Result<Tensor> {
    Ok(y.to_device(x.device())?.to_dtype(x.dtype())?)
}

/// Draws fresh weights: uniform(±gain/√fan_in), as PyTorch's default initialisation.
pub struct Init<'a> {
    pub params: Params,
    rng: &'a mut Rng,
}

impl<'a> Init<'a> {
    pub fn new(rng: &'a mut Rng) -> Self {
        Self {
            params: Params::new(),
            rng,
        }
    }

    pub fn uniform(&mut self, name: &str, shape: &[usize], bound: f64) -> Result<()> {
        ensure!(
            shape.iter().all(|&d| d > 0),
            "tensor '{name}' would have shape {shape:?}: every size must be positive"
        );
        ensure!(
            bound.is_finite() && bound > 0.0,
            "tensor '{name}': no valid initialisation range"
        );
        ensure_fits(f32_bytes(shape), &format!("tensor '{name}' of shape {shape:?}"))?;
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| self.rng.random_range(-bound..bound) as f32).collect();
        self.params
            .insert(name.to_string(), Tensor::from_vec(v, shape, &Device::Cpu)?);
        Ok(())
    }

    pub fn linear(&mut self, name: &str, out: usize, inp: usize, gain: f64) -> Result<()> {
        let bound = gain / (inp as f64).sqrt();
        self.uniform(&format!("{name}.weight"), &[out, inp], bound)?;
        self.uniform(&format!("{name}.bias"), &[out], bound)
    }

    pub fn conv(&mut self, name: &str, cout: usize, cin: usize, k: usize) -> Result<()> {
        let bound = 1.0 / ((cin * k * k) as f64).sqrt();
        self.uniform(&format!("{name}.weight"), &[cout, cin, k, k], bound)?;
        self.uniform(&format!("{name}.bias"), &[cout], bound)
    }
}

/// Nearest-neighbour 2× upsampling by reshape + broadcast: candle's
/// `upsample_nearest2d` backward overwrites gradients instead of accumulating
/// (docs/CANDLE_TRAPS.md, "upsample_nearest2d backward").
pub fn upsample2x(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    Ok(x.reshape((b, c, h, 1, w, 1))?
        .broadcast_as((b, c, h, 2, w, 2))?
        .reshape((b, c, 2 * h, 2 * w))?)
}

/// `f` applied to consecutive row chunks of at most `size` rows, results concatenated
/// (bounds the memory of evaluating a network on a large set).
pub fn map_chunks(x: &Tensor, size: usize, f: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    let n = x.dim(0)?;
    let parts = (0..n)
        .step_by(size)
        .map(|i| {
            crate::runtime::signals::check()?;
            f(&x.narrow(0, i, size.min(n - i))?)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::cat(&parts, 0)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    /// The gradient through upsampling must accumulate with other uses of the input
    /// (the upstream op gets this wrong: 4 instead of 5).
    #[test]
    fn upsample_gradient_accumulates() {
        let x = Var::new(&[[[[1.0f32]]]], &Device::Cpu).unwrap();
        let y = (upsample2x(x.as_tensor()).unwrap().sum_all().unwrap() + x.as_tensor().sum_all().unwrap()).unwrap();
        let g = y.backward().unwrap();
        let gx: f32 = g.get(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()[0];
        assert_eq!(gx, 5.0);
        let up = upsample2x(
            &Tensor::arange(0f32, 4., &Device::Cpu)
                .unwrap()
                .reshape((1, 1, 2, 2))
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            up.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vec![0., 0., 1., 1., 0., 0., 1., 1., 2., 2., 3., 3., 2., 2., 3., 3.]
        );
    }
}
