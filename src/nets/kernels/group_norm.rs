//! GroupNorm (Wu & He 2018) with an optional SiLU after it: per image and group, one pass for
//! the mean, one for the variance and one writing `act(x·a_c + b_c)`, groups split across
//! threads, instead of candle's eight single-threaded tensor passes and a ninth for the SiLU.
//! The backward pass (frozen scale and shift: the input's gradient only) recomputes the
//! statistics and takes two more passes per group, where candle's composition keeps five maps
//! of the input's size and adds a gradient buffer for each of its ops.

use super::silu::{silu, silu_backward, vectorized};
use super::storage::{contiguous_f32, Values};
use candle_core::{CpuStorage, CustomOp3, Device, Layout, Result, Shape, Tensor};
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

    /// `∂L/∂x` of `forward(x, weight, bias)` from `∂L/∂y` (`grad`, x's shape).
    pub fn backward(self, x: &Tensor, weight: &Tensor, bias: &Tensor, grad: &Tensor) -> Result<Tensor> {
        let (x, grad) = (x.contiguous()?, grad.contiguous()?);
        let (xv, wv, bv, gv) = (Values::of(&x), Values::of(weight), Values::of(bias), Values::of(&grad));
        let (size, per_group) = self.check(x.dims(), wv.dims(), bv.dims())?;
        let (w, b, gy) = (wv.get()?, bv.get()?, gv.get()?);
        if grad.dims() != x.dims() {
            candle_core::bail!("group norm: gradient {:?} for input {:?}", grad.dims(), x.dims())
        }
        let mut out = vec![0f32; gy.len()];
        let slab = per_group * size;
        out.par_chunks_mut(slab)
            .zip(xv.get()?.par_chunks(slab).zip(gy.par_chunks(slab)))
            .enumerate()
            .for_each(|(i, (dst, (xs, gs)))| {
                let c0 = i % self.groups * per_group;
                let (w, b) = (&w[c0..c0 + per_group], &b[c0..c0 + per_group]);
                self.slab_backward(xs, gs, (w, b), size, dst);
            });
        Tensor::from_vec(out, x.dims(), &Device::Cpu)
    }

    /// Values per channel and channels per group of an input `x` with `weight` and `bias`.
    fn check(self, x: &[usize], w: &[usize], b: &[usize]) -> Result<(usize, usize)> {
        let (c, g) = (x.get(1).copied().unwrap_or(0), self.groups);
        if x.len() < 3 || g == 0 || c % g != 0 || w != [c] || b != [c] {
            candle_core::bail!(
                "group norm: input {x:?} with weight {w:?} and bias {b:?} does not split into {g} groups"
            )
        }
        Ok((x[2..].iter().product(), c / g))
    }

    /// Mean and `1/√(var + ε)` of one group's values.
    fn stats(self, slab: &[f32]) -> (f64, f64) {
        let n = slab.len() as f64;
        let mean = sum(slab, |x| x as f64) / n;
        let var = sum(slab, |x| (x as f64 - mean).powi(2)) / n;
        (mean, 1.0 / (var + self.eps).sqrt())
    }

    /// One group's input gradient: with `x̂ = (x − μ)/σ`, `d = ∂L/∂z · w` (through the SiLU
    /// when there is one, `z = x̂ w + b`), `∂L/∂x = (d − mean(d) − x̂ mean(d x̂)) / σ`.
    fn slab_backward(self, slab: &[f32], grad: &[f32], (weight, bias): (&[f32], &[f32]), size: usize, out: &mut [f32]) {
        let (mean, rstd) = self.stats(slab);
        let mut z = vec![0f32; if self.silu { size } else { 0 }];
        let (mut sum_d, mut sum_dx) = (0f64, 0f64);
        for (((dst, src), gy), (&w, &b)) in out
            .chunks_exact_mut(size)
            .zip(slab.chunks_exact(size))
            .zip(grad.chunks_exact(size))
            .zip(weight.iter().zip(bias))
        {
            let (m, r) = (mean as f32, rstd as f32);
            dst.copy_from_slice(gy);
            if self.silu {
                let a = (rstd * w as f64) as f32;
                let c = (b as f64 - mean * rstd * w as f64) as f32;
                vectorized(|| z.iter_mut().zip(src).for_each(|(z, &x)| *z = x * a + c));
                silu_backward(&z, dst);
            }
            let (d, dx) = dot_sums(dst, src, w, m, r);
            sum_d += d;
            sum_dx += dx;
        }
        let n = slab.len() as f64;
        let (mean_d, mean_dx) = ((sum_d / n) as f32, (sum_dx / n) as f32);
        let (m, r) = (mean as f32, rstd as f32);
        for ((dst, src), &w) in out.chunks_exact_mut(size).zip(slab.chunks_exact(size)).zip(weight) {
            vectorized(|| {
                for (g, &x) in dst.iter_mut().zip(src) {
                    let xhat = (x - m) * r;
                    *g = r * (*g * w - mean_d - xhat * mean_dx);
                }
            });
        }
    }

    /// One image's group `slab` (its channels' values, one after the other, each `size`
    /// long) normalized into `out` with the channels' `weight` and `bias`.
    fn normalize(self, slab: &[f32], weight: &[f32], bias: &[f32], size: usize, out: &mut [f32]) {
        let (mean, rstd) = self.stats(slab);
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

/// `(Σ g·w, Σ g·w·(x − m)·r)` over one channel, in f64 (8 partial sums each).
fn dot_sums(grad: &[f32], x: &[f32], w: f32, m: f32, r: f32) -> (f64, f64) {
    let (mut d, mut dx) = ([0f64; 8], [0f64; 8]);
    vectorized(|| {
        let chunks = grad.chunks_exact(8).zip(x.chunks_exact(8));
        for (gs, xs) in chunks {
            for i in 0..8 {
                let g = gs[i] * w;
                d[i] += g as f64;
                dx[i] += (g * ((xs[i] - m) * r)) as f64;
            }
        }
    });
    let tail = grad.len() / 8 * 8;
    for (&g, &x) in grad[tail..].iter().zip(&x[tail..]) {
        d[0] += (g * w) as f64;
        dx[0] += (g * w * ((x - m) * r)) as f64;
    }
    (d.iter().sum(), dx.iter().sum())
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
        let (size, per_group) = self.check(lx.dims(), lw.dims(), lb.dims())?;
        let g = self.groups;
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

    /// The input gradient against candle's GroupNorm (then SiLU) backward, on a loss `Σ y ⊙ r`:
    /// several groups, one group, 3-D and 4-D inputs, an offset mean, odd sizes.
    #[test]
    fn backward_matches_candle() -> Result<()> {
        let dev = Device::Cpu;
        for (shape, groups) in [(vec![2, 64, 5, 7], 32), (vec![3, 6, 11], 1), (vec![1, 12, 4, 4], 4)] {
            let c = shape[1];
            let x = candle_core::Var::from_tensor(&(Tensor::randn(0f32, 2.0, shape.as_slice(), &dev)? + 3.0)?)?;
            let w = Tensor::randn(0f32, 1.0, c, &dev)?;
            let b = Tensor::randn(0f32, 1.0, c, &dev)?;
            let r = Tensor::randn(0f32, 1.0, shape.as_slice(), &dev)?;
            for act in [false, true] {
                let y = candle_nn::GroupNorm::new(w.clone(), b.clone(), c, groups, 1e-5)?.forward(x.as_tensor())?;
                let y = if act { y.silu()? } else { y };
                let grads = (y * &r)?.sum_all()?.backward()?;
                let want = grads.get(x.as_tensor()).unwrap();
                let op = GroupNormAct {
                    groups,
                    eps: 1e-5,
                    silu: act,
                };
                let got = op.backward(&x.as_tensor().detach(), &w, &b, &r)?;
                let scale = want.abs()?.max_all()?.to_scalar::<f32>()?;
                let diff = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(
                    diff < 2e-5 * scale,
                    "{shape:?} groups {groups} silu {act}: differs by {diff} (scale {scale})"
                );
            }
        }
        Ok(())
    }
}
