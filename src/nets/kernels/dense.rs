//! The dense layer of the ε-MLP as one candle op with its own backward:
//! `y = [x +] act(x) Wᵀ + b`, `act` = SiLU or identity. Each thread takes a block of rows
//! through activation, residual, bias and product in one go, instead of candle's separate
//! single-threaded SiLU, bias and residual passes around a matmul (docs/PERFORMANCE.md).
//! The forward keeps `act(x)` for the backward's `dW = gᵀ act(x)`. CPU only; other devices
//! use candle's ops.

use super::gemm::{for_row_chunks, gemm, View};
use super::silu::{silu_backward, silu_into};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Storage, Tensor};
use std::borrow::Cow;
use std::sync::{Arc, Mutex};

#[derive(Clone, Copy, Debug)]
pub struct Dense {
    /// Apply SiLU to the input before the product.
    pub silu: bool,
    /// Add the input to the output (square layers only).
    pub residual: bool,
}

impl Dense {
    /// `y = [x +] act(x) Wᵀ + b` for `x: [B, in]`, `w: [out, in]`, `b: [out]`.
    pub fn forward(self, x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
        let op = DenseOp {
            layer: self,
            activation: Mutex::new(None),
        };
        x.apply_op3_arc(w, b, Arc::new(Box::new(op)))
    }

    /// `act(x)` for a block of rows, row-major (borrowed when there is nothing to compute).
    fn activation(self, x: View<'_>) -> Cow<'_, [f32]> {
        let values = row_major(x);
        if !self.silu {
            return values;
        }
        let mut a = vec![0f32; values.len()];
        for_row_chunks(&mut a, x.cols, 1 << 6, |i0, a| {
            silu_into(&values[i0 * x.cols..i0 * x.cols + a.len()], a)
        });
        Cow::Owned(a)
    }

    fn check(self, x: View, w: View, bias_len: usize) -> Result<()> {
        if x.cols != w.cols || bias_len != w.rows || (self.residual && w.rows != w.cols) {
            candle_core::bail!(
                "dense layer: input [{}, {}], weight [{}, {}] and bias [{bias_len}] do not fit",
                x.rows,
                x.cols,
                w.rows,
                w.cols
            )
        }
        Ok(())
    }
}

/// One application of a `Dense` layer, holding `act(x)` between forward and backward
/// (a frozen network's op is dropped right after its forward, and the values with it).
struct DenseOp {
    layer: Dense,
    activation: Mutex<Option<Vec<f32>>>,
}

/// A 1-D (as one row) or 2-D f32 CPU operand as a strided view.
fn view<'a>(s: &'a CpuStorage, l: &Layout) -> Result<View<'a>> {
    let data = &s.as_slice::<f32>()?[l.start_offset()..];
    let (rows, cols, rs, cs) = match (l.dims(), l.stride()) {
        (&[cols], &[cs]) => (1, cols, 0, cs),
        (&[rows, cols], &[rs, cs]) => (rows, cols, rs, cs),
        (dims, _) => candle_core::bail!("dense layer: expected a vector or matrix, got shape {dims:?}"),
    };
    Ok(View {
        data,
        rows,
        cols,
        rs,
        cs,
    })
}

fn tensor_view<'a>(s: &'a Storage, l: &Layout) -> Result<View<'a>> {
    match s {
        Storage::Cpu(s) => view(s, l),
        _ => candle_core::bail!("dense layer: CPU tensors only"),
    }
}

/// The values of a view in row-major order, borrowed when they already are.
fn row_major(v: View<'_>) -> Cow<'_, [f32]> {
    if v.cs == 1 && (v.rs == v.cols || v.rows == 1) {
        return Cow::Borrowed(&v.data[..v.rows * v.cols]);
    }
    (0..v.rows)
        .flat_map(|i| (0..v.cols).map(move |j| v.data[i * v.rs + j * v.cs]))
        .collect()
}

impl CustomOp3 for DenseOp {
    fn name(&self) -> &'static str {
        "dense"
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
        let layer = self.layer;
        let (x, w, b) = (view(sx, lx)?, view(sw, lw)?, view(sb, lb)?);
        if lb.dims().len() != 1 {
            candle_core::bail!("dense layer: bias of shape {:?}, expected a vector", lb.dims())
        }
        layer.check(x, w, b.cols)?;
        let bias = row_major(b);
        let activation = layer.activation(x);
        let a = View::row_major(&activation, x.rows, x.cols);
        let mut out = if layer.residual {
            row_major(x).into_owned()
        } else {
            vec![0f32; x.rows * w.rows]
        };
        gemm(a, w.t(), &mut out, Some(&bias), layer.residual);
        if layer.silu {
            *self
                .activation
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(activation.into_owned());
        }
        Ok((CpuStorage::F32(out), Shape::from((x.rows, w.rows))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let layer = self.layer;
        let needs_grad = x.is_variable() || x.track_op();
        let (gx, gw, gb) = {
            let ((sx, lx), (sw, lw), (sg, lg)) = (
                x.storage_and_layout(),
                w.storage_and_layout(),
                grad.storage_and_layout(),
            );
            let (x, w, g) = (tensor_view(&sx, lx)?, tensor_view(&sw, lw)?, tensor_view(&sg, lg)?);
            // dx = [g +] (g W) ⊙ act'(x), row block by row block — unless x is data
            // that no gradient reaches (the input layer's samples).
            let mut gx = vec![0f32; if needs_grad { x.rows * x.cols } else { 0 }];
            if needs_grad {
                gemm(g, w, &mut gx, None, false);
            }
            if layer.silu || layer.residual {
                for_row_chunks(&mut gx, x.cols, 16, |i0, gx| {
                    let rows = gx.len() / x.cols;
                    if layer.silu {
                        silu_backward(&row_major(x.rows(i0, rows)), gx);
                    }
                    if layer.residual {
                        gx.iter_mut()
                            .zip(row_major(g.rows(i0, rows)).iter())
                            .for_each(|(d, g)| *d += g);
                    }
                });
            }
            // dW = gᵀ act(x), db = Σ_rows g.
            let cached = self
                .activation
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            let a = match cached {
                Some(a) => Cow::Owned(a),
                None => layer.activation(x),
            };
            let mut gw = vec![0f32; w.rows * w.cols];
            gemm(g.t(), View::row_major(&a, x.rows, x.cols), &mut gw, None, false);
            let mut gb = vec![0f32; w.rows];
            for row in row_major(g).chunks_exact(g.cols) {
                gb.iter_mut().zip(row).for_each(|(s, v)| *s += v);
            }
            (gx, gw, gb)
        };
        let dev = x.device();
        Ok((
            needs_grad.then(|| Tensor::from_vec(gx, x.shape(), dev)).transpose()?,
            Some(Tensor::from_vec(gw, w.shape(), dev)?),
            Some(Tensor::from_vec(gb, w.dim(0)?, dev)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn reference(d: Dense, x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
        let a = if d.silu { x.silu()? } else { x.clone() };
        let y = a.matmul(&w.t()?)?.broadcast_add(b)?;
        if d.residual {
            y + x
        } else {
            Ok(y)
        }
    }

    /// Value and all three gradients equal candle's composition of SiLU, matmul, bias and
    /// residual, for every variant, a transposed (strided) input and a loss that weights outputs.
    #[test]
    fn matches_candle_ops_and_their_gradients() -> Result<()> {
        let dev = Device::Cpu;
        for (silu, residual) in [(false, false), (true, false), (true, true), (false, true)] {
            let d = Dense { silu, residual };
            let x = Var::from_tensor(&(Tensor::randn(0f32, 2.0, (37, 24), &dev)?))?;
            let xt = Var::from_tensor(&Tensor::randn(0f32, 2.0, (24, 37), &dev)?)?;
            let w = Var::from_tensor(&(Tensor::randn(0f32, 0.3, (24, 24), &dev)?))?;
            let b = Var::from_tensor(&Tensor::randn(0f32, 1.0, 24, &dev)?)?;
            let weights = Tensor::randn(0f32, 1.0, (37, 24), &dev)?;
            for input in [x.as_tensor().clone(), xt.as_tensor().t()?] {
                let (y, y_ref) = (d.forward(&input, &w, &b)?, reference(d, &input, &w, &b)?);
                let diff = (&y - &y_ref)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(diff < 1e-4, "{d:?}: forward differs by {diff}");
                let g = (y * &weights)?.sum_all()?.backward()?;
                let g_ref = (y_ref * &weights)?.sum_all()?.backward()?;
                for v in [&x, &xt, &w, &b] {
                    if let Some(got) = g.get(v) {
                        let want = g_ref.get(v).unwrap();
                        let diff = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
                        assert!(diff < 1e-3, "{d:?}: gradient differs by {diff}");
                    }
                }
                assert!(g.get(&w).is_some() && g.get(&b).is_some());
            }
        }
        Ok(())
    }
}
