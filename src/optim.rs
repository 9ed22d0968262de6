//! AdamW (Loshchilov & Hutter 2019, PyTorch's ordering: decoupled decay, then the
//! bias-corrected Adam step) and global gradient-norm clipping.

use anyhow::Result;
use candle_core::{backprop::GradStore, Tensor, Var};
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
    pub fn step(&mut self, vars: &[Var], grads: &GradStore, lr: f64) -> Result<()> {
        self.step += 1;
        let (b1, b2) = (self.beta1, self.beta2);
        let (c1, c2) = (1.0 - b1.powi(self.step), 1.0 - b2.powi(self.step));
        for (i, var) in vars.iter().enumerate() {
            let g = match grads.get(var) {
                Some(g) => g.clone(),
                None => var.zeros_like()?,
            };
            // Detached: gradients carry a graph, and the moments must not chain every past step.
            self.m[i] = ((&self.m[i] * b1)? + (&g * (1.0 - b1))?)?.detach();
            self.v[i] = ((&self.v[i] * b2)? + (g.sqr()? * (1.0 - b2))?)?.detach();
            let update = ((&self.m[i] / c1)? / ((&self.v[i] / c2)?.sqrt()? + self.eps)?)?;
            let decayed = (var.as_tensor() * (1.0 - lr * self.cfg.weight_decay))?;
            var.set(&(decayed - (update * lr)?)?)?;
        }
        Ok(())
    }
}

/// Scales all gradients so their global L2 norm is at most `max_norm`; returns the norm before clipping.
pub fn clip_grad_norm(vars: &[Var], grads: &mut GradStore, max_norm: f64) -> Result<f64> {
    let mut total = 0f64;
    for var in vars {
        if let Some(g) = grads.get(var) {
            total += g
                .sqr()?
                .sum_all()?
                .to_dtype(candle_core::DType::F64)?
                .to_scalar::<f64>()?;
        }
    }
    let norm = total.sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        for var in vars {
            if let Some(g) = grads.remove(var) {
                grads.insert(var, (g * scale)?);
            }
        }
    }
    Ok(norm)
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
            opt.step(std::slice::from_ref(&var), &loss.backward().unwrap(), cfg.lr)
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
        let vars = [a.clone(), b.clone()];
        let mut grads = loss.backward().unwrap();
        let norm = clip_grad_norm(&vars, &mut grads, 1.0).unwrap();
        assert!((norm - 5.0).abs() < 1e-6);
        let ga = grads.get(&a).unwrap().to_vec1::<f32>().unwrap()[0];
        let gb = grads.get(&b).unwrap().to_vec1::<f32>().unwrap()[0];
        assert!(((ga * ga + gb * gb).sqrt() - 1.0).abs() < 1e-5 && (ga / gb - 0.75).abs() < 1e-5);
    }
}
