//! Timestep embeddings of diffusers' UNet: the sinusoidal projection (`Timesteps`,
//! `get_timestep_embedding`) and the MLP on top of it (`TimestepEmbedding`).

use crate::nets::lora::LoraLinear;
use crate::nets::sd::weights::Weights;
use anyhow::{ensure, Result};
use candle_core::{Device, Tensor};

/// Settings of the sinusoidal projection (`flip_sin_to_cos`, `freq_shift` in the UNet config).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sinusoid {
    pub dim: usize,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f64,
}

impl Sinusoid {
    /// `[N, dim]` f32 embedding of the values `t` (diffusers' `get_timestep_embedding`, max
    /// period 10⁴, scale 1), computed in f32 as diffusers does whatever the model's dtype
    /// (in bf16, t = 999 would round to 1000): with `half = dim / 2`,
    /// `f_i = exp(−ln(10⁴) · i / (half − freq_shift))`, `e = [sin(t f), cos(t f)]`, halves
    /// swapped when `flip_sin_to_cos` (`[cos, sin]`), a zero column appended for odd `dim`.
    pub fn embed(&self, t: &[f32], device: &Device) -> Result<Tensor> {
        let half = self.dim / 2;
        ensure!(
            half > 0 && half as f64 != self.freq_shift,
            "sinusoidal embedding of dim {} with freq_shift {} is degenerate",
            self.dim,
            self.freq_shift
        );
        // Each step in f32 as PyTorch's kernels round it.
        let denom = (half as f64 - self.freq_shift) as f32;
        let log_period = -(10_000f64.ln() as f32);
        let freqs: Vec<f32> = (0..half).map(|i| (log_period * i as f32 / denom).exp()).collect();
        let mut rows = Vec::with_capacity(t.len() * self.dim);
        for &ti in t {
            let args = freqs.iter().map(|f| ti * f);
            let (sin, cos): (Vec<f32>, Vec<f32>) = args.map(|a| (a.sin(), a.cos())).unzip();
            let (first, second) = if self.flip_sin_to_cos { (cos, sin) } else { (sin, cos) };
            rows.extend(first);
            rows.extend(second);
            if self.dim % 2 == 1 {
                rows.push(0.0);
            }
        }
        Ok(Tensor::from_vec(rows, (t.len(), self.dim), device)?)
    }
}

/// `linear_2(silu(linear_1(e + cond_proj(c))))` (diffusers' `TimestepEmbedding` with SiLU,
/// no post-activation); `cond_proj` (no bias) exists for LCM's guidance embedding
/// (`time_cond_proj_dim`).
pub struct TimestepEmbedding {
    linear_1: LoraLinear,
    linear_2: LoraLinear,
    cond_proj: Option<LoraLinear>,
}

impl TimestepEmbedding {
    /// `PATH.linear_1` `[out, inp]`, `PATH.linear_2` `[out, out]`, and `PATH.cond_proj`
    /// `[inp, cond_dim]` when `cond_dim` is set.
    pub fn load(w: &mut Weights, path: &str, inp: usize, out: usize, cond_dim: Option<usize>) -> Result<Self> {
        Ok(Self {
            linear_1: w.linear(&format!("{path}.linear_1"), out, inp, true)?,
            linear_2: w.linear(&format!("{path}.linear_2"), out, out, true)?,
            cond_proj: cond_dim
                .map(|c| w.linear(&format!("{path}.cond_proj"), inp, c, false))
                .transpose()?,
        })
    }

    /// `e` `[B, inp]`, `cond` `[B, cond_dim]` (only where the layer has `cond_proj`).
    pub fn forward(&self, e: &Tensor, cond: Option<&Tensor>) -> Result<Tensor> {
        let e = match (cond, &self.cond_proj) {
            (Some(c), Some(proj)) => (e + proj.forward(c)?)?,
            (Some(_), None) => anyhow::bail!("timestep_cond given, but the UNet has no time_cond_proj_dim"),
            (None, _) => e.clone(),
        };
        self.linear_2.forward(&self.linear_1.forward(&e)?.silu()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The formula for the settings the fixtures do not cover: `[sin, cos]` order, a frequency
    /// shift (`f_i = exp(−ln 10⁴ · i / (half − 1))`) and an odd width (zero column appended).
    #[test]
    fn sinusoid_follows_diffusers_formula() {
        let s = Sinusoid {
            dim: 5,
            flip_sin_to_cos: false,
            freq_shift: 1.0,
        };
        let e = s.embed(&[3.0], &Device::Cpu).unwrap().to_vec2::<f32>().unwrap();
        let f1 = (-(10_000f64.ln())).exp();
        let want = [3f64.sin(), (3.0 * f1).sin(), 3f64.cos(), (3.0 * f1).cos(), 0.0];
        for (a, b) in e[0].iter().zip(want) {
            assert!((*a as f64 - b).abs() < 1e-6, "{:?} vs {want:?}", e[0]);
        }
        let degenerate = Sinusoid { dim: 2, ..s };
        assert!(degenerate.embed(&[1.0], &Device::Cpu).is_err());
    }
}
