//! LayerNorm over the last axis (the transformer blocks' `norm1..3`), rows split across
//! threads: forward in three passes per row instead of candle's `layer_norm_slow` (nine
//! tensor ops, each a full pass), and the input gradient of frozen scale and shift in two
//! (`(d − mean(d) − x̂ mean(d x̂)) / σ`, `d = ∂L/∂y · w`), where the composition keeps four
//! maps of the input's size and adds a gradient buffer for each of its ops.

use super::silu::vectorized;
use super::storage::{contiguous_f32, Values};
use candle_core::{CpuStorage, CustomOp3, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Values per thread task, at least.
const CHUNK: usize = 1 << 14;

#[derive(Clone, Copy, Debug)]
pub struct LayerNorm {
    pub eps: f64,
}

impl LayerNorm {
    /// `(x − mean)/√(var + ε) · weight + bias` over the last axis of `x`, `weight` and `bias`
    /// as wide as it.
    pub fn forward(self, x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
        x.contiguous()?
            .apply_op3_no_bwd(&weight.contiguous()?, &bias.contiguous()?, &self)
    }

    /// `∂L/∂x` of `forward(x, weight, bias)` from `∂L/∂y` (x's shape).
    pub fn backward(self, x: &Tensor, weight: &Tensor, grad: &Tensor) -> Result<Tensor> {
        let (x, grad) = (x.contiguous()?, grad.contiguous()?);
        let (xv, wv, gv) = (Values::of(&x), Values::of(weight), Values::of(&grad));
        let width = check(x.dims(), wv.dims(), wv.dims())?;
        if grad.dims() != x.dims() {
            candle_core::bail!("layer norm: gradient {:?} for input {:?}", grad.dims(), x.dims())
        }
        let (w, gy) = (wv.get()?, gv.get()?);
        let mut out = vec![0f32; gy.len()];
        let rows = rows_per_task(width);
        out.par_chunks_mut(rows * width)
            .zip(xv.get()?.par_chunks(rows * width).zip(gy.par_chunks(rows * width)))
            .for_each(|(dst, (xs, gs))| {
                for ((d, x), g) in dst
                    .chunks_exact_mut(width)
                    .zip(xs.chunks_exact(width))
                    .zip(gs.chunks_exact(width))
                {
                    self.row_backward(x, g, w, d);
                }
            });
        Tensor::from_vec(out, x.dims(), &Device::Cpu)
    }

    /// Mean and `1/√(var + ε)` of one row.
    fn stats(self, x: &[f32]) -> (f32, f32) {
        let n = x.len() as f64;
        let mean = lanes_sum(x, |v| v as f64) / n;
        let var = lanes_sum(x, |v| (v as f64 - mean).powi(2)) / n;
        (mean as f32, (1.0 / (var + self.eps).sqrt()) as f32)
    }

    fn row_backward(self, x: &[f32], grad: &[f32], w: &[f32], out: &mut [f32]) {
        let (m, r) = self.stats(x);
        vectorized(|| {
            for ((d, &g), &w) in out.iter_mut().zip(grad).zip(w) {
                *d = g * w;
            }
        });
        let n = x.len() as f64;
        let mean_d = (lanes_sum(out, |d| d as f64) / n) as f32;
        let mean_dx = (lanes_dot(out, x, |d, x| d * ((x - m) * r)) / n) as f32;
        vectorized(|| {
            for (d, &x) in out.iter_mut().zip(x) {
                *d = r * (*d - mean_d - (x - m) * r * mean_dx);
            }
        });
    }
}

/// Rows per thread task.
fn rows_per_task(width: usize) -> usize {
    (CHUNK / width.max(1)).max(1)
}

/// The normalized width of an input `x` with `weight` and `bias`.
fn check(x: &[usize], w: &[usize], b: &[usize]) -> Result<usize> {
    match x.last() {
        Some(&width) if w == [width] && b == [width] => Ok(width),
        _ => candle_core::bail!("layer norm: weight {w:?} and bias {b:?} do not fit an input {x:?}"),
    }
}

/// `Σ f(x)` in f64, over 8 independent partial sums so that the loop vectorizes.
fn lanes_sum(values: &[f32], f: impl Fn(f32) -> f64) -> f64 {
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

/// `Σ f(a, b)` over paired values in f64, 8 partial sums.
fn lanes_dot(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f64 {
    let mut acc = [0f64; 8];
    vectorized(|| {
        for (ca, cb) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
            for i in 0..8 {
                acc[i] += f(ca[i], cb[i]) as f64;
            }
        }
    });
    let tail = a.len() / 8 * 8;
    let rest: f64 = a[tail..].iter().zip(&b[tail..]).map(|(&x, &y)| f(x, y) as f64).sum();
    acc.iter().sum::<f64>() + rest
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "layer-norm"
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
        let width = check(lx.dims(), lw.dims(), lb.dims())?;
        let (x, w, b) = (
            contiguous_f32(sx, lx, "layer norm")?,
            contiguous_f32(sw, lw, "layer norm")?,
            contiguous_f32(sb, lb, "layer norm")?,
        );
        let mut out = vec![0f32; x.len()];
        let rows = rows_per_task(width);
        out.par_chunks_mut(rows * width)
            .zip(x.par_chunks(rows * width))
            .for_each(|(dst, src)| {
                for (d, x) in dst.chunks_exact_mut(width).zip(src.chunks_exact(width)) {
                    let (m, r) = self.stats(x);
                    vectorized(|| {
                        for ((d, &x), (&w, &b)) in d.iter_mut().zip(x).zip(w.iter().zip(b)) {
                            *d = (x - m) * r * w + b;
                        }
                    });
                }
            });
        Ok((CpuStorage::F32(out), lx.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Forward and input gradient against candle's `layer_norm_slow` and its backward, on a
    /// loss `Σ y ⊙ r`: 2-D and 3-D inputs, an offset mean, widths below and above 8 lanes.
    #[test]
    fn matches_candle_layer_norm() -> Result<()> {
        let dev = Device::Cpu;
        for shape in [vec![5, 3], vec![2, 7, 320], vec![3, 50, 13]] {
            let width = shape[shape.len() - 1];
            let x = candle_core::Var::from_tensor(&(Tensor::randn(0f32, 2.0, shape.as_slice(), &dev)? + 4.0)?)?;
            let w = Tensor::randn(0f32, 1.0, width, &dev)?;
            let b = Tensor::randn(0f32, 1.0, width, &dev)?;
            let r = Tensor::randn(0f32, 1.0, shape.as_slice(), &dev)?;
            let want = candle_nn::ops::layer_norm_slow(x.as_tensor(), &w, &b, 1e-5)?;
            let grads = (&want * &r)?.sum_all()?.backward()?;
            let want_grad = grads.get(x.as_tensor()).unwrap();
            let op = LayerNorm { eps: 1e-5 };
            let got = op.forward(&x.as_tensor().detach(), &w, &b)?;
            let diff = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-5, "{shape:?}: outputs differ by {diff}");
            let got = op.backward(&x.as_tensor().detach(), &w, &r)?;
            let scale = want_grad.abs()?.max_all()?.to_scalar::<f32>()?;
            let diff = (got - want_grad)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(
                diff < 2e-5 * scale,
                "{shape:?}: gradients differ by {diff} (scale {scale})"
            );
        }
        Ok(())
    }
}
