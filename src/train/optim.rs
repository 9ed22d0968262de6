//! AdamW (Loshchilov & Hutter 2019, PyTorch's ordering: decoupled decay, then the
//! bias-corrected Adam step) and global gradient-norm clipping.

use anyhow::{bail, ensure, Context, Result};
use candle_core::{backprop::GradStore, Layout, Storage, Tensor, Var};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimConfig {
    pub lr: f64,
    pub weight_decay: f64,
    /// Clip the global gradient norm to this value (0: no clipping).
    pub max_grad_norm: f64,
    /// Cosine decay of the learning rate to 0 over the run (otherwise constant).
    pub cosine_decay: bool,
}

impl OptimConfig {
    /// Every training command's optimizer flags, checked before any work.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.lr.is_finite() && self.lr > 0.0,
            "--lr {}: must be a positive finite number",
            self.lr
        );
        ensure!(
            self.weight_decay.is_finite() && self.weight_decay >= 0.0,
            "--weight-decay {}: must be a finite number ≥ 0",
            self.weight_decay
        );
        // The decoupled decay multiplies the weights by 1 − lr·wd each step: at lr·wd ≥ 1 it
        // zeroes or flips them.
        ensure!(
            self.lr * self.weight_decay < 1.0,
            "--weight-decay {}: with --lr {} each step scales the weights by 1 − lr·wd = {:.3e}; \
             lr × weight decay must be below 1",
            self.weight_decay,
            self.lr,
            1.0 - self.lr * self.weight_decay
        );
        ensure!(
            self.max_grad_norm.is_finite() && self.max_grad_norm >= 0.0,
            "--max-grad-norm {}: must be a finite number ≥ 0 (0: no clipping)",
            self.max_grad_norm
        );
        Ok(())
    }

    /// Learning rate at `step` (0-based) of `total`.
    pub fn lr_at(&self, step: usize, total: usize) -> f64 {
        if self.cosine_decay {
            self.lr * 0.5 * (1.0 + (std::f64::consts::PI * step as f64 / total as f64).cos())
        } else {
            self.lr
        }
    }
}

pub struct AdamW {
    cfg: OptimConfig,
    beta1: f64,
    beta2: f64,
    eps: f64,
    step: i32,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
}

impl AdamW {
    pub fn new(cfg: OptimConfig, vars: &[Var]) -> Result<Self> {
        let zeros = |v: &Var| v.zeros_like();
        Ok(Self {
            cfg,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            step: 0,
            m: vars.iter().map(zeros).collect::<candle_core::Result<_>>()?,
            v: vars.iter().map(zeros).collect::<candle_core::Result<_>>()?,
        })
    }

    /// Steps taken and the first and second moments, for checkpoints.
    pub fn state(&self) -> (i32, &[Tensor], &[Tensor]) {
        (self.step, &self.m, &self.v)
    }

    pub fn restore(&mut self, step: i32, m: Vec<Tensor>, v: Vec<Tensor>) -> Result<()> {
        anyhow::ensure!(
            m.len() == self.m.len() && v.len() == self.v.len(),
            "optimizer state has the wrong number of tensors"
        );
        for (new, old) in m.iter().chain(&v).zip(self.m.iter().chain(&self.v)) {
            anyhow::ensure!(
                new.shape() == old.shape(),
                "optimizer state tensor has shape {:?}, expected {:?}",
                new.dims(),
                old.dims()
            );
        }
        (self.step, self.m, self.v) = (step, m, v);
        Ok(())
    }

    /// One update of every var at learning rate `lr`; a var without a gradient has gradient 0.
    /// One update with every gradient multiplied by `grad_scale` (the clipping factor).
    pub fn step(&mut self, vars: &[Var], grads: &GradStore, lr: f64, grad_scale: f64) -> Result<()> {
        self.step += 1;
        let h = Hyper {
            b1: self.beta1 as f32,
            b2: self.beta2 as f32,
            a1: (1.0 - self.beta1) as f32,
            a2: (1.0 - self.beta2) as f32,
            c1: (1.0 - self.beta1.powi(self.step)) as f32,
            c2: (1.0 - self.beta2.powi(self.step)) as f32,
            eps: self.eps as f32,
            lr: lr as f32,
            keep: (1.0 - lr * self.cfg.weight_decay) as f32,
            scale: grad_scale as f32,
        };
        for (i, var) in vars.iter().enumerate() {
            let g = match grads.get(var) {
                Some(g) => g.contiguous()?,
                None => var.zeros_like()?,
            };
            let (p, m, v) = if crate::nets::kernels::serve(var.as_tensor()) {
                fused_update(var.as_tensor(), &g, &self.m[i], &self.v[i], &h)?
            } else {
                generic_update(var.as_tensor(), &g, &self.m[i], &self.v[i], &h)?
            };
            var.set(&p)?;
            (self.m[i], self.v[i]) = (m, v);
        }
        Ok(())
    }
}

/// One step's constants, in f32 as the arithmetic runs.
struct Hyper {
    b1: f32,
    b2: f32,
    /// 1 − β, rounded from f64 (1 − β₁ in f32 is off by 2e-7 relative).
    a1: f32,
    a2: f32,
    /// Bias corrections 1 − β^step.
    c1: f32,
    c2: f32,
    eps: f32,
    lr: f32,
    /// Decoupled weight decay factor 1 − lr·λ.
    keep: f32,
    scale: f32,
}

impl Hyper {
    /// `m ← β₁m + (1−β₁)g`, `v ← β₂v + (1−β₂)g²`, `p ← p(1 − lrλ) − lr m̂/(√v̂ + ε)`.
    #[inline(always)]
    fn apply(&self, p: f32, g: f32, m: f32, v: f32) -> (f32, f32, f32) {
        let g = g * self.scale;
        let m = m * self.b1 + g * self.a1;
        let v = v * self.b2 + g * g * self.a2;
        let update = (m / self.c1) / ((v / self.c2).sqrt() + self.eps);
        (p * self.keep - update * self.lr, m, v)
    }
}

/// The update as one pass over (p, g, m, v), split across threads (CPU tensors).
fn fused_update(p: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor, h: &Hyper) -> Result<(Tensor, Tensor, Tensor)> {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 15;
    let n = p.elem_count();
    let (mut p1, mut m1, mut v1) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
    {
        let guards = [p, g, m, v].map(|t| t.storage_and_layout());
        let [p0, g0, m0, v0] = [0, 1, 2, 3].map(|i| cpu_slice(&guards[i].0, guards[i].1));
        let (p0, g0, m0, v0) = (p0?, g0?, m0?, v0?);
        p1.par_chunks_mut(CHUNK)
            .zip(m1.par_chunks_mut(CHUNK))
            .zip(v1.par_chunks_mut(CHUNK))
            .enumerate()
            .for_each(|(c, ((p1, m1), v1))| {
                let r = c * CHUNK..c * CHUNK + p1.len();
                let inputs = p0[r.clone()].iter().zip(&g0[r.clone()]).zip(&m0[r.clone()]).zip(&v0[r]);
                for ((((&p, &g), &m), &v), ((po, mo), vo)) in inputs.zip(p1.iter_mut().zip(m1.iter_mut()).zip(v1)) {
                    (*po, *mo, *vo) = h.apply(p, g, m, v);
                }
            });
    }
    let t = |data| Tensor::from_vec(data, p.shape(), p.device());
    Ok((t(p1)?, t(m1)?, t(v1)?))
}

/// The same update from candle's tensor ops (any device).
fn generic_update(p: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor, h: &Hyper) -> Result<(Tensor, Tensor, Tensor)> {
    let g = (g * h.scale as f64)?;
    // Detached: gradients carry a graph, and the moments must not chain every past step.
    let m = ((m * h.b1 as f64)? + (&g * h.a1 as f64)?)?.detach();
    let v = ((v * h.b2 as f64)? + (g.sqr()? * h.a2 as f64)?)?.detach();
    let update = ((&m / h.c1 as f64)? / ((&v / h.c2 as f64)?.sqrt()? + h.eps as f64)?)?;
    let p = ((p * h.keep as f64)? - (update * h.lr as f64)?)?.detach();
    Ok((p, m, v))
}

/// The values of a contiguous f32 CPU tensor.
fn cpu_slice<'a>(storage: &'a Storage, layout: &Layout) -> Result<&'a [f32]> {
    let Storage::Cpu(s) = storage else {
        bail!("expected a CPU tensor")
    };
    let (start, end) = layout.contiguous_offsets().context("expected a contiguous tensor")?;
    Ok(&s.as_slice::<f32>()?[start..end])
}

/// The global L2 norm of all gradients.
pub fn grad_norm(vars: &[Var], grads: &GradStore) -> Result<f64> {
    let mut total = 0f64;
    for g in vars.iter().filter_map(|v| grads.get(v)) {
        let g = g.contiguous()?;
        let (storage, layout) = g.storage_and_layout();
        total += match cpu_slice(&storage, layout) {
            // f32 sums of short chunks vectorize; their f64 total keeps the precision.
            Ok(values) => values
                .chunks(256)
                .map(|c| c.iter().map(|x| x * x).sum::<f32>() as f64)
                .sum::<f64>(),
            Err(_) => g
                .sqr()?
                .sum_all()?
                .to_dtype(candle_core::DType::F64)?
                .to_scalar::<f64>()?,
        };
    }
    Ok(total.sqrt())
}

/// The factor that brings a gradient of norm `norm` within `max_norm` (1 when it already
/// is, or when clipping is off: `max_norm` ≤ 0), as PyTorch's `clip_grad_norm_`.
pub fn clip_scale(norm: f64, max_norm: f64) -> f64 {
    if max_norm > 0.0 && norm > max_norm {
        max_norm / (norm + 1e-6)
    } else {
        1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Two AdamW steps on `L = Σ θ²/2` checked against the update written out by hand.
    #[test]
    fn adamw_matches_hand_computed_updates() {
        let cfg = OptimConfig {
            lr: 0.1,
            weight_decay: 0.01,
            max_grad_norm: 0.0,
            cosine_decay: false,
        };
        let var = Var::new(&[1.0f32, -2.0], &Device::Cpu).unwrap();
        let mut opt = AdamW::new(cfg, std::slice::from_ref(&var)).unwrap();
        let mut theta = [1.0f64, -2.0];
        let (mut m, mut v) = ([0f64; 2], [0f64; 2]);
        for step in 1..=2 {
            let loss = (var.as_tensor().sqr().unwrap().sum_all().unwrap() * 0.5).unwrap();
            opt.step(std::slice::from_ref(&var), &loss.backward().unwrap(), cfg.lr, 1.0)
                .unwrap();
            for i in 0..2 {
                let g = theta[i];
                m[i] = 0.9 * m[i] + 0.1 * g;
                v[i] = 0.999 * v[i] + 0.001 * g * g;
                let mh = m[i] / (1.0 - 0.9f64.powi(step));
                let vh = v[i] / (1.0 - 0.999f64.powi(step));
                theta[i] = theta[i] * (1.0 - 0.1 * 0.01) - 0.1 * mh / (vh.sqrt() + 1e-8);
            }
        }
        assert!(
            opt.m.iter().chain(&opt.v).all(|t| !t.track_op()),
            "moments must not keep a graph alive"
        );
        let got = var.as_tensor().to_vec1::<f32>().unwrap();
        for i in 0..2 {
            assert!((got[i] as f64 - theta[i]).abs() < 1e-6, "{got:?} vs {theta:?}");
        }
    }

    #[test]
    fn clipping_bounds_the_global_norm() {
        let a = Var::new(&[3.0f32], &Device::Cpu).unwrap();
        let b = Var::new(&[4.0f32], &Device::Cpu).unwrap();
        let loss = ((a.as_tensor() * 3.0).unwrap() + (b.as_tensor() * 4.0).unwrap())
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        let norm = grad_norm(&[a, b], &grads).unwrap();
        assert!((norm - 5.0).abs() < 1e-6);
        assert!((clip_scale(norm, 1.0) * norm - 1.0).abs() < 1e-6);
        assert_eq!((clip_scale(norm, 10.0), clip_scale(norm, 0.0)), (1.0, 1.0));
    }

    /// The one-pass CPU update equals the tensor-op update (used on GPUs), across chunk
    /// boundaries and with a clipping factor.
    #[test]
    fn fused_update_matches_tensor_ops() -> Result<()> {
        let dev = Device::Cpu;
        let n = 100_003;
        let (mut p, mut m, mut v) = (
            Tensor::randn(0f32, 1.0, n, &dev)?,
            Tensor::zeros(n, candle_core::DType::F32, &dev)?,
            Tensor::zeros(n, candle_core::DType::F32, &dev)?,
        );
        let (mut pg, mut mg, mut vg) = (p.clone(), m.clone(), v.clone());
        for step in 1..=3 {
            let g = Tensor::randn(0f32, 1.0, n, &dev)?;
            let h = Hyper {
                b1: 0.9,
                b2: 0.999,
                a1: 0.1,
                a2: 0.001,
                c1: 1.0 - 0.9f32.powi(step),
                c2: 1.0 - 0.999f32.powi(step),
                eps: 1e-8,
                lr: 1e-3,
                keep: 1.0 - 1e-5,
                scale: 0.5,
            };
            (p, m, v) = fused_update(&p, &g, &m, &v, &h)?;
            (pg, mg, vg) = generic_update(&pg, &g, &mg, &vg, &h)?;
        }
        for (a, b) in [(&p, &pg), (&m, &mg), (&v, &vg)] {
            let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-6, "fused and tensor-op updates differ by {diff}");
        }
        Ok(())
    }
}
