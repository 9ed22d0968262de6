//! A LoRA layer `y = base(x) + s·B(A(x))` with frozen base weights as one op, forward and
//! backward on the project's products (f32, CPU). candle's composed version runs the adapter's
//! convolutions through its own conv2d and their input gradients through `conv_transpose2d`'s
//! per-pixel loop, and keeps the adapter's activation twice; here the down projection shares
//! the base's im2col, and the backward is, with `h = s·A(x)`, `g_h = s·Bᵀg`:
//! `∂B = g hᵀ`, `∂A = g_h · im2col(x)ᵀ`, `∂x = col2im(Wᵀ g + Aᵀ g_h)` (linear layers: the same
//! products without im2col). Only `h` (r channels) is kept beside the op's inputs.

use super::conv::Conv;
use super::conv_backward::{input_gradient, weight_gradient, Term};
use super::gemm::{gemm, View};
use super::storage::{contiguous_f32, Values};
use candle_core::{CpuStorage, CustomOp3, Device, Layout, Result, Shape, Tensor};
use std::sync::Mutex;

/// The frozen part of a LoRA layer and the adapter's factor `s = α/r`.
#[derive(Clone, Debug)]
pub struct Frozen {
    /// `[out, in]` (linear) or `[out, in, k, k]` (convolution).
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub scale: f64,
}

/// The bias, or zeros when the layer has none.
fn bias_or_zeros(bias: Option<&Tensor>, out: usize) -> Result<Vec<f32>> {
    match bias {
        Some(b) => Ok(Values::of(b).get()?.to_vec()),
        None => Ok(vec![0.0; out]),
    }
}

/// The forward's `h = s·A(x)`, kept for B's gradient (taken by the one backward pass).
#[derive(Debug, Default)]
struct Hidden(Mutex<Option<Vec<f32>>>);

impl Hidden {
    fn keep(&self, h: Vec<f32>) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(h);
        }
    }

    fn take(&self) -> Result<Vec<f32>> {
        let taken = self.0.lock().map(|mut h| h.take());
        match taken {
            Ok(Some(h)) => Ok(h),
            _ => candle_core::bail!("lora: backward pass run twice, or after a forward without a graph"),
        }
    }
}

fn scaled(mut v: Vec<f32>, s: f32) -> Vec<f32> {
    v.iter_mut().for_each(|x| *x *= s);
    v
}

fn tensor(v: Vec<f32>, dims: &[usize]) -> Result<Tensor> {
    Tensor::from_vec(v, dims, &Device::Cpu)
}

/// Runs `op` on `x`, A, B: with a backward when anything records a gradient.
fn apply<C: CustomOp3 + Send + Sync + 'static>(
    op: C,
    x: &Tensor,
    a: &Tensor,
    b: &Tensor,
    tracked: bool,
) -> Result<Tensor> {
    let (x, a, b) = (x.contiguous()?, a.contiguous()?, b.contiguous()?);
    match tracked {
        true => x.apply_op3(&a, &b, op),
        false => x.apply_op3_no_bwd(&a, &b, &op),
    }
}

/// `conv2d(x, W) + b + conv1×1(s·conv2d(x, A), B)`: x `[N, C, H, W]`, A `[r, C, k, k]`,
/// B `[O, r, 1, 1]`.
pub struct LoraConv {
    conv: Conv,
    frozen: Frozen,
    hidden: Hidden,
}

impl LoraConv {
    pub fn forward(
        frozen: &Frozen,
        stride: usize,
        padding: usize,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
    ) -> Result<Tensor> {
        let conv = Conv {
            stride,
            padding,
            silu: false,
        };
        let op = Self {
            conv,
            frozen: frozen.clone(),
            hidden: Hidden::default(),
        };
        apply(op, x, a, b, x.track_op() || a.track_op() || b.track_op())
    }
}

impl CustomOp3 for LoraConv {
    fn name(&self) -> &'static str {
        "lora-conv2d"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sa: &CpuStorage,
        la: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, a, bf) = (
            contiguous_f32(sx, lx, "lora conv")?,
            contiguous_f32(sa, la, "lora conv")?,
            contiguous_f32(sb, lb, "lora conv")?,
        );
        let w = Values::of(&self.frozen.weight);
        let g = self.conv.geometry(lx.dims(), w.dims())?;
        let (n, r, hw) = (lx.dims()[0], la.dims()[0], g.positions());
        if la.dims() != [r, g.c, g.k, g.k] || lb.dims() != [g.o, r, 1, 1] {
            candle_core::bail!(
                "lora conv: factors A {:?}, B {:?} do not fit the weight {:?}",
                la.dims(),
                lb.dims(),
                w.dims()
            )
        }
        let bias = bias_or_zeros(self.frozen.bias.as_ref(), g.o)?;
        let (mut y, h) = self.conv.run_adapted(x, w.get()?, &bias, a, n, g);
        let h = scaled(h, self.frozen.scale as f32);
        for (yn, hn) in y.chunks_exact_mut(g.o * hw).zip(h.chunks_exact(r * hw)) {
            gemm(View::row_major(bf, g.o, r), View::row_major(hn, r, hw), yn, None, true);
        }
        self.hidden.keep(h);
        Ok((CpuStorage::F32(y), Shape::from((n, g.o, g.ho, g.wo))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let h = self.hidden.take()?;
        let grad = grad.contiguous()?;
        let (gv, xv, av, bv, wv) = (
            Values::of(&grad),
            Values::of(x),
            Values::of(a),
            Values::of(b),
            Values::of(&self.frozen.weight),
        );
        let (gs, bf) = (gv.get()?, bv.get()?);
        let g = self.conv.geometry(x.dims(), wv.dims())?;
        let (n, r, hw) = (x.dim(0)?, a.dim(0)?, g.positions());
        // g_h = s·Bᵀ g and ∂B = Σ g hᵀ, image by image.
        let mut gh = vec![0f32; n * r * hw];
        let mut gb = vec![0f32; g.o * r];
        for (i, ((gn, hn), ghn)) in gs
            .chunks_exact(g.o * hw)
            .zip(h.chunks_exact(r * hw))
            .zip(gh.chunks_exact_mut(r * hw))
            .enumerate()
        {
            let gn = View::row_major(gn, g.o, hw);
            gemm(View::row_major(bf, g.o, r).t(), gn, ghn, None, false);
            gemm(gn, View::row_major(hn, r, hw).t(), &mut gb, None, i > 0);
        }
        let gh = scaled(gh, self.frozen.scale as f32);
        let ga = match a.track_op() {
            true => Some(tensor(weight_gradient(self.conv, g, n, xv.get()?, &gh), a.dims())?),
            false => None,
        };
        let gx = match x.track_op() {
            true => {
                let terms = [
                    Term {
                        weights: wv.get()?,
                        grad: gs,
                    },
                    Term {
                        weights: av.get()?,
                        grad: &gh,
                    },
                ];
                Some(tensor(input_gradient(self.conv, g, n, &terms), x.dims())?)
            }
            false => None,
        };
        let gb = b.track_op().then(|| tensor(gb, b.dims())).transpose()?;
        Ok((gx, ga, gb))
    }
}

/// `x Wᵀ + b + s·(x Aᵀ) Bᵀ`: x `[…, in]`, A `[r, in]`, B `[out, r]`.
pub struct LoraLinear {
    frozen: Frozen,
    hidden: Hidden,
}

impl LoraLinear {
    pub fn forward(frozen: &Frozen, x: &Tensor, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let op = Self {
            frozen: frozen.clone(),
            hidden: Hidden::default(),
        };
        apply(op, x, a, b, x.track_op() || a.track_op() || b.track_op())
    }
}

/// Rows (all leading axes) and width of the last axis of `dims`.
fn rows_and_width(dims: &[usize]) -> (usize, usize) {
    match dims.split_last() {
        Some((&w, lead)) => (lead.iter().product(), w),
        None => (1, 1),
    }
}

impl CustomOp3 for LoraLinear {
    fn name(&self) -> &'static str {
        "lora-linear"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sa: &CpuStorage,
        la: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, a, bf) = (
            contiguous_f32(sx, lx, "lora linear")?,
            contiguous_f32(sa, la, "lora linear")?,
            contiguous_f32(sb, lb, "lora linear")?,
        );
        let w = Values::of(&self.frozen.weight);
        let (rows, inp) = rows_and_width(lx.dims());
        let (&[out, w_in], &[r, a_in]) = (w.dims(), la.dims()) else {
            candle_core::bail!("lora linear: expected [out, in] weights and [r, in] factor A")
        };
        if w_in != inp || a_in != inp || lb.dims() != [out, r] || lx.dims().is_empty() {
            candle_core::bail!(
                "lora linear: input {:?}, weight {:?}, A {:?}, B {:?} do not fit",
                lx.dims(),
                w.dims(),
                la.dims(),
                lb.dims()
            )
        }
        let bias = bias_or_zeros(self.frozen.bias.as_ref(), out)?;
        let xv = View::row_major(x, rows, inp);
        let mut y = vec![0f32; rows * out];
        gemm(xv, View::row_major(w.get()?, out, inp).t(), &mut y, Some(&bias), false);
        let mut h = vec![0f32; rows * r];
        gemm(xv, View::row_major(a, r, inp).t(), &mut h, None, false);
        let h = scaled(h, self.frozen.scale as f32);
        gemm(
            View::row_major(&h, rows, r),
            View::row_major(bf, out, r).t(),
            &mut y,
            None,
            true,
        );
        self.hidden.keep(h);
        let mut dims = lx.dims().to_vec();
        if let Some(d) = dims.last_mut() {
            *d = out;
        }
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let h = self.hidden.take()?;
        let grad = grad.contiguous()?;
        let (gv, xv, av, bv, wv) = (
            Values::of(&grad),
            Values::of(x),
            Values::of(a),
            Values::of(b),
            Values::of(&self.frozen.weight),
        );
        let (rows, inp) = rows_and_width(x.dims());
        let (out, r) = b.dims2()?;
        let g = View::row_major(gv.get()?, rows, out);
        // g_h = s·g B
        let mut gh = vec![0f32; rows * r];
        gemm(g, View::row_major(bv.get()?, out, r), &mut gh, None, false);
        let gh = scaled(gh, self.frozen.scale as f32);
        let ghv = View::row_major(&gh, rows, r);
        let gb = match b.track_op() {
            true => {
                let mut gb = vec![0f32; out * r];
                gemm(g.t(), View::row_major(&h, rows, r), &mut gb, None, false);
                Some(tensor(gb, b.dims())?)
            }
            false => None,
        };
        let ga = match a.track_op() {
            true => {
                let mut ga = vec![0f32; r * inp];
                gemm(ghv.t(), View::row_major(xv.get()?, rows, inp), &mut ga, None, false);
                Some(tensor(ga, a.dims())?)
            }
            false => None,
        };
        let gx = match x.track_op() {
            true => {
                let mut gx = vec![0f32; rows * inp];
                gemm(g, View::row_major(wv.get()?, out, inp), &mut gx, None, false);
                gemm(ghv, View::row_major(av.get()?, r, inp), &mut gx, None, true);
                Some(tensor(gx, x.dims())?)
            }
            false => None,
        };
        Ok((gx, ga, gb))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Module, Var};
    use candle_nn::{Conv2d, Conv2dConfig, Linear};

    fn randn(shape: &[usize], std: f32) -> Tensor {
        Tensor::randn(0f32, std, shape, &Device::Cpu).unwrap()
    }

    fn max_rel_diff(a: &Tensor, b: &Tensor) -> f32 {
        let scale = b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1.0);
        let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        diff.to_scalar::<f32>().unwrap() / scale
    }

    /// The output and the gradients of x, A and B against candle's composed layer (`y =
    /// base(x) + s·B(A(x))` with candle's conv2d / matmul and their backward), on a loss
    /// `Σ y ⊙ r`.
    fn check(
        fused: impl Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>,
        composed: impl Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>,
        shapes: [&[usize]; 3],
        case: &str,
    ) {
        let vars = shapes.map(|s| Var::from_tensor(&randn(s, 0.5)).unwrap());
        let [x, a, b] = vars.each_ref().map(|v| v.as_tensor());
        let (y, want) = (fused(x, a, b).unwrap(), composed(x, a, b).unwrap());
        assert!(max_rel_diff(&y, &want) < 1e-5, "{case}: outputs differ");
        let r = randn(y.dims(), 1.0);
        let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let want_grads = (&want * &r).unwrap().sum_all().unwrap().backward().unwrap();
        for (t, name) in [(x, "x"), (a, "A"), (b, "B")] {
            let err = max_rel_diff(grads.get(t).unwrap(), want_grads.get(t).unwrap());
            assert!(err < 1e-5, "{case}: gradient of {name} off by {err:e}");
        }
    }

    /// Stride 1 and 2, 3×3 and 1×1, narrow and wide layers (> 64 outputs: the adapter shares
    /// the base's im2col), one image and a group, with and without bias.
    #[test]
    fn conv_matches_the_composed_layer() {
        for (n, c, o, k, stride, size, with_bias) in [
            (2, 3, 5, 3, 1, 7, true),
            (1, 6, 80, 3, 1, 6, true),
            (3, 8, 72, 3, 2, 8, false),
            (2, 16, 96, 1, 1, 5, true),
            (1, 4, 66, 3, 2, 9, true),
        ] {
            let (rank, scale, padding) = (3, 1.5, k / 2);
            let weight = randn(&[o, c, k, k], 0.3);
            let bias = with_bias.then(|| randn(&[o], 1.0));
            let frozen = Frozen {
                weight: weight.clone(),
                bias: bias.clone(),
                scale,
            };
            let cfg = Conv2dConfig {
                padding,
                stride,
                ..Default::default()
            };
            let composed = |x: &Tensor, a: &Tensor, b: &Tensor| {
                let y = Conv2d::new(weight.clone(), bias.clone(), cfg).forward(x)?;
                let h = Conv2d::new(a.clone(), None, cfg).forward(x)?;
                let d = Conv2d::new(b.clone(), None, Conv2dConfig::default()).forward(&h)?;
                y + (d * scale)?
            };
            let fused = |x: &Tensor, a: &Tensor, b: &Tensor| LoraConv::forward(&frozen, stride, padding, x, a, b);
            let case = format!("conv n={n} c={c} o={o} k={k} s={stride}");
            check(
                fused,
                composed,
                [&[n, c, size, size], &[rank, c, k, k], &[o, rank, 1, 1]],
                &case,
            );
        }
    }

    /// 2-D and 3-D inputs, with and without bias.
    #[test]
    fn linear_matches_the_composed_layer() {
        for (lead, with_bias) in [(vec![5], true), (vec![2, 7], false), (vec![3, 40], true)] {
            let (inp, out, rank, scale) = (9, 70, 4, 0.5);
            let weight = randn(&[out, inp], 0.3);
            let bias = with_bias.then(|| randn(&[out], 1.0));
            let frozen = Frozen {
                weight: weight.clone(),
                bias: bias.clone(),
                scale,
            };
            let composed = |x: &Tensor, a: &Tensor, b: &Tensor| {
                let y = Linear::new(weight.clone(), bias.clone()).forward(x)?;
                let d = Linear::new(b.clone(), None).forward(&Linear::new(a.clone(), None).forward(x)?)?;
                y + (d * scale)?
            };
            let fused = |x: &Tensor, a: &Tensor, b: &Tensor| LoraLinear::forward(&frozen, x, a, b);
            let x_shape: Vec<usize> = lead.iter().copied().chain([inp]).collect();
            check(
                fused,
                composed,
                [&x_shape, &[rank, inp], &[out, rank]],
                &format!("linear {lead:?}"),
            );
        }
    }

    /// Inputs that record no gradient get none, and a forward without a graph keeps nothing
    /// for a backward pass.
    #[test]
    fn untracked_inputs_get_no_gradient() {
        let frozen = Frozen {
            weight: randn(&[6, 5], 1.0),
            bias: None,
            scale: 1.0,
        };
        let (x, b) = (randn(&[3, 5], 1.0), randn(&[6, 2], 1.0));
        let a = Var::from_tensor(&randn(&[2, 5], 1.0)).unwrap();
        let y = LoraLinear::forward(&frozen, &x, a.as_tensor(), &b).unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(a.as_tensor()).is_some());
        assert!(grads.get(&x).is_none() && grads.get(&b).is_none());
        let y = LoraLinear::forward(&frozen, &x, &a.as_tensor().detach(), &b).unwrap();
        assert!(!y.track_op());
    }
}
