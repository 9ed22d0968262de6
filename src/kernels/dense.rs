//! The dense layer of the ε-MLP as one candle op with its own backward:
//! `y = [x +] act(x) Wᵀ + b`, `act` = SiLU or identity — one pass over the activations
//! and one matrix product instead of candle's separate SiLU, matmul, bias and residual
//! passes (docs/PERFORMANCE.md). CPU only; other devices use candle's ops.

use super::gemm::{gemm, View};
use super::silu::{silu, silu_backward};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Storage, Tensor};

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
        x.apply_op3_arc(w, b, std::sync::Arc::new(Box::new(self)))
    }
}

/// A 2-D f32 CPU operand as a strided view.
fn view<'a>(s: &'a CpuStorage, l: &Layout) -> Result<View<'a>> {
    let data = s.as_slice::<f32>()?;
    let (&[rows, cols], &[rs, cs]) = (l.dims(), l.stride()) else {
        candle_core::bail!("dense layer: expected a matrix, got shape {:?}", l.dims())
    };
    Ok(View {
        data: &data[l.start_offset()..],
        rows,
        cols,
        rs,
        cs,
    })
}

/// The values of a 1-D or 2-D operand in row-major order.
fn contiguous(v: View) -> Vec<f32> {
    if v.cs == 1 && v.rs == v.cols {
        return v.data[..v.rows * v.cols].to_vec();
    }
    (0..v.rows)
        .flat_map(|i| (0..v.cols).map(move |j| v.data[i * v.rs + j * v.cs]))
        .collect()
}

fn vector<'a>(s: &'a CpuStorage, l: &Layout, len: usize) -> Result<std::borrow::Cow<'a, [f32]>> {
    let data = s.as_slice::<f32>()?;
    match (l.dims(), l.contiguous_offsets()) {
        (&[n], Some((start, end))) if n == len => Ok(std::borrow::Cow::Borrowed(&data[start..end])),
        (&[n], None) if n == len => Ok(contiguous(View {
            data: &data[l.start_offset()..],
            rows: 1,
            cols: n,
            rs: 0,
            cs: l.stride()[0],
        })
        .into()),
        (dims, _) => candle_core::bail!("dense layer: bias of shape {dims:?}, expected [{len}]"),
    }
}

impl Dense {
    /// `act(x)` as a view, computing SiLU into `buf` when needed.
    fn activation<'a>(self, x: View<'a>, buf: &'a mut Vec<f32>) -> View<'a> {
        if !self.silu {
            return x;
        }
        let raw = contiguous(x);
        buf.resize(raw.len(), 0.0);
        silu(&raw, buf);
        View::row_major(buf, x.rows, x.cols)
    }

    fn check(self, x: View, w: View) -> Result<()> {
        if x.cols != w.cols || (self.residual && w.rows != w.cols) {
            candle_core::bail!(
                "dense layer: input [{}, {}] does not fit weight [{}, {}]",
                x.rows,
                x.cols,
                w.rows,
                w.cols
            )
        }
        Ok(())
    }
}

fn cpu(t: &Storage) -> Result<&CpuStorage> {
    match t {
        Storage::Cpu(s) => Ok(s),
        _ => candle_core::bail!("dense layer: CPU tensors only"),
    }
}

impl CustomOp3 for Dense {
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
        let (x, w) = (view(sx, lx)?, view(sw, lw)?);
        self.check(x, w)?;
        let bias = vector(sb, lb, w.rows)?;
        let mut out = if self.residual {
            contiguous(x)
        } else {
            vec![0f32; x.rows * w.rows]
        };
        let mut buf = Vec::new();
        gemm(
            self.activation(x, &mut buf),
            w.t(),
            &mut out,
            Some(&bias),
            self.residual,
        );
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
        let (gx, gw, gb) = {
            let (sx, lx) = x.storage_and_layout();
            let (sw, lw) = w.storage_and_layout();
            let (sg, lg) = grad.storage_and_layout();
            let (x, w, g) = (view(cpu(&sx)?, lx)?, view(cpu(&sw)?, lw)?, view(cpu(&sg)?, lg)?);
            let mut buf = Vec::new();
            let a = self.activation(x, &mut buf);
            // dW = gᵀ act(x), db = Σ_rows g, d act = g W.
            let mut gw = vec![0f32; w.rows * w.cols];
            gemm(g.t(), a, &mut gw, None, false);
            let mut gb = vec![0f32; w.rows];
            for i in 0..g.rows {
                for (s, j) in gb.iter_mut().zip(0..g.cols) {
                    *s += g.data[i * g.rs + j * g.cs];
                }
            }
            let mut gx = if self.residual {
                contiguous(g)
            } else {
                vec![0f32; x.rows * x.cols]
            };
            if self.silu {
                let mut ga = vec![0f32; x.rows * x.cols];
                gemm(g, w, &mut ga, None, false);
                silu_backward(&contiguous(x), &mut ga);
                gx.iter_mut().zip(&ga).for_each(|(d, a)| *d += a);
            } else {
                gemm(g, w, &mut gx, None, self.residual);
            }
            (gx, gw, gb)
        };
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(gx, x.shape(), dev)?),
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
