//! GroupNorm (Wu & He 2018) with an optional SiLU after it, for frozen networks: per image and
//! group, one pass for the mean, one for the variance and one writing `act(x·a_c + b_c)`,
//! groups split across threads, instead of candle's eight single-threaded tensor passes and a
//! ninth for the SiLU. No backward: whatever records a gradient takes candle's GroupNorm.

use super::silu::{silu, vectorized};
use super::storage::contiguous_f32;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

#[derive(Clone, Copy, Debug)]
pub struct GroupNormAct {
    pub groups: usize,
    pub eps: f64,
    /// Apply SiLU to the output.
    pub silu: bool,
}

impl GroupNormAct {
    /// `act(group_norm(x) · weight + bias)` for `x` `[B, C, …]`, `weight` and `bias` `[C]`.
    pub fn forward(self, x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
        x.contiguous()?
            .apply_op3_no_bwd(&weight.contiguous()?, &bias.contiguous()?, &self)
    }

    /// One image's group `slab` (its channels' values, one after the other, each `size`
    /// long) normalized into `out` with the channels' `weight` and `bias`.
    fn normalize(self, slab: &[f32], weight: &[f32], bias: &[f32], size: usize, out: &mut [f32]) {
        let n = slab.len() as f64;
        let mean = sum(slab, |x| x as f64) / n;
        let var = sum(slab, |x| (x as f64 - mean).powi(2)) / n;
        let rstd = 1.0 / (var + self.eps).sqrt();
        for ((dst, src), (&w, &b)) in out
            .chunks_exact_mut(size)
            .zip(slab.chunks_exact(size))
            .zip(weight.iter().zip(bias))
        {
            let a = (rstd * w as f64) as f32;
            let c = (b as f64 - mean * rstd * w as f64) as f32;
            vectorized(|| {
                for (y, &x) in dst.iter_mut().zip(src) {
                    *y = x * a + c;
                }
            });
        }
        if self.silu {
            silu(out);
        }
    }
}

/// `Σ f(x)` in f64, over 8 independent partial sums so that the loop vectorizes.
fn sum(values: &[f32], f: impl Fn(f32) -> f64) -> f64 {
    let mut acc = [0f64; 8];
    vectorized(|| {
        let mut chunks = values.chunks_exact(8);
        for chunk in &mut chunks {
            for (a, &x) in acc.iter_mut().zip(chunk) {
                *a += f(x);
            }
        }
        acc[0] += chunks.remainder().iter().map(|&x| f(x)).sum::<f64>();
    });
    acc.iter().sum()
}

impl CustomOp3 for GroupNormAct {
    fn name(&self) -> &'static str {
        "group-norm"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w, b) = (
            contiguous_f32(sx, lx, "group norm")?,
            contiguous_f32(sw, lw, "group norm")?,
            contiguous_f32(sb, lb, "group norm")?,
        );
        let (c, g) = (lx.dims().get(1).copied().unwrap_or(0), self.groups);
        if lx.dims().len() < 3 || g == 0 || c % g != 0 || w.len() != c || b.len() != c {
            candle_core::bail!(
                "group norm: input {:?} with weight {:?} and bias {:?} does not split into {g} groups",
                lx.dims(),
                lw.dims(),
                lb.dims()
            )
        }
        let size: usize = lx.dims()[2..].iter().product();
        let per_group = c / g;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(per_group * size)
            .zip(x.par_chunks(per_group * size))
            .enumerate()
            .for_each(|(i, (dst, slab))| {
                let c0 = i % g * per_group;
                let (w, b) = (&w[c0..c0 + per_group], &b[c0..c0 + per_group]);
                self.normalize(slab, w, b, size, dst);
            });
        Ok((CpuStorage::F32(out), lx.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Module};

    /// Against candle's GroupNorm (then SiLU): several groups per image, one group, 3-D and
    /// 4-D inputs, an offset mean (the variance is computed about the mean).
    #[test]
    fn matches_candle_group_norm() -> Result<()> {
        let dev = Device::Cpu;
        for (shape, groups) in [(vec![2, 64, 5, 7], 32), (vec![3, 6, 11], 1), (vec![1, 12, 4, 4], 4)] {
            let c = shape[1];
            let x = (Tensor::randn(0f32, 2.0, shape.as_slice(), &dev)? + 5.0)?;
            let w = Tensor::randn(0f32, 1.0, c, &dev)?;
            let b = Tensor::randn(0f32, 1.0, c, &dev)?;
            let want = candle_nn::GroupNorm::new(w.clone(), b.clone(), c, groups, 1e-5)?.forward(&x)?;
            for act in [false, true] {
                let got = GroupNormAct {
                    groups,
                    eps: 1e-5,
                    silu: act,
                }
                .forward(&x, &w, &b)?;
                let want = if act { want.silu()? } else { want.clone() };
                let diff = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(diff < 1e-5, "{shape:?} groups {groups} silu {act}: differs by {diff}");
            }
        }
        Ok(())
    }
}
